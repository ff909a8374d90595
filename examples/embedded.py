"""One asyncio application that embeds a broker, two workers and a client, next to its own work.

Where ``broker.py``, ``worker.py`` and ``client.py`` are three processes, here everything shares
one event loop and one anyio task group with an unrelated task (a heartbeat that ticks while
the rest works). Run it with::

    python examples/embedded.py

It starts the broker and waits until it is ready, starts two workers, sends a batch of
requests at once through one client (the broker hands them to the workers in turn), shows how
a failing handler reaches the client as a :class:`zmqrelay.RemoteError`, prints the broker's
statistics, then shuts down in order: the broker drains and closes, the workers finish and
close, the heartbeat is cancelled, and the program exits with status 0.

Everything talks over ``inproc://``, which needs no ports but requires that all sockets share
one ``zmq.asyncio.Context``; the program makes its own and terminates it at the end. Swap the
endpoints for ``tcp://127.0.0.1:0`` and the broker binds free ports instead.

The worker whose handler fails logs the exception with its traceback on stderr through the
``zmqrelay.worker`` logger; that is expected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
import zmq.asyncio

from zmqrelay import AsyncClient, AsyncWorker, Broker, RemoteError

REQUESTS = 8
HEARTBEAT_INTERVAL = 0.02
WORK_TIME = 0.05


def make_handler(name: str) -> Callable[[bytes], Awaitable[bytes]]:
    """A handler that answers in upper case, naming the worker that served the request."""

    async def handle(request: bytes) -> bytes:
        if request == b"fail":
            raise ValueError("asked to fail")
        await anyio.sleep(WORK_TIME)  # stands for real work, so that requests overlap
        return f"{name}: ".encode() + request.upper()

    return handle


async def heartbeat(interval: float) -> None:
    """The application's own work, unrelated to the broker: tick until cancelled."""
    ticks = 0
    try:
        while True:
            await anyio.sleep(interval)
            ticks += 1
            print(f"heartbeat {ticks}", flush=True)
    finally:
        print(f"heartbeat stopped after {ticks} ticks", flush=True)


async def ask(client: AsyncClient, number: int, replies: dict[int, bytes]) -> None:
    replies[number] = await client.request(f"hello {number}".encode())


async def main() -> None:
    with zmq.asyncio.Context() as context:
        broker = Broker(frontend="inproc://frontend", backend="inproc://backend", context=context)
        workers = {
            name: AsyncWorker("inproc://backend", make_handler(name), context=context)
            for name in ("worker-a", "worker-b")
        }
        async with anyio.create_task_group() as task_group:
            # start() returns once the broker has bound both endpoints, so nothing races it.
            endpoints = await task_group.start(broker.run)
            print(f"broker ready: frontend {endpoints.frontend}, backend {endpoints.backend}")
            for worker in workers.values():
                await task_group.start(worker.run)
            task_group.start_soon(heartbeat, HEARTBEAT_INTERVAL)

            async with AsyncClient(endpoints.frontend, context=context, timeout=5.0) as client:
                replies: dict[int, bytes] = {}
                async with anyio.create_task_group() as requests:
                    for number in range(1, REQUESTS + 1):
                        requests.start_soon(ask, client, number, replies)
                for number, reply in sorted(replies.items()):
                    print(f"reply {number}: {reply.decode()}", flush=True)
                try:
                    await client.request(b"fail")
                except RemoteError as exc:
                    print(f"error reply: {exc.type_name}: {exc.message}", flush=True)
                print(f"client: {client.statistics()}", flush=True)

            print(f"broker: {broker.statistics()}", flush=True)
            # Shut down in order. aclose() is graceful: the broker stops taking requests and
            # passes on outstanding replies; each worker finishes the requests it holds.
            await broker.aclose()
            for name, worker in workers.items():
                await worker.aclose()
                print(f"{name}: {worker.statistics()}", flush=True)
            # The heartbeat never ends on its own: cancelling the group stops it.
            task_group.cancel_scope.cancel()
    print("done", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    asyncio.run(main())
