"""A worker behind the broker: answers b"Hello" with b"World".

The worker connects to the broker's backend (it never binds, so you can start as many as you
like, on this machine or on any other that reaches the broker) and prints every request it
gets. Start the broker first or afterwards; the connection is retried until it is up::

    python examples/broker.py
    python examples/worker.py
    python examples/client.py

``--connect`` picks another backend than ``tcp://localhost:5560``; ``--concurrency`` lets one
worker handle several requests at once.

A request other than b"Hello" makes the handler raise: the worker logs the error and keeps
serving, and the client gets the error as a reply (a :class:`zmqrelay.RemoteError` in a
zmqrelay client). Ctrl-C or SIGTERM stops the worker gracefully, letting requests in hand
finish; a second signal stops it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import anyio

from zmqrelay import AsyncWorker


async def handle(request: bytes) -> bytes:
    print(f"worker received: {request.decode('utf-8', 'replace')}", flush=True)
    if request != b"Hello":
        raise ValueError(f"this worker only answers b'Hello', not {request!r}")
    return b"World"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='A worker that answers b"Hello" with b"World".')
    parser.add_argument(
        "--connect",
        default="tcp://localhost:5560",
        help="the broker's backend endpoint (%(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests handled at once (%(default)s)",
    )
    return parser.parse_args()


async def serve(endpoint: str, concurrency: int) -> None:
    worker = AsyncWorker(endpoint, handle, concurrency=concurrency)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as task_group:
            await task_group.start(worker.run)
            print(f"worker ready: connecting to {endpoint}", flush=True)

            async def stop_gracefully() -> None:
                await worker.aclose()
                task_group.cancel_scope.cancel()

            stopping = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping:
                    print(f"{name} again: stopping now", flush=True)
                    task_group.cancel_scope.cancel()
                    break
                stopping = True
                print(f"{name}: finishing requests in hand, then stopping", flush=True)
                task_group.start_soon(stop_gracefully)
    print(f"worker stopped: {worker.statistics()}", flush=True)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    asyncio.run(serve(args.connect, args.concurrency))


if __name__ == "__main__":
    main()
