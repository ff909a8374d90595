"""``zmqrelay top`` against a real metrics endpoint: fetching, parsing, drawing, the command.

Until the broker serves its metrics, the endpoint is :class:`Exporter`: prometheus_client's own
metrics, named as the broker names them, in a registry served over HTTP on 127.0.0.1 by a WSGI
server in a thread. A test decides what each scrape sees by queueing steps that run as the
scrape arrives. The command runs as a process of its own, stopped by its PID.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import anyio
import pytest
from anyio.abc import Process
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)

from zmqrelay._core.top import SCHEMA, Scrape, TopView
from zmqrelay._top import ScrapeError, parse, render_text, scrape

ROOT = Path(__file__).resolve().parent.parent
ZMQRELAY = [sys.executable, "-m", "zmqrelay"]
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
           2.5, 5, 10, 30)  # fmt: skip
"""The broker's request duration buckets (the same for the queue wait)."""

pytestmark = pytest.mark.timeout(60)


class Exporter:
    """A broker's metrics, made by hand with prometheus_client, and the WSGI app serving them.

    ``steps`` run one per scrape of ``/metrics``, before it is answered; other paths are 404.
    """

    def __init__(self, mode: str = "load-balancing", engine: str = "python") -> None:
        self.registry = registry = CollectorRegistry()
        info = Gauge(
            "zmqrelay_broker_info", "The broker", ["mode", "engine", "version"], registry=registry
        )
        info.labels(mode, engine, "0.1.0").set(1)
        self.requests_forwarded = Counter(
            "zmqrelay_requests_forwarded", "Requests forwarded", registry=registry
        )
        self.replies_forwarded = Counter(
            "zmqrelay_replies_forwarded", "Replies forwarded", registry=registry
        )
        if mode == "relay":
            self.relay_frames = Counter(
                "zmqrelay_relay_frames", "Frames relayed", ["direction"], registry=registry
            )
            self.relay_bytes = Counter(
                "zmqrelay_relay_bytes", "Bytes relayed", ["direction"], registry=registry
            )
        else:
            self.requests = Counter(
                "zmqrelay_requests", "Requests ended", ["service", "outcome"], registry=registry
            )
            self.duration = Histogram(
                "zmqrelay_request_duration_seconds",
                "Broker in to reply out",
                ["service"],
                buckets=BUCKETS,
                registry=registry,
            )
            self.queue_wait = Histogram(
                "zmqrelay_queue_wait_seconds",
                "Arrival to dispatch",
                ["service"],
                buckets=BUCKETS,
                registry=registry,
            )
            self.workers, self.credits, self.queued, self.in_flight = (
                Gauge(name, name, ["service"], registry=registry)
                for name in (
                    "zmqrelay_workers",
                    "zmqrelay_worker_credits_free",
                    "zmqrelay_queued_requests",
                    "zmqrelay_requests_in_flight",
                )
            )
            self.dropped = Counter(
                "zmqrelay_messages_dropped", "Messages dropped", ["reason"], registry=registry
            )
        self.steps: deque[Callable[[], None]] = deque()
        self.scrapes = 0
        self._lock = threading.Lock()
        self._metrics = make_wsgi_app(registry)

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The endpoint: ``/metrics`` after the next step, 404 elsewhere."""
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not here\n"]
        with self._lock:
            if self.steps:
                self.steps.popleft()()
            self.scrapes += 1
        answer: Iterable[bytes] = self._metrics(environ, start_response)
        return answer

    def serve(self, service: str, outcome: str, seconds: Iterable[float]) -> None:
        """Requests of ``service`` that ended in ``outcome``, each taking these seconds."""
        for duration in seconds:
            self.requests.labels(service, outcome).inc()
            if outcome in ("reply", "error"):
                self.duration.labels(service).observe(duration)
                self.queue_wait.labels(service).observe(duration / 10)
            self.requests_forwarded.inc()
            self.replies_forwarded.inc()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_endpoint(
    app: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]], port: int = 0
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port by default) for the block: its metrics URL."""
    server: WSGIServer = make_server("127.0.0.1", port, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A loopback port nothing listens on (bound a moment ago, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def scrape_now(exporter: Exporter, at: float) -> Scrape:
    """The exporter's metrics, parsed as a scrape taken ``at`` seconds, without HTTP."""
    return parse(generate_latest(exporter.registry).decode(), at=at)


# -- parsing and drawing ----------------------------------------------------------------------


def test_parse_reads_what_prometheus_client_writes() -> None:
    exporter = Exporter()
    exporter.serve("resize", "reply", [0.003, 0.004])
    found = scrape_now(exporter, at=5.0)
    assert found.at == 5.0
    labels = (("outcome", "reply"), ("service", "resize"))
    assert found.series("zmqrelay_requests_total") == {labels: 2.0}
    assert found.series("zmqrelay_request_duration_seconds_bucket")[
        (("le", "0.005"), ("service", "resize"))
    ] == 2.0  # fmt: skip
    assert labels in found.series("zmqrelay_requests_created")
    assert found.declares("zmqrelay_messages_dropped_total")  # declared, no series yet
    assert not found.declares("zmqrelay_relay_frames_total")


@pytest.mark.parametrize("text", ["<html><body>Hello</body></html>", "a b c", 'x{y="1"} z'])
def test_parse_refuses_what_is_not_prometheus_text(text: str) -> None:
    with pytest.raises(ScrapeError, match="not Prometheus's text format"):
        parse(text, at=0)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_by_name(text: str) -> None:
    """Nothing but ScrapeError escapes, whatever an endpoint serves."""
    try:
        found = parse(text, at=3.0)
    except ScrapeError:
        return
    assert found.at == 3.0


def test_render_text_draws_two_scrapes_of_a_live_endpoint() -> None:
    """What an end-to-end test against a broker does: scrape, traffic, scrape, look."""
    exporter = Exporter()
    exporter.workers.labels("resize").set(3)
    with http_endpoint(exporter.app) as url:
        before = scrape(url)
        exporter.serve("resize", "reply", [0.002] * 90 + [0.2] * 10)
        exporter.serve("resize", "busy", [0] * 4)
        after = scrape(url)
    view = TopView.from_scrapes(before, after)
    assert view.total is not None
    assert view.total.outcomes_per_second is not None
    assert view.seconds is not None
    assert view.total.outcomes_per_second["reply"] * view.seconds == pytest.approx(100)
    assert view.total.refused_per_second is not None
    assert view.total.refused_per_second * view.seconds == pytest.approx(4)
    screen = render_text(before, after, url=url, width=120)
    assert screen.startswith(f"zmqrelay top  {url}\nload-balancing broker, python engine")
    (resize,) = (line.split() for line in screen.splitlines() if line.startswith("resize "))
    # service, req/s, error/s, refused/s, p50, p90, p99, wait p99, queued, in flight, workers
    assert resize[2] == "0"
    assert resize[-4:] == ["0", "0", "3", "0"]
    assert "dropped/s: none" in screen


def test_a_relay_broker_shows_its_directions() -> None:
    exporter = Exporter("relay", "libzmq")
    before = scrape_now(exporter, at=0.0)
    for direction, frames in (("request", 3000), ("reply", 2000)):
        exporter.relay_frames.labels(direction).inc(frames)
        exporter.relay_bytes.labels(direction).inc(frames * 16)
    screen = render_text(before, scrape_now(exporter, at=2.0), url="http://h:1/metrics")
    assert "relay broker, libzmq engine" in screen
    assert "service" not in screen
    lines = {line.split()[0]: line.split()[1:] for line in screen.splitlines() if line}
    assert lines["forwarded"] == ["messages/s", "frames/s", "bytes/s"]
    assert lines["request"] == ["0", "1,500", "24.0k"]
    assert lines["reply"] == ["0", "1,000", "16.0k"]


# -- the command ------------------------------------------------------------------------------


def top(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``zmqrelay top ARGS`` to its end."""
    return subprocess.run(
        [*ZMQRELAY, "top", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_once_json_prints_the_rates_between_two_scrapes() -> None:
    exporter = Exporter()
    exporter.workers.labels("resize").set(2)

    def traffic() -> None:
        exporter.serve("resize", "reply", [0.004] * 30)
        exporter.serve("thumbnail", "reply", [0.02] * 60)
        exporter.serve("thumbnail", "no_workers", [0] * 6)
        exporter.dropped.labels("late").inc(3)

    exporter.steps += [lambda: None, traffic]  # the first scrape sees the broker as it is
    with http_endpoint(exporter.app) as url:
        result = top("--once", "--json", "--interval", "0.2", url.removesuffix("/metrics"))
    assert result.returncode == 0, result.stderr
    assert exporter.scrapes == 2
    document = json.loads(result.stdout)
    assert (document["schema"], document["url"]) == (SCHEMA, url)
    seconds = document["seconds"]
    assert 0.2 <= seconds < 5
    thumbnail, resize = document["services"]
    assert (thumbnail["service"], resize["service"]) == ("thumbnail", "resize")
    assert thumbnail["requests_per_second"] * seconds == pytest.approx(66)
    assert thumbnail["outcomes_per_second"]["no_workers"] * seconds == pytest.approx(6)
    assert resize["outcomes_per_second"]["reply"] * seconds == pytest.approx(30)
    assert 0.0025 <= resize["latency_seconds"]["p50"] <= 0.005
    assert 0.01 <= thumbnail["latency_seconds"]["p99"] <= 0.025
    assert resize["workers"] == 2
    assert document["total"]["requests_per_second"] * seconds == pytest.approx(96)
    assert document["forwarded"]["request"]["messages_per_second"] * seconds == pytest.approx(96)
    assert document["dropped_per_second"]["late"] * seconds == pytest.approx(3)


def test_once_prints_the_table_and_the_url_may_come_from_the_environment() -> None:
    exporter = Exporter()
    exporter.steps += [lambda: None, lambda: exporter.serve("resize", "error", [0.001] * 10)]
    with http_endpoint(exporter.app) as url:
        result = top("--once", "--interval", "0.1", env={"ZMQRELAY_METRICS_URL": url})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"zmqrelay top  {url}"
    header = next(line for line in lines if line.startswith("service"))
    assert header.split() == [
        "service", "req/s", "error/s", "refused/s", "p50", "p90", "p99", "wait", "p99",
        "queued", "in", "flight", "workers", "credits",
    ]  # fmt: skip
    rows = [line.split()[0] for line in lines[lines.index(header) + 1 :] if line]
    assert rows[:2] == ["resize", "(all)"]


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that takes connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _not_prometheus(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html")])
    return [b"<html><body>Hello</body></html>\n"]


def _other_metrics(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"# TYPE node_load1 gauge\nnode_load1 0.5\n"]


@pytest.mark.parametrize(
    "case", ["refused", "silent", "404", "not prometheus", "not zmqrelay", "bad url"]
)
def test_an_endpoint_that_does_not_answer_is_a_one_line_error(case: str) -> None:
    with contextmanager_for(case) as (url, expected):
        result = top("--once", "--interval", "0.05", "--timeout", "0.5", url)
    assert result.returncode == (2 if case == "bad url" else 1), result.stderr
    assert result.stdout == ""
    if case != "bad url":
        assert result.stderr.count("\n") == 1, result.stderr
    assert re.search(expected, result.stderr), result.stderr


@contextmanager
def contextmanager_for(case: str) -> Iterator[tuple[str, str]]:
    """A URL that fails as ``case`` says, and what the error must say."""
    if case == "refused":
        port = closed_port()
        yield (
            f"127.0.0.1:{port}",
            rf"^Error: cannot read http://127.0.0.1:{port}/metrics: .*refused",
        )
    elif case == "silent":
        with silent_listener() as port:
            yield f"127.0.0.1:{port}", r"^Error: cannot read .*: no answer within 0.5 s$"
    elif case == "404":
        with http_endpoint(Exporter().app) as url:
            yield f"{url}/nothing", r"^Error: http://.*/metrics/nothing answered HTTP 404"
    elif case == "not prometheus":
        with http_endpoint(_not_prometheus) as url:
            yield url, r"^Error: not Prometheus's text format"
    elif case == "not zmqrelay":
        with http_endpoint(_other_metrics) as url:
            yield url, r"^Error: http://.* serves no zmqrelay metrics"
    else:
        yield "ftp://127.0.0.1:1/metrics", r"Invalid value for URL: .* is not HOST:PORT"


def test_without_the_extra_it_says_which_to_install() -> None:
    hide = "import sys; sys.modules['rich'] = None; from zmqrelay.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", hide, "top", "--once", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Error: zmqrelay top needs the 'top' extra (rich is not installed): "
        "pip install 'zmqrelay[top]'\n"
    )


def test_the_command_line_imports_neither_extra_until_top_runs() -> None:
    probe = (
        "import sys, zmqrelay.cli; "
        "print(sorted(m for m in ('rich', 'prometheus_client', 'zmqrelay._top') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout == "[]\n"


# -- the live view ----------------------------------------------------------------------------


class _Screen:
    """What a process has written to its standard output, read as far as a test waits."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self.text = ""
        self._seen = 0

    async def shows(self, pattern: str) -> str:
        """Wait until the output after the last match matches ``pattern``; the match."""
        with anyio.fail_after(20):
            while (found := re.compile(pattern).search(self.text, self._seen)) is None:
                self.text += (await self._stream.receive()).decode()
        self._seen = found.end()
        return found.group()

    async def rest(self) -> str:
        """Everything it writes until it closes its output."""
        with anyio.fail_after(20):
            async for chunk in self._stream:
                self.text += chunk.decode()
        return self.text[self._seen :]


@asynccontextmanager
async def live(url: str, *, terminal: bool) -> AsyncIterator[tuple[Process, _Screen]]:
    """``zmqrelay top --interval 0.1 URL``, on a terminal as rich sees one, or into a pipe."""
    env = {**os.environ, "COLUMNS": "120"}
    if terminal:
        env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    command = [*ZMQRELAY, "top", "--interval", "0.1", "--timeout", "1", url]
    process = await anyio.open_process(command, env=env)
    try:
        yield process, _Screen(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_live_view_says_while_the_endpoint_is_down_and_recovers(
    signum: signal.Signals,
) -> None:
    exporter = Exporter()
    exporter.workers.labels("resize").set(5)
    with ExitStack() as first_endpoint:
        url = first_endpoint.enter_context(http_endpoint(exporter.app))
        port = int(url.split(":")[2].split("/")[0])
        async with live(url, terminal=True) as (process, screen):
            await screen.shows(re.escape("\x1b[?25l"))  # rich's live display hides the cursor
            await screen.shows(r"rates from the next scrape on")
            await screen.shows(r"resize +- +- +- .* 5 ")
            await screen.shows(r"rates over the last 0\.\d s")
            first_endpoint.close()
            await screen.shows(r"cannot read .*: Connection refused; retrying every 0\.1 s")
            await screen.shows(r"last answer \d+ s ago")
            with http_endpoint(exporter.app, port=port):
                exporter.serve("resize", "reply", [0.001])
                await screen.shows(r"Ctrl-C quits")
                await screen.shows(r"resize +\d.* 5 ")
                process.send_signal(signum)
                with anyio.fail_after(20):
                    assert await process.wait() == 0
            assert (await screen.rest()).endswith("\x1b[?25h")  # the cursor is back


@pytest.mark.asyncio
async def test_live_view_into_a_pipe_prints_one_screen_after_another() -> None:
    exporter = Exporter()
    with http_endpoint(exporter.app) as url:
        async with live(url, terminal=False) as (process, screen):
            await screen.shows(r"rates from the next scrape on")
            await screen.shows(r"rates over the last \S+ s")
            await screen.shows(r"rates over the last \S+ s")
            assert "\x1b" not in screen.text
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                assert await process.wait() == 0
    assert exporter.scrapes >= 3


# -- the documentation ------------------------------------------------------------------------

PAGE = ROOT / "docs" / "observability.md"


def _block_after(marker: str, fence: str) -> str:
    """The fenced block that follows ``marker`` on the observability page."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(fence, text.index(marker)) + len(fence)
    return text[text.index("\n", start) + 1 : text.index("\n```", start) + 1]


def docs_scrapes() -> tuple[Scrape, Scrape]:
    """Two seconds of a made-up load-balancing broker: the screen on the page."""
    exporter = Exporter()
    for service, workers, credits, queued, in_flight in (
        ("resize", 8, 0, 37, 32),
        ("thumbnail", 4, 3, 0, 5),
        ("(default)", 2, 2, 0, 0),
    ):
        exporter.workers.labels(service).set(workers)
        exporter.credits.labels(service).set(credits)
        exporter.queued.labels(service).set(queued)
        exporter.in_flight.labels(service).set(in_flight)
    randomly = random.Random(14)
    before = scrape_now(exporter, at=100.0)
    exporter.serve("resize", "reply", [randomly.lognormvariate(-4.2, 0.5) for _ in range(1702)])
    exporter.serve("resize", "error", [randomly.lognormvariate(-4.2, 0.5) for _ in range(6)])
    exporter.serve("resize", "busy", [0] * 23)
    exporter.serve("thumbnail", "reply", [randomly.lognormvariate(-6, 0.4) for _ in range(4870)])
    exporter.serve("(default)", "reply", [randomly.lognormvariate(-8, 0.3) for _ in range(41)])
    exporter.dropped.labels("late").inc(2)
    return before, scrape_now(exporter, at=102.0)


def test_the_page_shows_the_screen_top_draws() -> None:
    """If this fails, paste the screen it prints into the page, under its marker."""
    screen = render_text(*docs_scrapes(), url="http://127.0.0.1:9464/metrics", width=110)
    shown = _block_after("<!-- the screen: tests/test_top.py draws it -->", "```text")
    lines = [line.rstrip() for line in screen.splitlines()]
    assert [line.rstrip() for line in shown.splitlines()] == lines, screen


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return "value"


def test_the_page_shows_the_json_document_top_prints() -> None:
    """The example has every field of the document, and no other."""
    document = TopView.from_scrapes(*docs_scrapes()).to_json("http://127.0.0.1:9464/metrics")
    shown = json.loads(_block_after("<!-- the JSON document -->", "```json"))
    assert _shape(shown) == _shape(document)
