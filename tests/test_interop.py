"""The seed's scenario through the Broker, with every pairing of plain and zmqrelay peers.

Plain pyzmq REQ and REP sockets stand for peers written in any language: they know nothing
of zmqrelay. Two clients send ten requests each, spread over three workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from peers import echo_handler, rep_worker, req_client
from zmqrelay import AsyncClient, AsyncWorker
from zmqrelay.pytest_plugin import BrokerFactory
from zmqrelay.testing import LeakCheckingContext

pytestmark = pytest.mark.asyncio

Request = Callable[[bytes], Awaitable[bytes]]


@asynccontextmanager
async def client_of(
    kind: str, context: LeakCheckingContext, endpoint: str
) -> AsyncIterator[Request]:
    if kind == "req":
        async with req_client(context, endpoint) as request:
            yield request
    else:
        async with AsyncClient(endpoint, context=context, timeout=10) as client:
            yield client.request


async def start_workers(
    kind: str,
    context: LeakCheckingContext,
    endpoint: str,
    served: Counter[str],
    stack: AsyncExitStack,
    count: int = 3,
) -> None:
    task_group = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(task_group.cancel_scope.cancel)
    for number in range(count):
        name = f"worker-{number}"
        if kind == "rep":
            await task_group.start(rep_worker, context, endpoint, name, served)
        else:
            worker = AsyncWorker(endpoint, echo_handler(name, served), context=context)
            await task_group.start(worker.run)


async def wait_until_all_serve(request: Request, served: Counter[str], count: int) -> None:
    """Send requests until every worker has served one: then all are connected."""
    with anyio.fail_after(10):
        while len(served) < count:
            assert await request(b"warm-up") == b"World warm-up"
    served.clear()


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
@pytest.mark.parametrize("worker_kind", ["rep", "async"])
@pytest.mark.parametrize("client_kind", ["req", "async"])
async def test_two_clients_ten_requests_three_workers(
    context: LeakCheckingContext,
    relay_broker_factory: BrokerFactory,
    transport: str,
    client_kind: str,
    worker_kind: str,
) -> None:
    served: Counter[str] = Counter()
    replies: dict[str, list[bytes]] = {}
    broker = await relay_broker_factory(transport=transport)
    async with AsyncExitStack() as stack:
        await start_workers(worker_kind, context, broker.endpoints.backend, served, stack)
        first = await stack.enter_async_context(
            client_of(client_kind, context, broker.endpoints.frontend)
        )
        second = await stack.enter_async_context(
            client_of(client_kind, context, broker.endpoints.frontend)
        )
        await wait_until_all_serve(first, served, 3)

        async def run_client(name: str, request: Request) -> None:
            replies[name] = [await request(b"Hello %d" % n) for n in range(10)]

        async with anyio.create_task_group() as clients:
            clients.start_soon(run_client, "A", first)
            clients.start_soon(run_client, "B", second)

    expected = [b"World Hello %d" % n for n in range(10)]
    assert replies == {"A": expected, "B": expected}
    assert sum(served.values()) == 20
    assert len(served) == 3
    # The backend hands requests to connected workers in turn.
    assert max(served.values()) - min(served.values()) <= 1, served
