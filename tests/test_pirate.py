"""The guide's Paranoid Pirate workers and Lazy Pirate clients, through a load-balancing broker
in a process of its own, surviving a worker killed under load and the broker killed and
restarted: workers register again, clients retry, every request is answered once."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

import anyio
import pytest
import zmq
import zmq.asyncio

from peers import eventually, free_port
from test_faults import HEARTBEAT, processes

pytestmark = pytest.mark.asyncio

# The guide's Paranoid Pirate worker, in plain pyzmq: READY and HEARTBEAT are one frame each
# (b"\x01", b"\x02"); it heartbeats every interval, and after LIVENESS intervals without a word
# from the broker it opens a new socket (same identity) and says READY again.
PIRATE_WORKER = """
import sys, time, zmq

endpoint, name = sys.argv[1], sys.argv[2].encode()
INTERVAL, LIVENESS = HEARTBEAT, 3
context = zmq.Context()

def connect():
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, name)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(b"\\x01")
    return sock

sock = connect()
liveness, heartbeat_at = LIVENESS, time.monotonic() + INTERVAL
while True:
    if sock.poll(int(INTERVAL * 1000)):
        frames = sock.recv_multipart()
        liveness = LIVENESS
        if len(frames) == 3:  # [reply-to, "", request]
            reply_to, empty, request = frames
            time.sleep(0.005)  # the work: it says nothing meanwhile
            sock.send_multipart([reply_to, empty, name + b":" + request])
    else:
        liveness -= 1
        if liveness == 0:
            sock.close()
            time.sleep(INTERVAL)
            sock = connect()
            liveness = LIVENESS
    if time.monotonic() > heartbeat_at:
        heartbeat_at = time.monotonic() + INTERVAL
        sock.send(b"\\x02")
""".replace("HEARTBEAT", str(HEARTBEAT))


class LazyPirate:
    """The guide's Lazy Pirate client: a REQ socket; on a timeout (or an error reply) it
    opens a new socket and sends the request again."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str) -> None:
        self.context, self.endpoint = context, endpoint
        self.outcomes: Counter[str] = Counter()

    async def request(self, body: bytes, timeout: float = 0.5, retries: int = 60) -> bytes:
        for _ in range(retries):
            sock = self.context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            try:
                await sock.send(body)
                if await sock.poll(int(timeout * 1000)):
                    (reply,) = await sock.recv_multipart()
                    if not reply.startswith(b"zmqrelay-error: "):
                        return reply
                    self.outcomes[reply.split(b":")[1].strip().decode()] += 1
                else:
                    self.outcomes["timeout"] += 1
            finally:
                sock.close()
        raise AssertionError(f"no reply to {body!r} after {retries} tries")


async def ask_all(client: LazyPirate, total: int, tasks: int, answered: list[bytes]) -> None:
    sent = 0

    async def ask() -> None:
        nonlocal sent
        while sent < total:
            sent += 1
            body = b"request %d" % sent
            reply = await client.request(body)
            assert reply.split(b":", 1)[1] == body, "a reply reached the wrong request"
            answered.append(body)

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(ask)


@pytest.mark.timeout(90)
async def test_pirate_workers_survive_one_killed_under_load() -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.asyncio.Context()
    with processes() as started:
        started.broker(frontend, backend)
        workers = {
            name: started.spawn([sys.executable, "-c", PIRATE_WORKER, backend, name])
            for name in ("p1", "p2", "p3")
        }
        client = LazyPirate(context, frontend)
        answered: list[bytes] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_all, client, 300, 8, answered)
            await eventually(lambda: len(answered) >= 50, timeout=30)
            os.kill(workers["p2"].pid, signal.SIGKILL)
        print(f"\npirate worker killed: {len(answered)} answered, retries {dict(client.outcomes)}")
        assert sorted(answered) == sorted(b"request %d" % n for n in range(1, 301))
    context.term()


@pytest.mark.timeout(90)
async def test_pirate_workers_and_clients_ride_out_a_broker_restart() -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.asyncio.Context()
    with processes() as started:
        broker = started.broker(frontend, backend)
        for name in ("p1", "p2"):
            started.spawn([sys.executable, "-c", PIRATE_WORKER, backend, name])
        client = LazyPirate(context, frontend)
        answered: list[bytes] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_all, client, 300, 8, answered)
            await eventually(lambda: len(answered) >= 50, timeout=30)
            os.kill(broker.pid, signal.SIGKILL)
            broker.wait(timeout=20)
            started.broker(frontend, backend)
        print(f"\nbroker restart: {len(answered)} answered, retries {dict(client.outcomes)}")
        assert sorted(answered) == sorted(b"request %d" % n for n in range(1, 301))
    context.term()
