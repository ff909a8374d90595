"""The programs in ``examples/`` run as documented, each in its own process.

The broker binds ``tcp://127.0.0.1:0`` and its ready line names the ports it really bound, so
no port is guessed. Processes are synchronised on the lines they print, never on sleeps, and
every wait has a deadline.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START_DEADLINE = 15.0
RUN_DEADLINE = 30.0
STOP_DEADLINE = 10.0

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the examples stop on POSIX signals"
)


class Program:
    """A running example whose output (stdout and stderr together) is read line by line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, deadline: float) -> re.Match[str]:
        """The first line from now on that matches ``pattern``; fail at ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} in time; output so far: {self.lines}")
            if line is None:
                self.process.wait(timeout=STOP_DEADLINE)
                pytest.fail(
                    f"exited with {self.process.returncode} before printing a line matching"
                    f" {pattern!r}; output: {self.lines}"
                )
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self, signum: signal.Signals) -> int:
        """Send ``signum``, wait for the exit (killing it past the deadline), return its status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            returncode = self.process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_DEADLINE)
            raise
        finally:
            self._finish_reading()
        return returncode

    def _finish_reading(self) -> None:
        """Collect the lines not yet read; the reader ends once the process closed its output."""
        self._reader.join(timeout=STOP_DEADLINE)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)


def command(example: str, *args: str) -> list[str]:
    return [sys.executable, "-u", str(EXAMPLES / example), *args]


@contextmanager
def started(example: str, *args: str) -> Iterator[Program]:
    """Run an example in the background; make sure it is gone (and its pipe closed) afterwards."""
    with subprocess.Popen(
        command(example, *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        program = Program(process)
        try:
            yield program
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=STOP_DEADLINE)
            program._finish_reading()


def run_to_completion(example: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(example, *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
        check=False,
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_client_gets_ten_replies_through_broker_and_worker(stop_signal: signal.Signals) -> None:
    deadline = time.monotonic() + START_DEADLINE
    with started(
        "broker.py", "--frontend", "tcp://127.0.0.1:0", "--backend", "tcp://127.0.0.1:0"
    ) as broker:
        ready = broker.wait_for(
            r"^broker ready: frontend (tcp://\S+), backend (tcp://\S+)$", deadline
        )
        frontend, backend = ready.group(1), ready.group(2)
        with started("worker.py", "--connect", backend) as worker:
            worker.wait_for(r"^worker ready", deadline)

            client = run_to_completion("client.py", "--connect", frontend)

            assert client.returncode == 0, client.stderr
            assert client.stdout.splitlines() == [
                f"reply {number}: World" for number in range(1, 11)
            ]
            assert worker.stop(stop_signal) == 0
            assert worker.lines.count("worker received: Hello") == 10
            assert any(line.startswith("worker stopped:") for line in worker.lines)
        assert broker.stop(stop_signal) == 0
        assert broker.lines[-1].startswith("broker stopped: BrokerStatistics(")
        # Ten requests of four frames: client id, request tag, delimiter, body.
        assert "request_frames=40," in broker.lines[-1]
        assert "reply_frames=40," in broker.lines[-1]


def test_client_times_out_without_a_worker() -> None:
    deadline = time.monotonic() + START_DEADLINE
    with started(
        "broker.py", "--frontend", "tcp://127.0.0.1:0", "--backend", "tcp://127.0.0.1:0"
    ) as broker:
        ready = broker.wait_for(r"^broker ready: frontend (\S+), backend", deadline)
        client = run_to_completion(
            "client.py", "--connect", ready.group(1), "--requests", "1", "--timeout", "0.5"
        )
        assert client.returncode == 1
        assert client.stdout == ""
        assert "request 1: no reply within 0.5 s" in client.stderr
        assert broker.stop(signal.SIGTERM) == 0


def test_embedded_application_runs_and_exits_cleanly() -> None:
    result = run_to_completion("embedded.py")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    replies = [
        re.fullmatch(r"reply (\d+): (worker-[ab]): HELLO (\d+)", line)
        for line in lines
        if line.startswith("reply ")
    ]
    assert len(replies) == 8
    assert all(reply is not None and reply[1] == reply[3] for reply in replies)
    # The broker hands requests to the connected workers in turn: both served some.
    assert {reply[2] for reply in replies if reply is not None} == {"worker-a", "worker-b"}
    assert "error reply: ValueError: asked to fail" in lines
    assert any(line.startswith("heartbeat 1") for line in lines)
    assert any(
        line.startswith("broker: BrokerStatistics(mode='relay', engine='libzmq',")
        for line in lines
    )
    assert lines[-1] == "done"


def test_services_example_routes_streams_and_discovers() -> None:
    result = run_to_completion("services.py")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "upper: HELLO",
        "count part: 1",
        "count part: 2",
        "count part: 3",
        "count joined: [b'1', b'2', b'3']",
        "mmi.service upper: 200",
        "mmi.service count: 200",
        "mmi.service resize: 404",
        "resize: NoWorkers: the broker refused the request: no workers (service 'resize')",
        "done",
    ]


def test_metrics_app_exposes_the_brokers_metrics_beside_its_own() -> None:
    deadline = time.monotonic() + START_DEADLINE
    with started("metrics.py", "--metrics-port", "0") as app:
        url = app.wait_for(r"^metrics at (http://\S+)$", deadline).group(1)
        wanted = [
            'zmqrelay_requests_total{outcome="reply",service="shout"}',
            'zmqrelay_requests_total{outcome="reply",service="resize"}',
            'zmqrelay_requests_total{outcome="no_workers",service="fax"}',
            'zmqrelay_workers{service="resize"} 1.0',
            'app_jobs_total{result="done"}',
        ]
        deadline = time.monotonic() + RUN_DEADLINE
        while True:  # until every outcome has happened at least once
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
            counted = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            if all(counted.get(key.rsplit(" ", 1)[0], 0) > 0 for key in wanted):
                break
            assert time.monotonic() < deadline, f"not all of {wanted} in:\n{text}"
            time.sleep(0.2)
        assert app.stop(signal.SIGINT) == 0
        assert app.lines[-1] == "stopped"
