"""The client's batch API: ``request_many`` and ``replies``, on one broker and several, with
services, retries and Majordomo (which fall back to requests side by side)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import pytest_asyncio
import zmq

from peers import echo_handler, eventually, lb_broker, raw_socket
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    Broker,
    ClosedError,
    LocalProtocolError,
    RemoteError,
    RequestTimeout,
    RetryPolicy,
)
from zmqrelay.pytest_plugin import WorkerFactory
from zmqrelay.testing import BrokerHarness, LeakCheckingContext, relay_harness, running

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.timeout(30),
    pytest.mark.zmqrelay(frontend="inproc://f", backend="inproc://b", drain_timeout=0),
]


async def _shout(request: bytes) -> bytes:
    if request.startswith(b"bad"):
        raise ValueError(request.decode())
    return request.upper()


@pytest_asyncio.fixture
async def backend(
    relay_broker: BrokerHarness, context: LeakCheckingContext
) -> AsyncIterator[zmq.asyncio.Socket]:
    """A hand-driven DEALER worker: the test reads requests and answers them as it likes."""
    sock = raw_socket(context, zmq.DEALER, relay_broker.endpoints.backend)
    yield sock
    sock.close()


async def test_request_many_returns_the_replies_in_order(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(_shout, concurrency=16)
    bodies = [b"r%d" % n for n in range(2000)]
    assert await relay_client.request_many(bodies, window=64) == [b.upper() for b in bodies]
    assert await relay_client.request_many([]) == []
    assert relay_client.statistics().in_flight == 0


async def test_errors_in_place_or_the_first_raised(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(_shout)
    bodies = [b"a", b"bad 1", b"c", b"bad 2"]
    got = await relay_client.request_many(bodies, return_exceptions=True)
    assert got[0] == b"A"
    assert got[2] == b"C"
    assert isinstance(got[1], RemoteError)
    assert "bad 1" in str(got[1])
    assert isinstance(got[3], RemoteError)
    with pytest.raises(RemoteError, match="bad"):
        await relay_client.request_many(bodies)
    seen = {index: reply async for index, reply in relay_client.replies(bodies)}
    assert sorted(seen) == [0, 1, 2, 3]
    assert isinstance(seen[3], RemoteError)
    assert seen[0] == b"A"
    await eventually(lambda: relay_client.statistics().in_flight == 0)
    assert await relay_client.request(b"after") == b"AFTER"


async def test_replies_come_as_they_are_answered_within_the_window(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with AsyncClient("inproc://f", context=context, timeout=5) as client:
        bodies = [b"%d" % n for n in range(6)]
        order: list[tuple[int, bytes | Exception]] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for index, reply in client.replies(bodies, window=3):
                    order.append((index, reply))

            tg.start_soon(consume)
            first = [await backend.recv_multipart() for _ in range(3)]
            assert client.statistics().in_flight == 3, "no more than the window goes out"
            for request in reversed(first):
                await backend.send_multipart([*request[:-1], b"re " + request[-1]])
            rest = [await backend.recv_multipart() for _ in range(3)]
            for request in rest:
                await backend.send_multipart([*request[:-1], b"re " + request[-1]])
        assert [index for index, _ in order[:3]] == [2, 1, 0]
        assert sorted(order) == [(n, b"re %d" % n) for n in range(6)]


async def test_a_silent_worker_times_each_request_out(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with AsyncClient("inproc://f", context=context) as client:
        got = await client.request_many([b"x"] * 5, timeout=0.05, return_exceptions=True)
        assert all(isinstance(reply, RequestTimeout) for reply in got), got
        with pytest.raises(RequestTimeout):
            await client.request_many([b"y"], timeout=0.05)
        stats = client.statistics()
        assert (stats.timeouts, stats.in_flight) == (6, 0)


async def test_cancelling_the_consumer_mid_batch_leaves_nothing_behind(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with AsyncClient("inproc://f", context=context, timeout=5) as client:
        got: list[int] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for index, _ in client.replies([b"%d" % n for n in range(100)], window=10):
                    got.append(index)

            tg.start_soon(consume)
            requests = [await backend.recv_multipart() for _ in range(10)]
            await backend.send_multipart(requests[0])
            await eventually(lambda: got == [0])
            tg.cancel_scope.cancel()
        await eventually(lambda: client.statistics().in_flight == 0)
        # The nine in flight are forgotten: their replies now are late, and go nowhere.
        for request in requests[1:]:
            await backend.send_multipart(request)
        await eventually(lambda: client.statistics().late_replies == 9)
        async with anyio.create_task_group() as tg:

            async def answer() -> None:
                # The window was refilled (request 10) before the cancel: skip what came then.
                while (request := await backend.recv_multipart())[-1] != b"later":
                    pass
                await backend.send_multipart([*request[:-1], b"ok"])

            tg.start_soon(answer)
            assert await client.request_many([b"later"]) == [b"ok"]
        assert client.statistics().in_flight == 0


async def test_leaving_the_loop_early_sends_no_more(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(_shout)
    sent: list[int] = []

    def bodies() -> Iterator[bytes]:
        for n in range(1000):
            sent.append(n)
            yield b"%d" % n

    async with contextlib.aclosing(relay_client.replies(bodies(), window=4)) as replies:
        async for _ in replies:
            break
    assert len(sent) <= 5
    await eventually(lambda: relay_client.statistics().in_flight == 0)


async def test_a_body_that_is_not_bytes_is_refused_locally(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(_shout)
    with pytest.raises(LocalProtocolError):
        await relay_client.request_many([b"a", None])  # type: ignore[list-item]
    assert await relay_client.request(b"after") == b"AFTER"


async def test_a_closed_client_refuses_a_batch(context: LeakCheckingContext) -> None:
    client = AsyncClient("inproc://nowhere", context=context)
    with pytest.raises(ClosedError):
        await client.request_many([b"x"])
    with pytest.raises(ValueError, match="window"):
        await client.request_many([b"x"], window=0)


async def test_a_named_service_and_retries(context: LeakCheckingContext) -> None:
    served: Counter[str] = Counter()
    async with relay_harness(context=context, drain_timeout=0, mode="load-balancing") as harness:
        await harness.start_worker(echo_handler("w", served), service="echo")
        frontend = harness.endpoints.frontend
        async with AsyncClient(frontend, context=context, timeout=5) as client:
            bodies = [b"%d" % n for n in range(50)]
            assert await client.request_many(bodies, service="echo") == [
                b"World " + body for body in bodies
            ]
            policy = RetryPolicy(attempts=3, backoff=0.01)
            assert await client.request_many(bodies, service="echo", retry=policy) == [
                b"World " + body for body in bodies
            ]
    assert served["w"] == 100


async def test_several_brokers_share_a_batch(context: LeakCheckingContext) -> None:
    served: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as stack:
        frontends = []
        for n in range(2):
            broker = Broker(
                frontend="tcp://127.0.0.1:*",
                backend="tcp://127.0.0.1:*",
                context=context,
                drain_timeout=0,
            )
            await stack.enter_async_context(running(broker))
            frontends.append(broker.endpoints.frontend)
            handler = echo_handler(str(n), served)
            worker = AsyncWorker(broker.endpoints.backend, handler, context=context)
            await stack.enter_async_context(running(worker))
        client = AsyncClient(frontends, context=context, timeout=5)
        await stack.enter_async_context(running(client))
        await eventually(lambda: all(link.state == "up" for link in client.statistics().links))
        bodies = [b"%d" % n for n in range(200)]
        assert await client.request_many(bodies, window=20) == [b"World " + b for b in bodies]
        assert client.statistics().in_flight == 0
    assert served["0"] > 0
    assert served["1"] > 0


async def test_majordomo_falls_back_to_requests_side_by_side(context: LeakCheckingContext) -> None:
    served: Counter[str] = Counter()
    async with running(lb_broker(context)) as broker:
        worker = AsyncWorker(
            broker.endpoints.backend, echo_handler("w", served), service="echo", context=context
        )
        async with (
            running(worker),
            running(
                AsyncClient("inproc://f", context=context, protocol="mdp-0.2", timeout=5)
            ) as client,
        ):
            bodies = [b"%d" % n for n in range(30)]
            got = await client.request_many(bodies, service="echo", window=8)
            assert got == [b"World " + body for body in bodies]
            refused = await client.request_many(
                [b"x"], service="nothing", timeout=0.2, return_exceptions=True
            )
            assert len(refused) == 1
            assert isinstance(refused[0], Exception)
    assert served["w"] == 30
