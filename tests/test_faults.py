"""Load-balancing mode under real faults: worker processes killed or frozen, the broker killed
and restarted, all while clients keep asking. Every test prints and checks its counts:
sent = replies + typed errors, no hang, no reply to the wrong request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from peers import end_process, eventually, free_port
from zmqrelay import AsyncClient, RequestRefused, RequestTimeout, ZmqRelayError

pytestmark = pytest.mark.asyncio

HEARTBEAT = 0.1
WORKER = """
import sys, anyio
from zmqrelay import AsyncWorker

async def main() -> None:
    name = sys.argv[2].encode()

    async def echo(request: bytes) -> bytes:
        await anyio.sleep(0.002)
        return name + b":" + request

    await AsyncWorker(
        sys.argv[1], echo, concurrency=4, mode="load-balancing", heartbeat_interval=HEARTBEAT
    ).run()

anyio.run(main)
""".replace("HEARTBEAT", str(HEARTBEAT))


class Processes:
    """Processes this test starts, and stops by PID whatever happens."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def broker(self, frontend: str, backend: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "zmqrelay", "--log-level", "INFO", "broker",
             "--mode", "load-balancing", "--heartbeat-interval", str(HEARTBEAT),
             "--frontend", frontend, "--backend", backend, "--drain-timeout", "0"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.started.append(process)
        assert process.stderr is not None
        for line in process.stderr:
            if "serving:" in line:
                return process
        raise AssertionError("the broker did not start")

    def worker(self, backend: str, name: str) -> subprocess.Popen[str]:
        return self.spawn([sys.executable, "-c", WORKER, backend, name])

    def spawn(self, command: list[str], stderr: int | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(command, text=True, stderr=stderr)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            end_process(process)


@contextmanager
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


async def until_all_serve(client: AsyncClient, names: set[bytes]) -> None:
    seen: set[bytes] = set()
    with anyio.fail_after(20):
        while seen != names:
            try:
                seen.add((await client.request(b"warm-up", timeout=1)).split(b":")[0])
            except ZmqRelayError:
                continue


class Load:
    """Clients asking steadily; every request ends in exactly one counted outcome."""

    def __init__(self, client: AsyncClient, redeliveries: int) -> None:
        self.client = client
        self.redeliveries = redeliveries
        self.outcomes: Counter[str] = Counter()
        self.sent = 0

    @property
    def ended(self) -> int:
        return sum(self.outcomes.values())

    async def ask(self, total: int) -> None:
        while self.sent < total:
            self.sent += 1
            body = b"request %d" % self.sent
            try:
                reply = await self.client.request(body, timeout=2, redeliveries=self.redeliveries)
            except RequestRefused as exc:
                self.outcomes[type(exc).__name__] += 1
            except RequestTimeout:
                self.outcomes["RequestTimeout"] += 1
            else:
                assert reply.split(b":", 1)[1] == body, "a reply reached the wrong request"
                self.outcomes["reply"] += 1

    async def run(self, total: int, tasks: int = 16) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(self.ask, total)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("redeliveries", [0, 1])
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP])
async def test_one_of_three_workers_fails_under_load(
    fault: signal.Signals, redeliveries: int
) -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    with processes() as started:
        started.broker(frontend, backend)
        workers = {name: started.worker(backend, name) for name in ("w1", "w2", "w3")}
        async with AsyncClient(frontend) as client:
            await until_all_serve(client, {b"w1", b"w2", b"w3"})
            load = Load(client, redeliveries)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run, 600)
                await eventually(lambda: load.ended >= 100, timeout=30)
                os.kill(workers["w2"].pid, fault)
        print(
            f"\n{fault.name}, redeliveries={redeliveries}: sent {load.sent}, {dict(load.outcomes)}"
        )
        assert load.sent == load.ended == 600
        assert load.outcomes["RequestTimeout"] == 0, "a failure must end in a typed error at once"
        if redeliveries:
            assert load.outcomes["reply"] == 600
        else:
            assert set(load.outcomes) <= {"reply", "WorkerDied"}


@pytest.mark.timeout(90)
async def test_the_broker_is_killed_and_restarted_on_the_same_endpoints() -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    with processes() as started:
        broker = started.broker(frontend, backend)
        for name in ("w1", "w2", "w3"):
            started.worker(backend, name)
        async with AsyncClient(frontend) as client:
            await until_all_serve(client, {b"w1", b"w2", b"w3"})
            load = Load(client, redeliveries=0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run, 600)
                await eventually(lambda: load.ended >= 100, timeout=30)
                os.kill(broker.pid, signal.SIGKILL)
                broker.wait(timeout=20)
                started.broker(frontend, backend)
            replies_before_the_end = load.outcomes["reply"]
            # After the restart, workers registered again and requests are answered.
            await until_all_serve(client, {b"w1", b"w2", b"w3"})
        print(f"\nbroker restart: sent {load.sent}, {dict(load.outcomes)}")
        assert load.sent == load.ended == 600
        assert set(load.outcomes) <= {"reply", "RequestTimeout", "NoWorkers", "BrokerBusy"}
        assert replies_before_the_end >= 100
