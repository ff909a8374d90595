"""``zmqrelay demo``: the ZeroMQ guide's request-reply broker scenario, in one process.

A broker, three workers and two clients; each client sends ten ``Hello`` requests one after
the other and every worker answers ``World``, naming itself in a second frame so the demo can
show how the broker spread the work.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import zmq.asyncio

from zmqrelay._aio.broker import Broker
from zmqrelay._aio.client import AsyncClient
from zmqrelay._aio.handlers import FramesHandler
from zmqrelay._aio.worker import AsyncWorker


@dataclass
class DemoResult:
    """What the demo observed."""

    served_by: list[tuple[str, int, str]] = field(default_factory=list)
    """``(client, request number, worker)`` for every request answered ``World``."""
    failures: list[str] = field(default_factory=list)
    """What went wrong, one line per failed request."""

    @property
    def spread(self) -> Counter[str]:
        """How many requests each worker served."""
        return Counter(worker for _, _, worker in self.served_by)


def _worker_handler(name: str) -> FramesHandler:
    async def handle(frames: list[bytes]) -> Sequence[bytes]:
        if frames != [b"Hello"]:
            raise ValueError(f"this demo worker answers only 'Hello', not {frames!r}")
        return [b"World", name.encode()]

    return handle


async def run_demo(
    *,
    transport: str = "inproc",
    clients: int = 2,
    workers: int = 3,
    requests: int = 10,
    timeout: float = 5.0,
    emit: Callable[[str], None] = print,
) -> DemoResult:
    """Run the seed scenario and report each reply through ``emit``.

    Args:
        transport: ``"inproc"`` (one process, no ports) or ``"tcp"`` (loopback, free ports).
        clients: how many clients send requests at the same time.
        workers: how many workers serve them.
        requests: how many requests each client sends, one after the other.
        timeout: seconds each request may take.
        emit: where lines of output go.

    """
    if transport == "inproc":
        name = uuid.uuid4().hex[:8]
        frontend, backend = f"inproc://demo-{name}-front", f"inproc://demo-{name}-back"
    elif transport == "tcp":
        frontend = backend = "tcp://127.0.0.1:0"
    else:
        raise ValueError(f"transport must be 'inproc' or 'tcp', not {transport!r}")
    context = zmq.asyncio.Context()
    result = DemoResult()
    try:
        broker = Broker(frontend=frontend, backend=backend, context=context, drain_timeout=1)
        async with broker, anyio.create_task_group() as worker_group:
            endpoints = broker.endpoints
            emit(
                f"broker: clients connect to {endpoints.frontend}, workers to {endpoints.backend}"
            )
            for number in range(1, workers + 1):
                worker = AsyncWorker(
                    endpoints.backend,
                    _worker_handler(f"worker-{number}"),
                    frames=True,
                    context=context,
                )
                await worker_group.start(worker.run)
            started = time.perf_counter()
            async with anyio.create_task_group() as client_group:
                for number in range(1, clients + 1):
                    client_group.start_soon(
                        _client,
                        f"client-{number}",
                        endpoints.frontend,
                        context,
                        requests,
                        timeout,
                        result,
                        emit,
                    )
            elapsed = time.perf_counter() - started
            worker_group.cancel_scope.cancel()
        _summarise(result, broker, clients * requests, elapsed, emit)
    finally:
        context.term()
    return result


async def _client(
    name: str,
    endpoint: str,
    context: zmq.asyncio.Context,
    requests: int,
    timeout: float,
    result: DemoResult,
    emit: Callable[[str], None],
) -> None:
    async with AsyncClient(endpoint, context=context, timeout=timeout) as client:
        for number in range(1, requests + 1):
            try:
                reply = await client.request_frames([b"Hello"])
            except Exception as exc:
                result.failures.append(f"{name} request {number}: {exc!r}")
                emit(f"{name} request {number:2}: Hello -> failed: {exc}")
                continue
            if len(reply) != 2 or reply[0] != b"World":
                result.failures.append(f"{name} request {number}: unexpected reply {reply!r}")
                continue
            worker = reply[1].decode()
            result.served_by.append((name, number, worker))
            emit(f"{name} request {number:2}: Hello -> World  (served by {worker})")


def _summarise(
    result: DemoResult, broker: Broker, sent: int, elapsed: float, emit: Callable[[str], None]
) -> None:
    emit("")
    emit(f"spread over {len(result.spread)} worker(s):")
    for worker, count in sorted(result.spread.items()):
        emit(f"  {worker}  {count:3}  {'#' * count}")
    emit(
        f"{len(result.served_by)} of {sent} requests answered 'World' in {elapsed * 1000:.1f} ms; "
        f"{len(result.failures)} failed"
    )
    stats = broker.statistics()
    if stats.mode == "load-balancing":
        emit(
            f"broker (load-balancing): {stats.requests_forwarded} requests and "
            f"{stats.replies_forwarded} replies forwarded"
        )
    elif stats.engine == "python":
        emit(
            f"broker: {stats.requests_forwarded} requests and {stats.replies_forwarded} replies "
            f"forwarded, {(stats.malformed_requests or 0) + (stats.malformed_replies or 0)} "
            "malformed dropped"
        )
    else:
        emit(
            f"broker ({stats.engine} engine): {stats.request_frames} request frames and "
            f"{stats.reply_frames} reply frames relayed"
        )
