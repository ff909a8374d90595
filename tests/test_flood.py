"""A relay broker flooded past every queue keeps forwarding both ways (issue: a libzmq proxy
blocked sending requests to a worker that was itself blocked sending replies waited for good)."""

from __future__ import annotations

import sys

import anyio
import pytest
import zmq
import zmq.asyncio

from test_faults import free_port, processes

pytestmark = pytest.mark.asyncio

WORKER = """
import sys, anyio
from zmqrelay import AsyncWorker

async def echo(request: bytes) -> bytes:
    return request

anyio.run(lambda: AsyncWorker(sys.argv[1], echo, concurrency=16).run())
"""


@pytest.mark.timeout(120)
async def test_a_relay_broker_flooded_by_one_client_still_serves_another() -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.asyncio.Context()
    raw: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with processes() as started:
        started.spawn(
            [sys.executable, "-m", "zmqrelay", "--log-level", "WARNING", "broker",
             "--frontend", frontend, "--backend", backend]
        )  # fmt: skip
        started.spawn([sys.executable, "-c", WORKER, backend])
        # A plain blocking socket: it sends all it has as fast as it can, reading nothing yet.
        flooder = raw.socket(zmq.DEALER)
        flooder.sndhwm = 0
        flooder.connect(frontend)
        other = context.socket(zmq.DEALER)
        other.connect(frontend)
        try:
            with anyio.fail_after(30):  # the broker and the worker are up
                await other.send_multipart([b"", b"hello"])
                assert await other.recv_multipart() == [b"", b"hello"]
            body = bytes(8192)
            for _ in range(20_000):  # 160 MB of requests: more than every queue on the way
                flooder.send_multipart([b"", body])
            replies = 0
            reader = zmq.asyncio.Socket.shadow(flooder.underlying)  # the same socket, awaited
            with anyio.move_on_after(5):
                while True:
                    await reader.recv_multipart()
                    replies += 1
            print(f"\nflood: {replies} replies of 20,000 read in 5 s (the rest dropped: full)")
            assert replies > 1_000
            with anyio.fail_after(10):  # the flood is over: another client is served at once
                for number in range(5):
                    await other.send_multipart([b"", b"%d" % number])
                    assert await other.recv_multipart() == [b"", b"%d" % number]
        finally:
            flooder.close(linger=0)
            other.close(linger=0)
    context.term()
    raw.term()
