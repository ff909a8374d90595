"""The broker's log of what it drops and refuses: each kind at once, then at most one line per
interval with the count since the last, every figure also a field of the record.

The interval is shortened here (it is 10 s in service) so that several lines fit in a test.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq
from anyio.abc import ByteReceiveStream

import zmqrelay
from peers import eventually, raw_socket
from test_security import POLICY, Keys
from zmqrelay import AsyncClient, AsyncWorker, Broker, Forbidden, NoWorkers, RequestTimeout
from zmqrelay._aio import droplog
from zmqrelay._aio.broker import Engine
from zmqrelay._aio.service import Mode
from zmqrelay._core.throttle import Report, Throttle
from zmqrelay._logs import JsonFormatter
from zmqrelay.testing import LeakCheckingContext

pytestmark = pytest.mark.timeout(30)

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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


@pytest.mark.asyncio
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


# -- JSON lines ------------------------------------------------------------------------------


def _record(**fields: object) -> logging.LogRecord:
    record = logging.getLogger("zmqrelay.test").makeRecord(
        "zmqrelay.test", logging.WARNING, __file__, 1, "%d %s", (3, "things"), None
    )
    record.__dict__.update(fields)
    return record


def test_a_json_line_has_the_fixed_fields_then_the_records_own() -> None:
    stats = Report("malformed_requests", 3, None)
    line = json.loads(
        JsonFormatter().format(
            _record(kind="malformed_requests", worker=b"\x00k\x8b", report=stats)
        )
    )
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["time"].endswith("Z")
    when = datetime.fromisoformat(line["time"])
    assert when.utcoffset() == timedelta(0)
    assert abs(when.timestamp() - time.time()) < 60
    assert line["level"] == "WARNING"
    assert line["logger"] == "zmqrelay.test"
    assert line["message"] == "3 things"
    assert line["kind"] == "malformed_requests"
    assert line["worker"] == "\x00k\\x8b"  # bytes as text, undecodable ones escaped
    assert line["report"] == {"kind": "malformed_requests", "occurrences": 3, "since": None}


def test_a_json_line_carries_the_exception_and_stays_one_line() -> None:
    try:
        raise ValueError("bad\ninput")
    except ValueError:
        record = logging.getLogger("zmqrelay.test").makeRecord(
            "zmqrelay.test", logging.ERROR, __file__, 1, "handler\nraised", (), sys.exc_info()
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "handler\nraised"
    assert line["exception_type"] == "ValueError"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: bad\ninput")


# -- a real broker process ------------------------------------------------------------------


class _Stderr:
    """A process's standard error, kept, and read line by line as far as a test waits."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.text = b""

    async def line(self, marker: bytes) -> bytes:
        with anyio.fail_after(30):  # a process starts slowly on a loaded machine
            while True:
                found = [line for line in self.text.splitlines(True) if marker in line]
                if found and found[0].endswith(b"\n"):
                    return found[0]
                self.text += await self.stream.receive()

    async def rest(self) -> bytes:
        with anyio.fail_after(30):
            async for chunk in self.stream:
                self.text += chunk
        return self.text


def _json_lines(text: bytes) -> list[dict[str, Any]]:
    """Every line of ``text``, each of which must be a JSON object with the fixed fields."""
    lines = [json.loads(line) for line in text.decode().splitlines()]
    for line in lines:
        assert isinstance(line, dict)
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        datetime.fromisoformat(line["time"])
    return lines


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("options", [["--mode", "load-balancing"], ["--engine", "python"]])
async def test_a_broker_flooded_with_malformed_messages_logs_a_few_json_lines_and_serves(
    context: LeakCheckingContext, options: list[str]
) -> None:
    command = [sys.executable, "-m", "zmqrelay", "broker", "--log-format", "json", *options]
    command += ["--frontend", "tcp://127.0.0.1:0", "--backend", "tcp://127.0.0.1:0"]
    process = await anyio.open_process(command, stdout=None)
    try:
        assert process.stderr is not None
        stderr = _Stderr(process.stderr)
        serving = json.loads(await stderr.line(b"serving:"))
        mode: Mode = "load-balancing" if "load-balancing" in options else "relay"
        async with (
            AsyncWorker(serving["backend"], echo, context=context, mode=mode),
            AsyncClient(serving["frontend"], context=context, timeout=30) as client,
        ):
            assert await client.request(b"warm-up") == b"warm-up"
            flooder = raw_socket(context, zmq.DEALER, serving["frontend"])
            try:
                started = anyio.current_time()
                for burst in range(50):  # 50,000 frames in no client's dialect
                    for _ in range(1_000):
                        await flooder.send(b"\xff garbage")
                    with anyio.fail_after(10):  # the other client is served meanwhile
                        assert await client.request(b"%d" % burst) == b"%d" % burst
                # Then a request of its own: once it is answered, the flood was all read.
                await flooder.send_multipart([b"", b"done"])
                with anyio.fail_after(10):
                    assert await flooder.recv_multipart() == [b"", b"done"]
                took = anyio.current_time() - started
            finally:
                flooder.close()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 0
        lines = _json_lines(await stderr.rest())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()
    malformed = [line for line in lines if line.get("kind") == "malformed_requests"]
    (stopped,) = [line for line in lines if line["message"].startswith("broker stopped")]
    print(f"\n{mode}: 50,000 malformed in {took:.1f} s; {len(lines)} lines logged in all:")
    print("\n".join(json.dumps(line) for line in lines))
    assert stopped["statistics"]["malformed_requests"] == 50_000
    assert stopped["statistics"]["replies_forwarded"] == 52
    # The first at once, then one per interval at most, and the rest when the broker stops.
    assert 1 <= len(malformed) <= 2 + took / droplog.INTERVAL
    assert sum(line["count"] for line in malformed) == 50_000
    assert malformed[0]["seconds"] is None
    assert malformed[0]["level"] == "WARNING"
    assert len(lines) <= 5 + len(malformed)  # bound, serving, the malformed, stopping, stopped


@pytest.mark.asyncio
async def test_the_environment_asks_for_json_and_a_failed_start_is_a_json_line_too() -> None:
    command = [sys.executable, "-m", "zmqrelay", "--log-level", "DEBUG", "broker"]
    command += ["--frontend", "nonsense", "--backend", "tcp://127.0.0.1:0"]
    env = {**os.environ, "ZMQRELAY_LOG_FORMAT": "json"}
    with anyio.fail_after(30):
        result = await anyio.run_process(command, env=env, check=False)
    assert result.returncode == 1
    lines = _json_lines(result.stderr)
    assert lines[-1]["level"] == "ERROR"
    assert lines[-1]["error"] == "EndpointError"
    assert "cannot bind 'nonsense'" in lines[-1]["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("before", "after"), [("json", "text"), ("text", "json")])
async def test_the_format_after_the_command_wins(before: str, after: str) -> None:
    command = [sys.executable, "-m", "zmqrelay", "--log-format", before, "broker"]
    command += ["--log-format", after, "--frontend", "nonsense", "--backend", "inproc://b"]
    with anyio.fail_after(30):
        result = await anyio.run_process(command, check=False)
    assert result.returncode == 1
    if after == "json":
        assert _json_lines(result.stderr)[-1]["error"] == "EndpointError"
    else:
        assert result.stderr.startswith(b"Error: EndpointError: ")


@pytest.mark.asyncio
async def test_the_zap_handlers_debug_lines_are_throttled_too(
    context: LeakCheckingContext,
    caplog: pytest.LogCaptureFixture,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="zmqrelay.zap")
    for throttled in logging.getLogger("zmqrelay.zap").filters:  # forget earlier tests' lines
        monkeypatch.setattr(throttled, "_throttle", Throttle(10.0))
    async with keys.broker(context, "relay", "python") as broker:
        front = broker.endpoints.frontend
        for attempt in range(1, 6):  # five handshakes, each refused
            async with keys.client(context, front, "mallory", "others", timeout=5) as mallory:
                with anyio.move_on_after(0.05):
                    await mallory.request(b"let me in")
                await eventually(partial(_refused, broker, attempt))
    denied = [record for record in caplog.records if "DENIED" in record.getMessage()]
    assert len(denied) == 1


def _refused(broker: Broker, at_least: int) -> bool:
    security = broker.statistics().security
    assert security is not None
    return security.clients_refused >= at_least


@pytest.mark.asyncio
async def test_refusals_are_logged_by_reason_a_line_per_interval(
    context: LeakCheckingContext, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(
        frontend="inproc://f", backend="inproc://b", context=context, mode="load-balancing",
        drain_timeout=0, queue_timeout=0,
    )  # fmt: skip
    async with broker, AsyncClient("inproc://f", context=context, timeout=5) as client:
        for _ in range(2_000):  # no worker offers the service
            with pytest.raises(NoWorkers):
                await client.request("fax", b"x")
    logged = lines(caplog, "no_workers_refusals")
    assert reported(caplog, "no_workers_refusals") == 2_000  # the last said as it stopped
    assert 1 <= len(logged) <= 2 + (logged[-1].created - logged[0].created) / INTERVAL
    assert "requests refused: no live worker offered their service" in logged[0].message
    assert logged[0].levelno == logging.WARNING


@pytest.mark.asyncio
async def test_a_handler_that_always_raises_logs_a_line_per_interval_per_exception_type(
    context: LeakCheckingContext,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zmqrelay._aio import handlers

    monkeypatch.setattr(handlers, "_MALFORMED_LOG_INTERVAL", INTERVAL)

    async def fails(request: bytes) -> bytes:
        raise (ValueError if request == b"v" else KeyError)(request)

    async with Broker(frontend="inproc://f", backend="inproc://b", context=context):
        worker = AsyncWorker("inproc://b", fails, context=context, concurrency=8)
        async with worker, AsyncClient("inproc://f", context=context, timeout=5) as client:
            # Replaced at construction: the shortened interval applies.
            worker._runner._error_log = Throttle(INTERVAL)
            for n in range(1_000):
                with pytest.raises(zmqrelay.RemoteError):
                    await client.request(b"v" if n % 2 else b"k")
    logged = lines(caplog, "handler_errors")
    by_type: dict[str, int] = {}
    for record in logged:
        by_type[record.error_type] = by_type.get(record.error_type, 0) + record.count  # type: ignore[attr-defined]
    assert by_type == {"ValueError": 500, "KeyError": 500}
    first = logged[0]
    assert first.exc_info is not None  # the first comes with its traceback
    assert "then at most a line per" in first.getMessage()
    spread = logged[-1].created - first.created
    assert len(logged) <= 2 * (2 + spread / INTERVAL)
