"""The broker's log of what it drops and refuses: each kind at once, then at most one line per
interval with the count since the last, every figure also a field of the record.

The interval is shortened here (it is 10 s in service) so that several lines fit in a test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import zmq

from peers import eventually, raw_socket
from test_security import POLICY, Keys
from zmqrelay import AsyncClient, AsyncWorker, Broker, Forbidden, RequestTimeout
from zmqrelay._aio import droplog
from zmqrelay._aio.broker import Engine, Mode
from zmqrelay.testing import LeakCheckingContext

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

INTERVAL = 0.5


@pytest.fixture(autouse=True)
def short_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    monkeypatch.setattr(droplog, "INTERVAL", INTERVAL)
    monkeypatch.setattr(droplog, "POLL_INTERVAL", 0.02)
    with caplog.at_level(logging.INFO, logger="zmqrelay"):
        yield


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def lines(caplog: pytest.LogCaptureFixture, kind: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "kind", None) == kind]


def reported(caplog: pytest.LogCaptureFixture, kind: str) -> int:
    return sum(record.count for record in lines(caplog, kind))  # type: ignore[attr-defined]


async def echo(request: bytes) -> bytes:
    return request


@pytest.mark.parametrize(("mode", "engine"), [("load-balancing", "python"), ("relay", "python")])
async def test_a_flood_of_malformed_requests_logs_a_line_per_interval_with_the_counts(
    context: LeakCheckingContext, caplog: pytest.LogCaptureFixture, mode: Mode, engine: Engine
) -> None:
    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        mode=mode,
        engine=engine,
        drain_timeout=0,
    )
    async with (
        broker,
        AsyncWorker("inproc://b", echo, context=context, mode=mode),
        AsyncClient("inproc://f", context=context, timeout=5) as client,
    ):
        flooder = raw_socket(context, zmq.DEALER, "inproc://f")
        try:
            started = anyio.current_time()
            for burst in range(20):  # 20,000 messages without an envelope, the client served
                for _ in range(1_000):
                    await flooder.send(b"garbage")
                assert await client.request(b"%d" % burst) == b"%d" % burst
                if burst == 0:  # the first line comes at once
                    await eventually(lambda: bool(lines(caplog, "malformed_requests")))
            await eventually(lambda: reported(caplog, "malformed_requests") == 20_000)
            took = anyio.current_time() - started
        finally:
            flooder.close()
    logged = lines(caplog, "malformed_requests")
    print(f"\n{mode}: 20,000 malformed requests in {took:.2f} s, {len(logged)} lines")
    assert len(logged) <= 2 + took / INTERVAL
    first, *rest = logged
    assert first.levelno == logging.WARNING
    assert first.name == "zmqrelay.broker"
    assert "malformed requests dropped (the first; then at most a line every" in first.message
    assert (first.seconds, first.total) == (None, first.count)  # type: ignore[attr-defined]
    total = first.count  # type: ignore[attr-defined]
    for before, line in zip(logged, rest, strict=False):
        assert line.created - before.created >= INTERVAL - 0.05
        assert line.seconds >= INTERVAL  # type: ignore[attr-defined]
        total += line.count  # type: ignore[attr-defined]
        assert line.total == total  # type: ignore[attr-defined]
        assert f"{line.count} malformed requests dropped in " in line.message  # type: ignore[attr-defined]
    stats = broker.statistics()
    assert stats.malformed_requests == 20_000


async def test_a_worker_breaking_its_protocol_is_logged_with_how(
    context: LeakCheckingContext, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        mode="load-balancing",
        drain_timeout=0,
    )
    async with broker:
        rogue = raw_socket(context, zmq.DEALER, "inproc://b", routing_id=b"rogue")
        try:
            for _ in range(100):
                await rogue.send(b"no delimiter")
            await eventually(lambda: reported(caplog, "protocol_violations") == 100)
        finally:
            rogue.close()
    first = lines(caplog, "protocol_violations")[0]
    assert first.worker == b"rogue".hex()  # type: ignore[attr-defined]
    assert first.reason == "a worker's message starts with its id and an empty frame"  # type: ignore[attr-defined]
    assert f"the last: worker {b'rogue'.hex()}: a worker's message starts" in first.message


async def test_replies_a_relay_cannot_route_are_logged_by_kind(
    context: LeakCheckingContext, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context, engine="python")
    async with broker:
        worker = raw_socket(context, zmq.DEALER, "inproc://b")
        try:
            for _ in range(50):
                await worker.send_multipart([b"a client long gone", b"", b"reply"])
                await worker.send(b"no envelope")
            await eventually(
                lambda: (
                    (reported(caplog, "unroutable_replies"), reported(caplog, "malformed_replies"))
                    == (50, 50)
                )
            )
        finally:
            worker.close()
    assert (
        "replies dropped: their client is gone" in lines(caplog, "unroutable_replies")[0].message
    )


async def test_refused_keys_and_forbidden_calls_are_logged_with_who(
    context: LeakCheckingContext, caplog: pytest.LogCaptureFixture, keys: Keys
) -> None:
    (keys.root / "policy.toml").write_text(POLICY)
    broker = keys.broker(
        context,
        "load-balancing",
        "python",
        authorization=keys.root / "policy.toml",
        heartbeat_interval=0.1,
        handshake_timeout=0.5,
    )
    async with broker:
        front = broker.endpoints.frontend
        async with (
            keys.worker(context, broker.endpoints.backend, "load-balancing", service="echo"),
            keys.client(context, front) as alice,
            keys.client(context, front, "mallory", "others", timeout=0.5) as mallory,
        ):
            with pytest.raises(Forbidden):
                await alice.request("admin", b"rm -rf")
            with pytest.raises(RequestTimeout):
                await mallory.request("echo", b"let me in")
            plain = raw_socket(context, zmq.DEALER, front)  # no CURVE: its handshake fails
            try:
                await eventually(
                    lambda: all(
                        lines(caplog, kind)
                        for kind in ("forbidden_requests", "clients_refused", "handshakes_failed")
                    ),
                    timeout=10,
                )
            finally:
                plain.close()
    (forbidden,) = lines(caplog, "forbidden_requests")
    assert (forbidden.key, forbidden.service) == ("alice", "admin")  # type: ignore[attr-defined]
    assert "the last: key alice calling admin" in forbidden.message
    refused = lines(caplog, "clients_refused")[0]
    mallory_key = keys.pair("others", "mallory").public.decode()
    assert refused.key == mallory_key  # type: ignore[attr-defined]
    assert refused.name == "zmqrelay.security"
    assert lines(caplog, "handshakes_failed")[0].name == "zmqrelay.security"
