"""Plain ZeroMQ peers, standing in for clients and workers written in any language."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import zmq
import zmq.asyncio

from zmqrelay import BalancerStatistics, Broker, BrokerStatistics


async def rep_worker(
    context: zmq.asyncio.Context,
    endpoint: str,
    name: str,
    served: Counter[str],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A stock REP worker that answers ``body`` with ``b"World " + body`` until cancelled."""
    sock = context.socket(zmq.REP)
    try:
        sock.connect(endpoint)
        task_status.started()
        while True:
            request = await sock.recv_multipart()
            served[name] += 1
            await sock.send_multipart([b"World " + request[0]])
    finally:
        sock.close(linger=0)


@asynccontextmanager
async def req_client(
    context: zmq.asyncio.Context, endpoint: str
) -> AsyncIterator[Callable[[bytes], Awaitable[bytes]]]:
    """A stock REQ client; yields a function that sends one request and returns the reply."""
    sock = context.socket(zmq.REQ)
    sock.connect(endpoint)

    async def request(body: bytes) -> bytes:
        await sock.send(body)
        reply = await sock.recv_multipart()
        assert len(reply) == 1
        return reply[0]

    try:
        yield request
    finally:
        sock.close(linger=0)


def echo_handler(name: str, served: Counter[str]) -> Callable[[bytes], Awaitable[bytes]]:
    """An AsyncWorker handler answering like :func:`rep_worker`."""

    async def handle(request: bytes) -> bytes:
        served[name] += 1
        return b"World " + request

    return handle


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, checking between event-loop turns, within ``timeout``."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls state that has no event
            await anyio.sleep(0.001)


def raw_socket(
    context: zmq.asyncio.Context,
    kind: int,
    endpoint: str,
    *,
    bind: bool = False,
    routing_id: bytes | None = None,
) -> zmq.asyncio.Socket:
    """A plain socket, connected (or bound) to ``endpoint``."""
    sock = context.socket(kind)
    sock.linger = 0
    if routing_id is not None:
        sock.routing_id = routing_id
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock


def lb_broker(
    context: zmq.asyncio.Context,
    *,
    frontend: str = "inproc://f",
    backend: str = "inproc://b",
    **options: object,
) -> Broker:
    """A load-balancing broker that stops at once (no drain), on inproc unless told."""
    return Broker(
        frontend=frontend,
        backend=backend,
        context=context,
        mode="load-balancing",
        drain_timeout=0,
        **options,  # type: ignore[arg-type]
    )


def relay_statistics(broker: Broker) -> BrokerStatistics:
    """A relay broker's statistics (narrowed by their mode)."""
    stats = broker.statistics()
    assert stats.mode == "relay", stats
    return stats


def balancer_statistics(broker: Broker) -> BalancerStatistics:
    """A load-balancing broker's statistics (narrowed by their mode)."""
    stats = broker.statistics()
    assert stats.mode == "load-balancing", stats
    return stats


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def end_process(process: subprocess.Popen[str]) -> None:
    """Kill ``process`` by PID (woken first, should it be stopped), and wait for it to end."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=20)
    if process.stderr is not None:
        process.stderr.close()


def broker_process(frontend: str, backend: str) -> subprocess.Popen[str]:
    """``zmqrelay broker`` (relay mode, no drain) in a process of its own, once it serves.

    The caller stops it, by PID.
    """
    broker = subprocess.Popen(
        [sys.executable, "-m", "zmqrelay", "--log-level", "INFO", "broker",
         "--frontend", frontend, "--backend", backend, "--drain-timeout", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert broker.stderr is not None
    for line in broker.stderr:
        if "serving:" in line:
            return broker
    raise AssertionError("the broker did not start")
