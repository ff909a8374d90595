"""A relay broker flooded past every queue keeps forwarding both ways (issue: a libzmq proxy
blocked sending requests to a worker that was itself blocked sending replies waited for good)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import pytest
import zmq
import zmq.asyncio

from peers import eventually, free_port, raw_socket, relay_statistics
from test_faults import processes
from zmqrelay import Broker
from zmqrelay.testing import LeakCheckingContext

WORKER = """
import sys, anyio
from zmqrelay import AsyncWorker

async def echo(request: bytes) -> bytes:
    return request

anyio.run(lambda: AsyncWorker(sys.argv[1], echo, concurrency=16).run())
"""


@pytest.mark.asyncio
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


async def _jam(
    context: zmq.asyncio.Context, broker: Broker
) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
    """Jam a libzmq-engine broker: its proxy ends up blocked in a send to a worker that stopped
    reading, in the middle of a burst of requests, where it cannot read ``TERMINATE``.

    The worker takes the first 600 requests and then stops reading: the proxy sees room for
    one more request, starts a burst of 1,000 from the client's backlog, and blocks at about
    the 600th. The caller closes the returned worker and client sockets."""
    worker = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
    worker.rcvhwm = 1
    client = raw_socket(context, zmq.DEALER, broker.endpoints.frontend)
    client.sndhwm = 0  # all 5,000 requests wait in the client's queue to the broker
    for number in range(5_000):
        await client.send_multipart([b"", b"%d" % number])
    for _ in range(600):
        await worker.recv_multipart()
    return worker, client


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("stop", ["aclose", "cancel"])
async def test_a_broker_whose_workers_stopped_reading_still_stops_in_time(
    context: LeakCheckingContext, stop: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(
        frontend="inproc://f", backend="inproc://b", context=context, drain_timeout=0.5
    )
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        worker, client = await _jam(context, broker)
        try:
            # The broker notices, says so, and its statistics answer without waiting.
            await eventually(lambda: "the proxy is blocked" in caplog.text)
            asked = anyio.current_time()
            relay_statistics(broker)
            assert anyio.current_time() - asked < 0.15
            started = anyio.current_time()
            with anyio.fail_after(5):
                if stop == "aclose":
                    await broker.aclose()
                else:
                    tg.cancel_scope.cancel()
        finally:
            worker.close()
            client.close()
    took = anyio.current_time() - started
    stats = relay_statistics(broker)
    print(f"\n{stop}: stopped in {took:.2f} s; {stats}")
    assert took < (1.5 if stop == "aclose" else 1.0)
    # The requests the blocked proxy held were not delivered, and are counted so.
    assert stats.undelivered_requests > 0
    assert stats.request_frames is not None
    assert stats.request_frames >= 600 * 3


def _line_with(process: subprocess.Popen[str], text: str) -> str:
    assert process.stderr is not None
    for line in process.stderr:
        if text in line:
            return line
    raise AssertionError(f"the broker exited without saying {text!r}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signals", [1, 2])
def test_a_relay_broker_with_a_frozen_worker_stops_on_a_signal(signals: int) -> None:
    """SIGSTOP a worker, flood the broker past every queue, then SIGTERM: the broker stops
    within its drain timeout and a little; a second SIGTERM stops it at once."""
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    drain_timeout = 2.0
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with processes() as started:
        broker = started.spawn(
            [sys.executable, "-m", "zmqrelay", "--log-level", "INFO", "broker",
             "--frontend", frontend, "--backend", backend,
             "--drain-timeout", str(drain_timeout)],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        _line_with(broker, "serving:")
        worker = started.spawn([sys.executable, "-c", WORKER, backend])
        flooder = context.socket(zmq.DEALER)
        flooder.sndhwm = 0
        flooder.connect(frontend)
        other = context.socket(zmq.DEALER)
        other.connect(frontend)
        try:
            other.send_multipart([b"", b"hello"])
            assert other.poll(30_000), "the broker and the worker did not come up"
            assert other.recv_multipart() == [b"", b"hello"]
            os.kill(worker.pid, signal.SIGSTOP)
            body = bytes(8192)
            for _ in range(5_000):  # 40 MB: more than the sockets' buffers and queues hold
                flooder.send_multipart([b"", body])
            started_at = time.monotonic()
            broker.send_signal(signal.SIGTERM)
            if signals == 2:
                _line_with(broker, "finishing requests in flight")
                broker.send_signal(signal.SIGTERM)
            returncode = broker.wait(timeout=30)
            took = time.monotonic() - started_at
            assert broker.stderr is not None
            released = "blocked sending requests" in broker.stderr.read()
        finally:
            flooder.close(linger=0)
            other.close(linger=0)
    context.term()
    print(f"\n{signals} SIGTERM: the broker stopped in {took:.2f} s (proxy released: {released})")
    assert returncode == 0
    assert took < (drain_timeout + 2 if signals == 1 else 1.5)
