"""``zmqrelay bench``: throughput, latency and CPU per request through a broker.

Also a library::

    from zmqrelay.bench import BenchConfig, report, run_bench

    results = [run_bench(BenchConfig(broker=name, duration=2)) for name in ("zmqrelay", "proxy")]
    print(report(results))

Every party is a process of its own, so the broker has a core to itself on a two-core machine:
the broker under test, echo workers and pipelined load clients (see :mod:`zmqrelay._bench_peers`
for each kind). Absolute figures drift on shared machines, so compare runs made in one
invocation (``--compare proxy`` prints ratios to libzmq's own proxy), and read the CPU seconds
per request of each party: they stay meaningful when the load clients, not the broker, are the
bottleneck.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from zmqrelay._bench_peers import CURVE_ENV, READY, SYNC_ENV, TRACING_ENV, read_latencies

__all__ = ["BROKERS", "BenchConfig", "BenchResult", "report", "run_bench"]

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_READY = re.compile(r"serving: clients connect to (\S+), workers to (\S+)")
_METRICS = re.compile(r"metrics served on (\S+)")
_START_DEADLINE = 20.0

BROKERS = (
    "zmqrelay",
    "zmqrelay-python",
    "zmqrelay-lb",
    "proxy",
    "python-loop",
    "python-lb",
    "python-lb-lowlevel",
    "majortomo",
    "nats",
)
"""Brokers the bench knows how to start (an external one is given by a command)."""


@dataclass(frozen=True)
class BenchConfig:
    """The load: who serves, who asks, how much."""

    broker: str = "zmqrelay"
    """One of :data:`BROKERS`, or a label for ``broker_command``."""
    broker_command: str | None = None
    """A command starting an external broker; ``{frontend}`` and ``{backend}`` in it are
    replaced by ``tcp://127.0.0.1:PORT`` endpoints to bind."""
    workers: int = 2
    worker_kind: str = "c"
    """``c`` (libzmq echoes), ``sync`` (a plain pyzmq loop), ``async`` (AsyncWorker), or, for
    load-balancing brokers, ``guide`` (the guide's REQ worker) or ``async-lb``, and for
    Majordomo brokers ``mdp`` (a plain Majordomo worker) or ``async-mdp`` (AsyncWorker)."""
    work: float = 0.0
    """Seconds each request takes a worker (not with ``c`` workers)."""
    slow_factor: float = 1.0
    """The first worker takes this many times longer per request (fairness)."""
    worker_concurrency: int = 100
    sockets_per_worker: int = 1
    """Workers each worker process runs (``guide-c`` and ``mdp``), each on a socket of its own."""
    tracing: bool = False
    """zmqrelay's clients and workers (``async`` kinds) trace every request with
    OpenTelemetry's SDK, exporting the spans nowhere (needs ``zmqrelay[tracing]`` and the
    SDK)."""
    clients: int = 1
    client_kind: str = "sync"
    """``sync`` (a plain pipelined pyzmq DEALER), ``async`` (AsyncClient), ``mdp`` (plain
    Majordomo clients: one socket per request in flight), or ``c`` (libzmq sends each reply
    back as the next request: the cheapest client there is; no latency is measured)."""
    window: int = 100
    """Requests each client keeps in flight."""
    size: int = 16
    """Payload bytes (at least 8: the send time travels in the payload)."""
    warmup: float = 1.0
    duration: float = 3.0
    pin: bool = False
    """Linux: the broker runs on the first CPU, every other party on the others (with several
    brokers, they share the first ``brokers`` CPUs)."""
    curve: bool = False
    """Every connection uses CURVE (throw-away keys; zmqrelay's broker authenticates both
    sides; the plain Python and libzmq brokers encrypt, with no ZAP handler to ask)."""
    metrics: bool = False
    """zmqrelay's brokers serve Prometheus metrics, scraped once a second while measured."""
    brokers: int = 1
    """Brokers of this kind, each a process: every worker connects to all of them (a socket
    per broker, or an ``AsyncWorker`` given the list), client ``n`` to broker ``n % brokers``.
    The broker CPU reported is theirs together."""


@dataclass(frozen=True)
class BenchResult:
    """What one run measured, over the measured window."""

    broker: str
    requests: int
    seconds: float
    broker_cpu_seconds: float
    worker_cpu_seconds: float
    client_cpu_seconds: float
    latency_p50_us: float
    latency_p99_us: float
    latency_p999_us: float

    @property
    def requests_per_second(self) -> float:
        """Throughput."""
        return self.requests / self.seconds

    def cpu_per_request_us(self, seconds: float) -> float:
        """``seconds`` of CPU spread over the requests, in microseconds each."""
        return seconds / max(self.requests, 1) * 1e6

    def as_dict(self) -> dict[str, float | int | str]:
        """The result with its derived figures, for JSON."""
        return {
            **asdict(self),
            "requests_per_second": self.requests_per_second,
            "broker_cpu_per_request_us": self.cpu_per_request_us(self.broker_cpu_seconds),
            "worker_cpu_per_request_us": self.cpu_per_request_us(self.worker_cpu_seconds),
            "client_cpu_per_request_us": self.cpu_per_request_us(self.client_cpu_seconds),
        }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started inside are stopped on the way out, by PID, even on Ctrl-C."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in started:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def _zmqrelay(*args: str) -> list[str]:
    return [sys.executable, "-m", "zmqrelay", *args]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(endpoint: str, deadline: float) -> None:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {endpoint}") from None
            time.sleep(0.05)
        else:
            return


def _make_keys(folder: str) -> None:
    """Throw-away key pairs for a CURVE bench: the broker's, a client's and a worker's.

    The client's and the worker's are in ``clients`` and ``workers``, the broker's key folders.
    """
    from zmqrelay._aio.curve import CurveKeyPair

    CurveKeyPair.create(folder, "broker")
    CurveKeyPair.create(os.path.join(folder, "clients"), "client")
    CurveKeyPair.create(os.path.join(folder, "workers"), "worker")


def _curve_flags(config: BenchConfig) -> list[str]:
    folder = os.environ.get(CURVE_ENV)
    if not config.curve or folder is None:
        return []
    return [
        "--curve-secret-key", os.path.join(folder, "broker.key_secret"),
        "--client-keys", os.path.join(folder, "clients"),
        "--worker-keys", os.path.join(folder, "workers"),
    ]  # fmt: skip


def _start_broker(
    config: BenchConfig, started: list[subprocess.Popen[str]]
) -> tuple[int, str, str]:
    deadline = time.monotonic() + _START_DEADLINE
    if config.broker_command is not None:
        frontend = f"tcp://127.0.0.1:{_free_port()}"
        backend = f"tcp://127.0.0.1:{_free_port()}"
        command = shlex.split(config.broker_command.format(frontend=frontend, backend=backend))
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pinned(config, broker=True),
        )
        started.append(process)  # type: ignore[arg-type]
        _wait_listening(frontend, deadline)
        _wait_listening(backend, deadline)
        return process.pid, frontend, backend
    if config.broker in ("zmqrelay", "zmqrelay-python", "zmqrelay-lb"):
        engine = "python" if config.broker == "zmqrelay-python" else "libzmq"
        mode = "load-balancing" if config.broker == "zmqrelay-lb" else "relay"
        command = _zmqrelay(
            "--log-level", "INFO", "broker", "--engine", engine, "--mode", mode,
            "--drain-timeout", "0",
            "--frontend", "tcp://127.0.0.1:0", "--backend", "tcp://127.0.0.1:0",
            *_curve_flags(config),
            *(["--metrics-address", "127.0.0.1:0"] if config.metrics else []),
        )  # fmt: skip
    elif config.broker in (
        "proxy", "python-loop", "python-lb", "python-lb-lowlevel", "majortomo", "nats"
    ):  # fmt: skip
        command = _zmqrelay("bench-peer", config.broker)
    else:
        raise ValueError(f"broker must be one of {BROKERS} or come with a command")
    broker = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=_pinned(config, broker=True),
    )
    started.append(broker)
    assert broker.stderr is not None
    for line in broker.stderr:
        served = _METRICS.search(line)
        if served:
            _scrape_every_second(served[1], started)
        match = _READY.search(line)
        if match:
            return broker.pid, match[1], match[2]
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the {config.broker} broker did not report its endpoints")


def _scrape_every_second(url: str, started: list[subprocess.Popen[str]]) -> None:
    """Scrape ``url`` once a second until the broker (the last process started) ends.

    As Prometheus would, only more often than it usually does.
    """
    broker = started[-1]

    def scrape() -> None:
        while broker.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    answer.read()
            except OSError:
                pass  # it is stopping
            time.sleep(1)

    threading.Thread(target=scrape, name="zmqrelay-bench-scrape", daemon=True).start()


def _pinned(config: BenchConfig, *, broker: bool) -> Callable[[], None] | None:
    """What pins a party to its CPUs as it starts (see :attr:`BenchConfig.pin`)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not config.pin or len(cpus) < 2:
        return None
    if len(cpus) <= config.brokers:
        raise ValueError(f"--pin needs more CPUs than brokers ({len(cpus)} for {config.brokers})")
    mine = set(cpus[: config.brokers]) if broker else set(cpus[config.brokers :])
    return lambda: os.sched_setaffinity(0, mine)


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


def run_bench(
    config: BenchConfig, *, progress: Callable[[str], None] = lambda _: None
) -> BenchResult:
    """Start the broker, workers and clients of ``config``, measure, stop them all."""
    label = config.broker if config.broker_command is None else config.broker or "external"
    if config.curve:
        label += "+curve"
    if config.metrics:
        if not config.broker.startswith("zmqrelay"):
            raise ValueError(f"the {config.broker} broker serves no metrics")
        label += "+metrics"
    if config.broker == "nats":  # NATS talks only to its own peers: nats-py's, in Python
        config = replace(config, worker_kind="nats", client_kind="nats")
    size = max(config.size, 8)
    if config.tracing:
        label += "+tracing"
    if config.brokers != 1:
        if config.broker == "nats":
            raise ValueError("the bench runs one nats broker only")
        label += f" x{config.brokers}"
    peers_environment = {**os.environ, SYNC_ENV: "1"}
    if config.tracing:
        peers_environment[TRACING_ENV] = "1"
    with (
        _processes() as started,
        tempfile.TemporaryDirectory(prefix="zmqrelay-bench-") as tmp,
        _curve_environment(config, tmp),
    ):
        pids, frontends, backends = zip(
            *(_start_broker(config, started) for _ in range(config.brokers)), strict=True
        )
        workers = [
            subprocess.Popen(
                _zmqrelay(
                    "bench-peer",
                    "worker",
                    config.worker_kind,
                    ",".join(backends),
                    str(config.worker_concurrency),
                    str(config.work * (config.slow_factor if number == 0 else 1)),
                    str(config.sockets_per_worker),
                ),
                stdout=subprocess.PIPE,
                text=True,
                env=peers_environment,
                preexec_fn=_pinned(config, broker=False),
            )
            for number in range(config.workers)
        ]
        started.extend(workers)
        _await_ready(workers, "worker")
        paths = [os.path.join(tmp, f"client-{n}.latencies") for n in range(config.clients)]
        clients = [
            subprocess.Popen(
                _zmqrelay(
                    "bench-peer",
                    "client",
                    config.client_kind,
                    frontends[number % config.brokers],
                    str(config.window),
                    str(size),
                    str(config.warmup),
                    str(config.duration),
                    path,
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=peers_environment,
                preexec_fn=_pinned(config, broker=False),
            )
            for number, path in enumerate(paths)
        ]
        started.extend(clients)
        # Every party counts over one window, chosen once all are set up: a process slow to
        # start (imports on a busy machine can take seconds) shifts nobody's window.
        _await_ready(clients, "client")
        opens = time.perf_counter_ns() + round(config.warmup * 1e9)
        closes = opens + round(config.duration * 1e9)
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(f"{opens} {closes}\n")
            client.stdin.flush()
        _sleep_with_progress(opens, f"{label}: warming up", progress)
        broker_before = sum(_cpu_seconds(pid) for pid in pids)
        workers_before = sum(_cpu_seconds(worker.pid) for worker in workers)
        _sleep_with_progress(closes, f"{label}: measuring", progress)
        broker_cpu = sum(_cpu_seconds(pid) for pid in pids) - broker_before
        worker_cpu = sum(_cpu_seconds(worker.pid) for worker in workers) - workers_before
        requests, client_cpu = 0, 0.0
        for client in clients:
            out, _ = client.communicate(timeout=config.duration + config.warmup + 60)
            try:
                counts = json.loads(out)
            except json.JSONDecodeError:
                raise RuntimeError(
                    f"the {config.client_kind} client against {label} ended without a result "
                    f"(exit code {client.returncode}; its error is above): do "
                    f"--worker-kind {config.worker_kind} workers speak that broker's protocol?"
                ) from None
            requests += counts["requests"]
            client_cpu += counts["cpu_seconds"]
        latencies = read_latencies(paths)
    progress("")
    return BenchResult(
        broker=label,
        requests=requests,
        seconds=config.duration,
        broker_cpu_seconds=broker_cpu,
        worker_cpu_seconds=worker_cpu,
        client_cpu_seconds=client_cpu,
        latency_p50_us=_percentile(latencies, 0.5),
        latency_p99_us=_percentile(latencies, 0.99),
        latency_p999_us=_percentile(latencies, 0.999),
    )


@contextmanager
def _curve_environment(config: BenchConfig, tmp: str) -> Iterator[None]:
    """With ``config.curve``, keys in ``tmp`` and every party told of them (environment)."""
    if not config.curve:
        yield
        return
    if config.broker in ("majortomo", "nats") or config.broker_command is not None:
        raise ValueError(f"the bench cannot run {config.broker} with CURVE")
    folder = os.path.join(tmp, "keys")
    _make_keys(folder)
    before = os.environ.get(CURVE_ENV)
    os.environ[CURVE_ENV] = folder
    try:
        yield
    finally:
        if before is None:
            del os.environ[CURVE_ENV]
        else:
            os.environ[CURVE_ENV] = before


def _sleep_with_progress(until: int, what: str, progress: Callable[[str], None]) -> None:
    """Sleep until ``perf_counter_ns()`` reaches ``until``, saying how long is left."""
    while (left := (until - time.perf_counter_ns()) / 1e9) > 0:
        progress(f"{what}, {left:4.1f} s left")
        time.sleep(min(0.5, left))


def _await_ready(processes: Sequence[subprocess.Popen[str]], role: str) -> None:
    """Wait until each of ``processes`` says it is set up (see ``SYNC_ENV``)."""
    deadline = time.monotonic() + _START_DEADLINE
    for process in processes:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        line = process.stdout.readline() if readable else ""
        if line.strip() != READY:
            process.poll()
            raise RuntimeError(
                f"a {role} (PID {process.pid}) did not start: exit code {process.returncode}, "
                f"said {line!r}"
            )


def report(results: Sequence[BenchResult], *, as_json: bool = False) -> str:
    """Format results, with ratios to libzmq's proxy when it was measured too."""
    if as_json:
        return json.dumps([result.as_dict() for result in results], indent=2)
    proxy = next((result for result in results if result.broker == "proxy"), None)
    header = (
        f"{'broker':<20}{'req/s':>10}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}"
        f"{'broker CPU µs/req':>19}{'worker':>8}{'client':>8}"
    )
    lines = [header]
    lines.extend(
        f"{result.broker:<20}{result.requests_per_second:>10,.0f}"
        f"{result.latency_p50_us:>9.0f}{result.latency_p99_us:>9.0f}"
        f"{result.latency_p999_us:>10.0f}"
        f"{result.cpu_per_request_us(result.broker_cpu_seconds):>19.1f}"
        f"{result.cpu_per_request_us(result.worker_cpu_seconds):>8.1f}"
        f"{result.cpu_per_request_us(result.client_cpu_seconds):>8.1f}"
        for result in results
    )
    by_label = {result.broker: result for result in results}
    several = [
        (result, by_label[base])
        for result in results
        if (base := re.sub(r" x\d+$", "", result.broker)) != result.broker and base in by_label
    ]
    if several:
        lines.append("")
        lines.append(f"{'vs one broker':<20}{'req/s':>10}{'p50':>9}{'broker CPU/req':>19}")
        for result, one in several:
            lines.append(_ratios(result, one))
    if proxy is not None:
        lines.append("")
        lines.append(f"{'vs proxy':<20}{'req/s':>10}{'p50':>9}{'broker CPU/req':>19}")
        for result in results:
            if result is proxy:
                continue
            lines.append(_ratios(result, proxy))
    return "\n".join(lines)


def _ratios(result: BenchResult, base: BenchResult) -> str:
    """A report line: ``result``'s throughput, median latency and broker CPU over ``base``'s."""
    throughput = result.requests_per_second / base.requests_per_second
    latency = result.latency_p50_us / base.latency_p50_us
    cpu = result.broker_cpu_seconds / max(result.requests, 1)
    base_cpu = base.broker_cpu_seconds / max(base.requests, 1)
    return (
        f"{result.broker:<20}{throughput:>9.2f}x{latency:>8.2f}x"
        f"{cpu / base_cpu if base_cpu else float('nan'):>18.2f}x"
    )
