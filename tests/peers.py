"""Plain ZeroMQ peers, standing in for clients and workers written in any language."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import zmq
import zmq.asyncio

from zmqrelay._aio.service import Service


@contextmanager
def endpoint_pair(transport: str) -> Iterator[tuple[str, str]]:
    """A frontend and a backend endpoint to bind, on ``inproc``, ``ipc`` or ``tcp``."""
    if transport == "inproc":
        name = uuid.uuid4().hex
        yield f"inproc://{name}-front", f"inproc://{name}-back"
    elif transport == "ipc":
        folder = tempfile.mkdtemp(prefix="zr-")
        try:
            yield f"ipc://{folder}/front", f"ipc://{folder}/back"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"


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


@asynccontextmanager
async def serving(service: Service) -> AsyncIterator[None]:
    """Run ``service`` in a task of its own, so that pytest-asyncio may enter and leave this
    context in different tasks (async generator fixtures do). Returns once it is ready."""
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def host() -> None:
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(service.run)
            except BaseException as exc:
                started.set_exception(exc)
                raise
            started.set_result(None)

    task = asyncio.get_running_loop().create_task(host())
    try:
        await started
    except BaseException:
        with contextlib.suppress(BaseException):
            await task
        raise
    try:
        yield
    finally:
        await service.aclose()
        await task
