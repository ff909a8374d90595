"""Prometheus metrics of running brokers, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import zmq
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from peers import lb_broker, raw_socket
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    Broker,
    DeadlineExceeded,
    EndpointError,
    NoWorkers,
    RemoteError,
    RequestTimeout,
    WorkerDied,
)
from zmqrelay.testing import LeakCheckingContext, relay_harness

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def http(url: str, request: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP exchange: the status, the headers and the body of the answer."""
    host_port = url.removeprefix("http://").split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    sent = request or f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode()
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            answer = b""
            try:
                await stream.send(sent)
                while True:
                    answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    if not answer:
        return 0, {}, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.lower(): text.strip()
        for name, _, text in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), headers, body


async def scrape(broker: Broker) -> Samples:
    assert broker.metrics_url is not None
    status, headers, body = await http(broker.metrics_url)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    return parse(body.decode())


async def shout(request: bytes) -> bytes:
    if request == b"boom":
        raise ValueError("boom")
    return request.upper()


@pytest.mark.asyncio
async def test_a_load_balancing_broker_counts_every_outcome_per_service(
    context: LeakCheckingContext,
) -> None:
    async with (
        lb_broker(context, metrics="127.0.0.1:0", queue_timeout=0.2) as broker,
        AsyncWorker(
            broker.endpoints.backend, shout, context=context, mode="load-balancing",
            service="shout", heartbeat_interval=0.1,
        ),
        AsyncClient(broker.endpoints.frontend, context=context, timeout=5) as client,
    ):  # fmt: skip
        for _ in range(5):
            assert await client.request("shout", b"hi") == b"HI"
        with pytest.raises(RemoteError):
            await client.request("shout", b"boom")
        with pytest.raises(NoWorkers):
            await client.request("resize", b"x")
        samples = await scrape(broker)

    requests = "zmqrelay_requests_total"
    assert value(samples, requests, service="shout", outcome="reply") == 5
    assert value(samples, requests, service="shout", outcome="error") == 1
    assert value(samples, requests, service="resize", outcome="no_workers") == 1
    assert value(samples, requests, service="resize", outcome="reply") == 0
    duration = "zmqrelay_request_duration_seconds"
    assert value(samples, f"{duration}_count", service="shout") == 6
    assert value(samples, f"{duration}_bucket", service="shout", le="+Inf") == 6
    assert 0 < value(samples, f"{duration}_sum", service="shout") < 6 * 5
    assert value(samples, "zmqrelay_queue_wait_seconds_count", service="shout") == 6
    assert value(samples, "zmqrelay_workers", service="shout") == 1
    assert value(samples, "zmqrelay_worker_credits_free", service="shout") >= 1
    assert value(samples, "zmqrelay_requests_in_flight", service="shout") == 0
    assert value(samples, "zmqrelay_requests_forwarded_total") == 6
    assert value(samples, "zmqrelay_messages_dropped_total", reason="malformed") == 0
    assert value(samples, "zmqrelay_broker_info", mode="load-balancing", engine="python",
                 version="0.1.0") == 1  # fmt: skip
    assert ("process_cpu_seconds_total", frozenset()) in samples  # the process's own
    assert broker.metrics_url is None  # closed: served no more


@pytest.mark.asyncio
async def test_gauges_show_the_queue_and_the_requests_in_flight(
    context: LeakCheckingContext,
) -> None:
    release = anyio.Event()

    async def stuck(request: bytes) -> bytes:
        await release.wait()
        return request

    async with (
        lb_broker(context, metrics="127.0.0.1:0") as broker,
        AsyncWorker(
            broker.endpoints.backend, stuck, context=context, mode="load-balancing",
            concurrency=2, heartbeat_interval=0.1,
        ),
        AsyncClient(broker.endpoints.frontend, context=context, timeout=10) as client,
        anyio.create_task_group() as requests,
    ):  # fmt: skip
        for n in range(5):
            requests.start_soon(client.request, str(n).encode())
        with anyio.fail_after(10):
            while True:
                samples = await scrape(broker)
                if value(samples, "zmqrelay_queued_requests", service="(default)") == 3:
                    break
                await anyio.sleep(0.01)
        assert value(samples, "zmqrelay_requests_in_flight", service="(default)") == 2
        assert value(samples, "zmqrelay_worker_credits_free", service="(default)") == 0
        release.set()


@pytest.mark.asyncio
async def test_a_deadline_and_a_dead_worker_are_counted(context: LeakCheckingContext) -> None:
    held = anyio.Event()

    async def never(request: bytes) -> bytes:
        if request == b"orphan":
            held.set()
        await anyio.sleep_forever()
        raise AssertionError

    async with (
        lb_broker(
            context, metrics="127.0.0.1:0", heartbeat_interval=0.05, request_timeout=0.2
        ) as broker,
        # No timeout of its own: the broker's request_timeout is its deadline.
        AsyncClient(broker.endpoints.frontend, context=context, timeout=None) as client,
    ):
        worker = AsyncWorker(
            broker.endpoints.backend, never, context=context, mode="load-balancing",
            heartbeat_interval=0.05, concurrency=2,
        )  # fmt: skip
        async with worker:
            with pytest.raises(DeadlineExceeded):
                await client.request(b"late")
        doomed = AsyncWorker(
            broker.endpoints.backend, never, context=context, mode="load-balancing",
            heartbeat_interval=0.05,
        )  # fmt: skip
        async with doomed, anyio.create_task_group() as tg:
            tg.start_soon(_expect_worker_died, client)
            with anyio.fail_after(10):
                await held.wait()
            await doomed.abort()  # it dies holding the request: silence, then dead
        samples = await scrape(broker)
    requests = "zmqrelay_requests_total"
    assert value(samples, requests, service="(default)", outcome="deadline") == 1
    assert value(samples, requests, service="(default)", outcome="worker_died") == 1
    assert value(samples, "zmqrelay_dead_workers_total") == 1


async def _expect_worker_died(client: AsyncClient) -> None:
    with pytest.raises(WorkerDied):
        await client.request(b"orphan", timeout=10)


@pytest.mark.asyncio
async def test_ever_new_service_names_fold_into_one_label(context: LeakCheckingContext) -> None:
    async with (
        lb_broker(context, metrics="127.0.0.1:0", queue_timeout=0) as broker,
        AsyncClient(broker.endpoints.frontend, context=context, timeout=5) as client,
    ):
        for n in range(300):
            with pytest.raises(NoWorkers):
                await client.request(f"svc-{n}", b"x")
        samples = await scrape(broker)
    services = {
        dict(labels)["service"] for name, labels in samples if name == "zmqrelay_requests_total"
    }
    assert len(services) == 20 + 1  # the first 20 names, and (other)
    assert value(samples, "zmqrelay_requests_total", service="(other)",
                 outcome="no_workers") == 280  # fmt: skip


@pytest.mark.parametrize("engine", ["libzmq", "python"])
@pytest.mark.asyncio
async def test_a_relay_broker_reports_what_its_engine_counts(
    context: LeakCheckingContext, engine: str
) -> None:
    async with relay_harness(
        context=context, engine=engine, metrics="127.0.0.1:0", drain_timeout=0
    ) as harness:
        await harness.start_worker(shout)
        client = await harness.connect_client()
        for _ in range(3):
            await client.request(b"x")
        samples = await scrape(harness.broker)
    info = value(samples, "zmqrelay_broker_info", mode="relay", engine=engine, version="0.1.0")
    assert info == 1
    if engine == "libzmq":
        # Client id, tag, delimiter and body pass to the worker, and back.
        assert value(samples, "zmqrelay_relay_frames_total", direction="request") == 3 * 4
        assert value(samples, "zmqrelay_relay_frames_total", direction="reply") == 3 * 4
        assert value(samples, "zmqrelay_relay_bytes_total", direction="reply") > 0
    else:
        assert value(samples, "zmqrelay_requests_forwarded_total") == 3
        assert value(samples, "zmqrelay_replies_forwarded_total") == 3
        assert value(samples, "zmqrelay_messages_dropped_total", reason="malformed") == 0
    assert not any(name == "zmqrelay_requests_total" for name, _ in samples)


@pytest.mark.asyncio
async def test_the_broker_registers_into_an_applications_registry(
    context: LeakCheckingContext,
) -> None:
    registry = CollectorRegistry()
    async with (
        lb_broker(context, metrics=registry) as broker,
        AsyncWorker(
            broker.endpoints.backend, shout, context=context, mode="load-balancing",
            heartbeat_interval=0.1,
        ),
        AsyncClient(broker.endpoints.frontend, context=context) as client,
    ):  # fmt: skip
        assert broker.metrics_url is None  # the application serves its registry
        await client.request(b"hi")
        samples = parse(generate_latest(registry).decode())
        assert value(samples, "zmqrelay_requests_total", service="(default)",
                     outcome="reply") == 1  # fmt: skip
        with pytest.raises(ValueError, match="Duplicated"):
            async with lb_broker(
                context, frontend="inproc://f2", backend="inproc://b2", metrics=registry
            ):
                pass
    assert not parse(generate_latest(registry).decode())  # unregistered on the way out


@pytest.mark.asyncio
async def test_the_endpoint_answers_only_what_it_serves(context: LeakCheckingContext) -> None:
    async with lb_broker(context, metrics="127.0.0.1:0") as broker:
        url = broker.metrics_url
        assert url is not None
        assert (await http(url.replace("/metrics", "/nope")))[0] == 404
        host = url.removeprefix("http://").split("/")[0]
        status, headers, body = await http(
            url, b"HEAD /metrics HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
        )
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0
        assert (await http(url, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http(url, b"garbage\r\n\r\n"))[0] == 400
        status, headers, body = await http(
            url, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n"
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
        # A scraper that says nothing, or too much, costs a connection and nothing more.
        status, _, _ = await http(url, b"GET /" + b"x" * 20_000)
        assert status == 0  # the connection closed without an answer
        await scrape(broker)  # still serving


@pytest.mark.asyncio
async def test_a_taken_metrics_port_fails_the_start(context: LeakCheckingContext) -> None:
    async with lb_broker(context, metrics="127.0.0.1:0") as first:
        assert first.metrics_url is not None
        taken = first.metrics_url.removeprefix("http://").removesuffix("/metrics")
        with pytest.raises(EndpointError, match="cannot serve metrics"):
            async with lb_broker(
                context, frontend="inproc://f2", backend="inproc://b2", metrics=taken
            ):
                pass


@pytest.mark.asyncio
async def test_curve_handshakes_are_counted(context: LeakCheckingContext) -> None:
    async with relay_harness(context=context, curve=True, metrics="127.0.0.1:0") as harness:
        assert harness.curve is not None
        stranger = await harness.connect_client(
            curve_keys=harness.curve.stranger("mallory"), timeout=0.3
        )
        with pytest.raises(RequestTimeout):
            await stranger.request(b"let me in")
        samples = await scrape(harness.broker)
    assert value(samples, "zmqrelay_handshakes_refused_total", side="client") >= 1
    assert value(samples, "zmqrelay_handshakes_failed_total") == 0


def test_without_prometheus_client_metrics_say_which_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["prometheus_client"] = None  # as if it were not installed
            """
        )
    )
    program = textwrap.dedent(
        """
        from zmqrelay import Broker
        Broker(frontend="inproc://f", backend="inproc://b")  # no metrics: fine
        try:
            Broker(frontend="inproc://f", backend="inproc://b", metrics="127.0.0.1:0")
        except ImportError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, timeout=60, check=True
    )
    assert b"pip install 'zmqrelay[metrics]'" in result.stdout


@pytest.mark.asyncio
async def test_a_plain_peer_flood_of_garbage_is_counted_as_malformed(
    context: LeakCheckingContext,
) -> None:
    async with lb_broker(context, metrics="127.0.0.1:0") as broker:
        garbage = raw_socket(context, zmq.DEALER, broker.endpoints.frontend)
        try:
            for _ in range(100):
                await garbage.send_multipart([b"no delimiter"])
            with anyio.fail_after(10):
                while True:
                    samples = await scrape(broker)
                    dropped = value(samples, "zmqrelay_messages_dropped_total", reason="malformed")
                    if dropped == 100:
                        break
                    await anyio.sleep(0.01)
        finally:
            garbage.close()


@pytest.mark.asyncio
async def test_a_registry_served_from_another_thread_reads_the_broker_between_its_steps(
    context: LeakCheckingContext,
) -> None:
    """prometheus_client's own server scrapes in a thread of its own, under load."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        async with (
            lb_broker(context, metrics=registry) as broker,
            AsyncWorker(
                broker.endpoints.backend, shout, context=context, mode="load-balancing",
                concurrency=8, heartbeat_interval=0.1,
            ),
            AsyncClient(broker.endpoints.frontend, context=context) as client,
        ):  # fmt: skip
            done = anyio.Event()

            async def load() -> None:
                async with anyio.create_task_group() as tg:
                    for n in range(2000):
                        tg.start_soon(client.request, f"{n}".encode())
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                scrapes = 0
                while not done.is_set() or scrapes < 3:
                    text = await anyio.to_thread.run_sync(_fetch, url)
                    scrapes += 1
                    assert "zmqrelay_requests_total" in text
            samples = parse(await anyio.to_thread.run_sync(_fetch, url))
        replies = value(samples, "zmqrelay_requests_total", service="(default)", outcome="reply")
        assert replies == 2000
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


@pytest.mark.asyncio
async def test_top_reads_a_real_broker(context: LeakCheckingContext) -> None:
    """zmqrelay top's figures from two scrapes of a broker serving requests in between."""
    from zmqrelay._core.top import TopView
    from zmqrelay._top import render_text
    from zmqrelay._top import scrape as top_scrape

    async with (
        lb_broker(context, metrics="127.0.0.1:0", queue_timeout=0) as broker,
        AsyncWorker(
            broker.endpoints.backend, shout, context=context, mode="load-balancing",
            service="shout", concurrency=4, heartbeat_interval=0.1,
        ),
        AsyncClient(broker.endpoints.frontend, context=context) as client,
    ):  # fmt: skip
        url = broker.metrics_url
        assert url is not None
        before = await anyio.to_thread.run_sync(top_scrape, url)
        for _ in range(50):
            await client.request("shout", b"hi")
        with pytest.raises(RemoteError):
            await client.request("shout", b"boom")
        with pytest.raises(NoWorkers):
            await client.request("fax", b"x")
        after = await anyio.to_thread.run_sync(top_scrape, url)
    view = TopView.from_scrapes(before, after)
    assert view.services is not None
    rows = {row.service: row for row in view.services}
    seconds = after.at - before.at
    shout_row, fax = rows["shout"], rows["fax"]
    assert shout_row.outcomes_per_second is not None
    assert shout_row.outcomes_per_second["reply"] * seconds == pytest.approx(50)
    assert shout_row.outcomes_per_second["error"] * seconds == pytest.approx(1)
    assert fax.refused_per_second is not None
    assert fax.refused_per_second * seconds == pytest.approx(1)
    assert shout_row.workers == 1
    assert shout_row.latency.p50 is not None
    screen = render_text(before, after, url=url, width=130)
    assert "load-balancing broker" in screen
    assert any(line.startswith("shout ") for line in screen.splitlines())


@pytest.mark.asyncio
async def test_failed_scrapes_are_answered_500_and_logged_once_in_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from zmqrelay._aio.metrics import serve
    from zmqrelay._core.metrics import Address

    class Broken:
        def collect(self) -> list[object]:
            raise RuntimeError("cannot read")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Broken())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, Address("127.0.0.1", 0), registry)
        url = f"http://{bound}/metrics"
        for _ in range(20):
            assert (await http(url))[0] == 500
        tg.cancel_scope.cancel()
    failures = [
        record for record in caplog.records if getattr(record, "kind", "") == "scrape_errors"
    ]
    assert len(failures) == 1  # the first; the next 19 wait for the interval
    assert failures[0].exc_info is not None
