"""Named services on one broker: two services, a streamed reply, and Majordomo discovery.

A load-balancing broker routes each request to a worker of the service it names. Here one
application embeds the broker, a worker for ``upper`` (four requests at once), a worker for
``count`` whose handler streams its reply part by part, and a client. Run it with::

    python examples/services.py

The client asks both services, prints the parts of a streamed reply as they come, asks the
broker (Majordomo's ``mmi.service``) which services have a live worker, and shows the typed
error a request for a service nobody offers ends in, once the broker's queue timeout passed.
Every party here speaks zmqrelay's protocol; stock Majordomo clients and workers (MDP 0.1, MDP
0.2, majortomo) could take any of their places, see ``docs/services.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import zmq.asyncio

from zmqrelay import AsyncClient, AsyncWorker, Broker, NoWorkers


async def upper(request: bytes) -> bytes:
    return request.upper()


async def count(request: bytes) -> AsyncIterator[bytes]:
    """A streaming handler: each part reaches the client as the next one is ready."""
    for number in range(1, int(request) + 1):
        await anyio.sleep(0.01)  # stands for real work between parts
        yield b"%d" % number


async def main() -> None:
    with zmq.asyncio.Context() as context:
        broker = Broker(
            frontend="inproc://services",
            backend="inproc://workers",
            mode="load-balancing",
            queue_timeout=0.2,  # how long a request waits for a worker of its service
            context=context,
        )
        async with (
            broker,
            AsyncWorker(
                "inproc://workers", upper, service="upper", concurrency=4, context=context
            ),
            AsyncWorker("inproc://workers", count, service="count", context=context),
            AsyncClient("inproc://services", context=context, timeout=5.0) as client,
        ):
            print("upper:", (await client.request("upper", b"hello")).decode(), flush=True)
            async for part in client.stream("count", b"3"):
                print("count part:", part.decode(), flush=True)
            print("count joined:", await client.request_frames("count", [b"3"]), flush=True)
            for name in (b"upper", b"count", b"resize"):
                code = await client.request("mmi.service", name)
                print(f"mmi.service {name.decode()}: {code.decode()}", flush=True)
            try:
                await client.request("resize", b"photo.jpg")
            except NoWorkers as exc:
                print(f"resize: NoWorkers: {exc}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
