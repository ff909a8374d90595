"""``zmqrelay bench``: requests per second through a broker, against libzmq's own proxy.

Every party is a separate process, so the broker gets a core of its own: the broker under test
(``zmqrelay broker`` or a process running ``zmq.proxy``), echo workers, and pipelined load
clients. Each worker echoes in C (``zmq.proxy`` with one socket on both sides reflects every
message back), so the Python load clients and the broker are what is measured.

Absolute figures drift on shared machines; compare runs made in one invocation
(``--compare proxy``) and read the broker's CPU seconds per request, which stays meaningful when
the load clients, not the broker, are the bottleneck.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import zmq

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_READY = re.compile(r"serving: clients connect to (\S+), workers to (\S+)")
_START_DEADLINE = 20.0


@dataclass(frozen=True)
class BenchResult:
    """What one run measured."""

    broker: str
    """``"zmqrelay"`` or ``"proxy"``."""
    requests: int
    """Replies the clients received during the measured window."""
    seconds: float
    """Length of the measured window."""
    broker_cpu_seconds: float
    """CPU time (user + system) the broker process used during the window."""

    @property
    def requests_per_second(self) -> float:
        """Throughput over the window."""
        return self.requests / self.seconds

    @property
    def cpu_per_request_us(self) -> float:
        """Broker CPU microseconds per request."""
        return self.broker_cpu_seconds / max(self.requests, 1) * 1e6


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


def _peer(*args: str) -> list[str]:
    return [sys.executable, "-m", "zmqrelay", "bench-peer", *args]


def _start_broker(kind: str, started: list[subprocess.Popen[str]]) -> tuple[int, str, str]:
    if kind == "zmqrelay":
        command = [
            sys.executable, "-m", "zmqrelay", "--log-level", "INFO", "broker",
            "--frontend", "tcp://127.0.0.1:0", "--backend", "tcp://127.0.0.1:0",
            "--drain-timeout", "0",
        ]  # fmt: skip
    elif kind == "proxy":
        command = _peer("proxy")
    else:
        raise ValueError(f"broker must be 'zmqrelay' or 'proxy', not {kind!r}")
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    started.append(process)
    assert process.stderr is not None
    deadline = time.monotonic() + _START_DEADLINE
    for line in process.stderr:
        match = _READY.search(line)
        if match:
            return process.pid, match[1], match[2]
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the {kind} broker did not report its endpoints")


def run_bench(
    *,
    broker: str = "zmqrelay",
    workers: int = 2,
    clients: int = 1,
    window: int = 100,
    size: int = 16,
    warmup: float = 1.0,
    duration: float = 3.0,
) -> BenchResult:
    """Measure one broker under pipelined load.

    Args:
        broker: ``"zmqrelay"`` (relay mode) or ``"proxy"`` (libzmq's ``zmq.proxy``).
        workers: echo worker processes.
        clients: load client processes.
        window: requests each client keeps in flight.
        size: payload bytes per request.
        warmup: seconds of load before measuring.
        duration: seconds measured.
    """
    with _processes() as started:
        pid, frontend, backend = _start_broker(broker, started)
        for _ in range(workers):
            started.append(subprocess.Popen(_peer("worker", backend), text=True))
        load = [
            subprocess.Popen(
                _peer("client", frontend, str(window), str(size), str(warmup), str(duration)),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(clients)
        ]
        started.extend(load)
        time.sleep(warmup)
        cpu_before = _cpu_seconds(pid)
        time.sleep(duration)
        cpu_after = _cpu_seconds(pid)
        counts = []
        for process in load:
            out, _ = process.communicate(timeout=duration + warmup + 30)
            counts.append(json.loads(out)["requests"])
        return BenchResult(broker, sum(counts), duration, cpu_after - cpu_before)


def report(results: Sequence[BenchResult], *, as_json: bool = False) -> str:
    """Format results, with ratios to the proxy's when it was measured too."""
    proxy = next((result for result in results if result.broker == "proxy"), None)
    if as_json:
        return json.dumps(
            [
                {
                    **asdict(result),
                    "requests_per_second": result.requests_per_second,
                    "cpu_per_request_us": result.cpu_per_request_us,
                }
                for result in results
            ],
            indent=2,
        )
    lines = [f"{'broker':<10} {'req/s':>10} {'CPU µs/req':>11} {'vs proxy':>9}"]
    for result in results:
        ratio = f"{result.requests_per_second / proxy.requests_per_second:.2f}x" if proxy else "-"
        lines.append(
            f"{result.broker:<10} {result.requests_per_second:>10,.0f} "
            f"{result.cpu_per_request_us:>11.1f} {ratio:>9}"
        )
    return "\n".join(lines)


# The peers, each run as `zmqrelay bench-peer ...` in a process of its own.


def serve_proxy() -> None:
    """Run libzmq's proxy between a ROUTER and a DEALER on free loopback ports."""
    context = zmq.Context()
    frontend = context.socket(zmq.ROUTER)
    backend = context.socket(zmq.DEALER)
    frontend.bind("tcp://127.0.0.1:*")
    backend.bind("tcp://127.0.0.1:*")
    front, back = (sock.getsockopt_string(zmq.LAST_ENDPOINT) for sock in (frontend, backend))
    print(f"serving: clients connect to {front}, workers to {back}", file=sys.stderr, flush=True)
    zmq.proxy(frontend, backend)  # until SIGTERM ends the process


def serve_echo(endpoint: str) -> None:
    """Echo every request back, in C: a proxy whose two sides are one DEALER socket."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(endpoint)
    zmq.proxy(sock, sock)  # until SIGTERM ends the process


def generate_load(endpoint: str, window: int, size: int, warmup: float, duration: float) -> None:
    """Keep ``window`` requests in flight; print how many replies came in the measured window."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(endpoint)
    body = b"x" * size
    message = [b"", body]
    for _ in range(window):
        sock.send_multipart(message)
    start = time.monotonic()
    measure_from, measure_until = start + warmup, start + warmup + duration
    counted = 0
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        recv()
        now = time.monotonic()
        if now >= measure_until:
            break
        if now >= measure_from:
            counted += 1
        send(message)
    print(json.dumps({"requests": counted}), flush=True)
    sock.close(linger=0)
    context.term()
