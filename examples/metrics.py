"""An application that embeds a load-balancing broker and exposes its metrics to Prometheus.

The application keeps its own metrics in its own ``prometheus_client`` registry, hands that
registry to the broker (``Broker(metrics=registry)``), which adds its metrics to it while it
runs, and serves the registry with ``prometheus_client``'s HTTP server, as an application that
already exposes metrics would. Run it with::

    pip install 'zmqrelay[metrics]'
    python examples/metrics.py --metrics-port 9464

then look at http://127.0.0.1:9464/metrics, point Prometheus at it, or watch it live with
``zmqrelay top 127.0.0.1:9464``. Two services run in it: ``shout`` (fast), and ``resize``
(slow, and failing now and then), called by a client in a loop; once in a while it calls
``fax``, which no worker offers, so every kind of outcome shows. Ctrl-C (or SIGTERM) stops it.
"""

from __future__ import annotations

import argparse
import random
import signal

import anyio
from prometheus_client import CollectorRegistry, Counter, start_http_server

from zmqrelay import AsyncClient, AsyncWorker, Broker, RemoteError, RequestRefused

registry = CollectorRegistry()
jobs = Counter(
    "app_jobs", "Jobs the application finished, by result.", ["result"], registry=registry
)


async def shout(request: bytes) -> bytes:
    return request.upper()


async def resize(request: bytes) -> bytes:
    await anyio.sleep(random.uniform(0.001, 0.02))
    if random.random() < 0.05:
        raise ValueError("cannot resize that")
    return request[: len(request) // 2]


async def calls(client: AsyncClient) -> None:
    """The application's own work: requests to both services, and now and then to none."""
    for n in range(1_000_000_000):
        service = "fax" if n % 50 == 49 else random.choice(["shout", "resize"])
        try:
            await client.request(service, b"picture %d" % n)
            jobs.labels("done").inc()
        except (RemoteError, RequestRefused):
            jobs.labels("failed").inc()


async def main(metrics_port: int) -> None:
    async with (
        Broker(
            frontend="tcp://127.0.0.1:0",
            backend="tcp://127.0.0.1:0",
            mode="load-balancing",
            queue_timeout=0.5,
            metrics=registry,
        ) as broker,
        AsyncWorker(broker.endpoints.backend, shout, service="shout", mode="load-balancing"),
        AsyncWorker(
            broker.endpoints.backend, resize, service="resize", mode="load-balancing",
            concurrency=4,
        ),
        AsyncClient(broker.endpoints.frontend) as client,
    ):  # fmt: skip
        server, thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
        try:
            print(f"metrics at http://127.0.0.1:{server.server_port}/metrics", flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(calls, client)
                    async for _ in signals:
                        tg.cancel_scope.cancel()
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
    print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-port", type=int, default=9464, help="0: any free port")
    anyio.run(main, parser.parse_args().metrics_port)
