"""A request-reply broker in its own process: the seed of the ZeroMQ guide's rrbroker, on zmqrelay.

Clients connect to the frontend, workers to the backend; the broker passes every request to a
connected worker and every reply back to the client that asked. Run the three programs in three
terminals, in any order::

    python examples/broker.py
    python examples/worker.py
    python examples/client.py

The broker binds ``tcp://*:5559`` for clients and ``tcp://*:5560`` for workers; override them
with ``--frontend`` and ``--backend``. Binding port 0 (``tcp://127.0.0.1:0``) picks a free port,
and the line printed once the broker is ready names the ports it really bound.

Ctrl-C or SIGTERM stops it gracefully: no new requests are taken, replies to those already
forwarded are still passed on for a few seconds, then the sockets close. A second signal
stops it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import anyio

from zmqrelay import Broker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A request-reply broker for clients and workers that connect to it."
    )
    parser.add_argument(
        "--frontend", default="tcp://*:5559", help="endpoint to bind for clients (%(default)s)"
    )
    parser.add_argument(
        "--backend", default="tcp://*:5560", help="endpoint to bind for workers (%(default)s)"
    )
    return parser.parse_args()


async def serve(frontend: str, backend: str) -> None:
    broker = Broker(frontend=frontend, backend=backend)
    # Listen for signals before reporting readiness, so that a signal sent as soon as the
    # ready line appears is already ours and not the interpreter's default.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as task_group:
            endpoints = await task_group.start(broker.run)
            print(
                f"broker ready: frontend {endpoints.frontend}, backend {endpoints.backend}",
                flush=True,
            )

            async def stop_gracefully() -> None:
                await broker.aclose()
                task_group.cancel_scope.cancel()  # the broker has stopped: quit listening

            stopping = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping:
                    print(f"{name} again: stopping now", flush=True)
                    task_group.cancel_scope.cancel()
                    break
                stopping = True
                print(f"{name}: draining, then stopping", flush=True)
                task_group.start_soon(stop_gracefully)
    print(f"broker stopped: {broker.statistics()}", flush=True)


def main() -> None:
    args = parse_args()
    asyncio.run(serve(args.frontend, args.backend))


if __name__ == "__main__":
    main()
