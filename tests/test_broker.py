from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import zmq

from peers import echo_handler, eventually, raw_socket, relay_statistics, req_client
from zmqrelay import AsyncClient, AsyncWorker, Broker, ClosedError, EndpointError, Endpoints
from zmqrelay._aio.broker import Engine
from zmqrelay._aio.service import Mode
from zmqrelay.testing import LeakCheckingContext

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["libzmq", "python"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The tests that hold for both engines run with each."""
    return request.param  # type: ignore[no-any-return]


def tcp_port(endpoint: str) -> int:
    assert endpoint.startswith("tcp://127.0.0.1:")
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize("wildcard", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:*", "tcp://*:0"])
async def test_reports_the_ports_it_really_bound(
    context: LeakCheckingContext, engine: Engine, wildcard: str
) -> None:
    broker = Broker(frontend=wildcard, backend=wildcard, context=context, engine=engine)
    async with anyio.create_task_group() as tg:
        endpoints = await tg.start(broker.run)
        assert endpoints == broker.endpoints == await broker.wait_ready()
        assert tcp_port(endpoints.frontend) > 0
        assert tcp_port(endpoints.backend) not in (0, tcp_port(endpoints.frontend))
        tg.cancel_scope.cancel()


async def test_endpoints_are_unknown_before_binding(context: LeakCheckingContext) -> None:
    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context)
    with pytest.raises(ClosedError, match="not bound"):
        _ = broker.endpoints
    assert repr(broker) == "<Broker relay libzmq new frontend='inproc://f' backend='inproc://b'>"


async def test_cancellation_closes_both_sockets(
    context: LeakCheckingContext, engine: Engine
) -> None:
    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context, engine=engine)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            await tg.start(broker.run)
            assert "running" in repr(broker)
            scope.cancel()
    assert "closed" in repr(broker)
    assert context.opened
    assert all(sock.closed for sock in context.opened)


async def test_runs_only_once(context: LeakCheckingContext, engine: Engine) -> None:
    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context, engine=engine)
    async with broker:
        with pytest.raises(ClosedError, match="running"):
            await broker.run()
    with pytest.raises(ClosedError, match="closed"):
        await broker.run()


async def test_aclose_before_start_means_it_never_starts(context: LeakCheckingContext) -> None:
    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context)
    await broker.aclose()
    await broker.aclose()
    with pytest.raises(ClosedError):
        await broker.run()
    assert context.opened == []


async def test_address_in_use_is_an_endpoint_error(
    context: LeakCheckingContext, engine: Engine
) -> None:
    async with Broker(
        frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0", context=context, engine=engine
    ) as first:
        taken = first.endpoints.frontend
        second = Broker(
            frontend="tcp://127.0.0.1:0", backend=taken, context=context, engine=engine
        )
        with pytest.raises(EndpointError, match="cannot bind") as caught:
            await second.run()
        assert caught.value.errno == errno.EADDRINUSE
        assert isinstance(caught.value, OSError)
    assert "closed" in repr(second)


@pytest.mark.parametrize(
    ("mode", "engine"), [("relay", "libzmq"), ("relay", "python"), ("load-balancing", "python")]
)
@pytest.mark.parametrize("stop", ["aclose", "cancel"])
@pytest.mark.parametrize("transport", ["tcp", "ipc", "inproc"])
async def test_its_endpoints_are_free_as_soon_as_it_has_stopped(
    context: LeakCheckingContext,
    engine: Engine,
    mode: Mode,
    stop: str,
    transport: str,
    tmp_path: Path,
) -> None:
    """A broker closed (or cancelled) and started again at once, on the same endpoints: no
    bind ever finds them still taken (before, 14 in 40 did on tcp with the libzmq engine)."""
    endpoints = {
        "tcp": ("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
        "ipc": (f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b"),
        "inproc": ("inproc://f", "inproc://b"),
    }[transport]
    for _ in range(20):
        broker = Broker(
            frontend=endpoints[0],
            backend=endpoints[1],
            context=context,
            engine=engine,
            mode=mode,
            drain_timeout=0,
        )
        if stop == "aclose":
            async with broker:
                endpoints = broker.endpoints
        else:
            async with anyio.create_task_group() as tg:
                endpoints = await tg.start(broker.run)
                tg.cancel_scope.cancel()


async def test_invalid_endpoint_is_an_endpoint_error(context: LeakCheckingContext) -> None:
    with pytest.raises(EndpointError, match="nonsense"):
        async with Broker(frontend="nonsense://x", backend="inproc://b", context=context):
            pass


async def test_requests_wait_for_a_worker(context: LeakCheckingContext, engine: Engine) -> None:
    """With no worker connected, the broker holds requests instead of dropping them."""
    served: Counter[str] = Counter()
    async with (
        Broker(
            frontend="inproc://f", backend="inproc://b", context=context, engine=engine
        ) as broker,
        AsyncClient(broker.endpoints.frontend, context=context, timeout=10) as client,
        anyio.create_task_group() as tg,
    ):
        replies: list[bytes] = []

        async def ask() -> None:
            replies.append(await client.request(b"early"))

        tg.start_soon(ask)
        await eventually(lambda: client.statistics().requests_sent == 1)
        await tg.start(
            AsyncWorker(broker.endpoints.backend, echo_handler("w", served), context=context).run
        )
        await eventually(lambda: bool(replies))
        assert replies == [b"World early"]
        tg.cancel_scope.cancel()


async def test_pipelined_messages_all_arrive(context: LeakCheckingContext, engine: Engine) -> None:
    count = 5000
    # Fewer in flight than a queue holds (1000): a ROUTER drops replies to a client whose
    # queue is full rather than stall every other client (counted as congested).
    window = anyio.Semaphore(500)
    received: list[list[bytes]] = []
    async with Broker(
        frontend="inproc://f", backend="inproc://b", context=context, engine=engine
    ) as broker:
        client = raw_socket(context, zmq.DEALER, broker.endpoints.frontend)
        worker = raw_socket(context, zmq.DEALER, broker.endpoints.backend)

        async def send() -> None:
            for n in range(count):
                await window.acquire()
                await client.send_multipart([b"", b"%d" % n])

        async def echo() -> None:
            for _ in range(count):
                await worker.send_multipart(await worker.recv_multipart())

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                tg.start_soon(echo)
                for _ in range(count):
                    received.append(await client.recv_multipart())
                    window.release()
        finally:
            client.close()
            worker.close()
        assert received == [[b"", b"%d" % n] for n in range(count)]
        stats = relay_statistics(broker)
        assert stats.engine == engine
        if engine == "python":
            assert (stats.requests_forwarded, stats.replies_forwarded) == (count, count)
        else:  # frames: routing id, delimiter, body
            assert (stats.request_frames, stats.reply_frames) == (3 * count, 3 * count)


async def test_malformed_and_unroutable_messages_are_dropped_and_counted(
    context: LeakCheckingContext,
) -> None:
    served: Counter[str] = Counter()
    async with (
        Broker(
            frontend="inproc://f", backend="inproc://b", context=context, engine="python"
        ) as broker,
        AsyncWorker(broker.endpoints.backend, echo_handler("w", served), context=context),
        AsyncClient(broker.endpoints.frontend, context=context, timeout=5) as client,
    ):
        rogue_client = raw_socket(context, zmq.DEALER, broker.endpoints.frontend)
        rogue_worker = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
        try:
            await rogue_client.send_multipart([b"no delimiter"])
            await rogue_client.send_multipart([b""])  # delimiter but no body
            await rogue_client.send_multipart([b"x", b""])
            await rogue_worker.send_multipart([b"nobody", b"", b"reply"])  # unknown client
            await rogue_worker.send_multipart([b"garbage"])
            assert await client.request(b"still fine") == b"World still fine"
            await eventually(lambda: broker.statistics().malformed_replies == 1)
        finally:
            rogue_client.close()
            rogue_worker.close()
    stats = broker.statistics()
    assert stats.malformed_requests == 3
    assert stats.unroutable_replies == 1
    assert stats.malformed_replies == 1
    assert stats.requests_forwarded == stats.replies_forwarded == 1


async def test_reply_to_a_client_that_left_is_counted(context: LeakCheckingContext) -> None:
    async with Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        engine="python",
        drain_timeout=0,
    ) as broker:
        worker = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
        try:
            # A stale client id, as a worker would echo it after the client went away.
            client = raw_socket(context, zmq.REQ, broker.endpoints.frontend)
            await client.send(b"ask")
            request = await worker.recv_multipart()
            client.close()
            await eventually(lambda: _unroutable_after(broker, worker, request))
        finally:
            worker.close()


def _unroutable_after(broker: Broker, worker: zmq.asyncio.Socket, request: list[bytes]) -> bool:
    worker.send_multipart([*request[:-1], b"late"], zmq.NOBLOCK)
    return (broker.statistics().unroutable_replies or 0) > 0


async def test_graceful_close_drains_replies_in_flight(
    context: LeakCheckingContext, engine: Engine
) -> None:
    release = anyio.Event()
    entered = anyio.Event()

    async def slow(request: bytes) -> bytes:
        entered.set()
        await release.wait()
        return request

    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        engine=engine,
        drain_timeout=10,
    )
    async with (
        anyio.create_task_group() as tg,
        AsyncClient("inproc://f", context=context, timeout=10) as client,
    ):
        await tg.start(broker.run)
        await tg.start(AsyncWorker("inproc://b", slow, context=context).run)
        replies: list[bytes] = []

        async def ask() -> None:
            replies.append(await client.request(b"in flight"))

        tg.start_soon(ask)
        await entered.wait()
        tg.start_soon(broker.aclose)
        await eventually(lambda: "draining" in repr(broker))
        release.set()
        await eventually(lambda: "closed" in repr(broker))
        assert replies == [b"in flight"]
        tg.cancel_scope.cancel()


async def test_drain_is_bounded_by_its_timeout(
    context: LeakCheckingContext, engine: Engine
) -> None:
    async with (
        Broker(
            frontend="inproc://f",
            backend="inproc://b",
            context=context,
            engine=engine,
            drain_timeout=0.05,
        ) as broker,
        req_client(context, "inproc://f") as request,
        anyio.create_task_group() as tg,
    ):
        silent = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
        try:
            tg.start_soon(_ask, request, b"never answered")
            await silent.recv_multipart()
            with anyio.fail_after(5):
                await broker.aclose()
        finally:
            silent.close()
        tg.cancel_scope.cancel()


async def test_oversized_requests_are_refused(
    context: LeakCheckingContext, engine: Engine
) -> None:
    served: Counter[str] = Counter()
    async with (
        Broker(
            frontend="tcp://127.0.0.1:0",
            backend="inproc://b",
            context=context,
            engine=engine,
            max_message_size=1024,
        ) as broker,
        AsyncWorker("inproc://b", echo_handler("w", served), context=context),
        AsyncClient(broker.endpoints.frontend, context=context, timeout=5) as client,
    ):
        hog = raw_socket(context, zmq.DEALER, broker.endpoints.frontend)
        try:
            await hog.send_multipart([b"", b"x" * 4096])
            assert await client.request(b"small") == b"World small"
        finally:
            hog.close()
    assert served["w"] == 1


async def test_statistics_and_endpoints_are_named_tuples() -> None:
    assert Endpoints("a", "b").frontend == "a"
    stats = relay_statistics(Broker(frontend="inproc://f", backend="inproc://b"))
    assert (stats.mode, stats.engine, stats.requests_forwarded, stats.request_frames) == (
        "relay",
        "libzmq",
        None,
        0,
    )
    stats = relay_statistics(Broker(frontend="inproc://f", backend="inproc://b", engine="python"))
    assert (stats.engine, stats.requests_forwarded, stats.request_frames) == ("python", 0, None)


async def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Broker(frontend="inproc://f", backend="inproc://b", batch_size=0)


async def _ask(request: Callable[[bytes], Awaitable[bytes]], body: bytes) -> None:
    await request(body)


async def test_a_dropped_reply_does_not_hold_up_the_drain(context: LeakCheckingContext) -> None:
    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        engine="python",
        drain_timeout=60,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        worker = raw_socket(context, zmq.DEALER, "inproc://b")
        try:
            client = raw_socket(context, zmq.REQ, "inproc://f")
            await client.send(b"ask")
            request = await worker.recv_multipart()
            client.close()
            await eventually(lambda: _unroutable_after(broker, worker, request))
            with anyio.fail_after(5):
                await broker.aclose()
        finally:
            worker.close()


async def test_a_request_no_worker_took_is_counted_when_the_broker_closes(
    context: LeakCheckingContext,
) -> None:
    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        engine="python",
        drain_timeout=0,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        async with req_client(context, "inproc://f") as request:
            tg.start_soon(_ask, request, b"nobody serves this")
            await eventually(lambda: broker.statistics().requests_held == 1)
            await broker.aclose()
        tg.cancel_scope.cancel()
    assert broker.statistics().undelivered_requests == 1


async def test_wait_ready_fails_when_the_broker_closes_before_it_is_ready(
    context: LeakCheckingContext,
) -> None:
    taken = Broker(frontend="tcp://127.0.0.1:0", backend="inproc://b", context=context)
    async with taken:
        broker = Broker(frontend=taken.endpoints.frontend, backend="inproc://x", context=context)
        async with anyio.create_task_group() as tg:

            async def run_and_fail() -> None:
                with pytest.raises(EndpointError):
                    await broker.run()

            tg.start_soon(run_and_fail)
            with pytest.raises(ClosedError, match="before it was ready"):
                await broker.wait_ready()


async def test_libzmq_engine_drain_waits_for_replies_with_more_frames_than_requests(
    context: LeakCheckingContext,
) -> None:
    releases = [anyio.Event() for _ in range(4)]

    async def fat(frames: list[bytes]) -> list[bytes]:
        await releases[int(frames[0])].wait()
        return [b"1", b"2", b"3", frames[0]]

    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context, drain_timeout=10)
    outcomes: list[list[bytes]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        await tg.start(
            AsyncWorker("inproc://b", fat, frames=True, context=context, concurrency=4).run
        )
        async with AsyncClient("inproc://f", context=context, timeout=10) as client:

            async def ask(n: int) -> None:
                outcomes.append(await client.request_frames([b"%d" % n]))

            async with anyio.create_task_group() as asks:
                for n in range(4):
                    asks.start_soon(ask, n)
                await eventually(lambda: relay_statistics(broker).request_frames == 16)
                tg.start_soon(broker.aclose)
                await eventually(lambda: "draining" in repr(broker))
                # One reply at a time, seven frames each: after three, as many frames came
                # back as went out, yet one reply is still to come.
                for n, release in enumerate(releases, start=1):
                    release.set()
                    await eventually(partial(_reply_frames_reach, broker, 7 * n))
        tg.cancel_scope.cancel()
    assert sorted(outcome[-1] for outcome in outcomes) == [b"0", b"1", b"2", b"3"]


@pytest.mark.parametrize("reply", [[b"short"], [b"a", b"b"]])
async def test_libzmq_engine_drain_ends_after_replies_with_fewer_frames_than_requests(
    context: LeakCheckingContext, reply: list[bytes]
) -> None:
    """A reply shorter than its request (an error reply, say) does not hold up the drain."""

    async def short(frames: list[bytes]) -> list[bytes]:
        return reply

    broker = Broker(frontend="inproc://f", backend="inproc://b", context=context, drain_timeout=30)
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        await tg.start(AsyncWorker("inproc://b", short, frames=True, context=context).run)
        async with AsyncClient("inproc://f", context=context, timeout=10) as client:
            assert await client.request_frames([b"a", b"b", b"c"]) == reply
        with anyio.fail_after(5):  # not the 30 s of the drain timeout
            await broker.aclose()
        tg.cancel_scope.cancel()


def _reply_frames_reach(broker: Broker, frames: int) -> bool:
    return relay_statistics(broker).reply_frames == frames


async def test_many_brokers_do_not_exhaust_the_thread_pool(context: LeakCheckingContext) -> None:
    """Each libzmq-engine broker holds a thread for its life, outside anyio's shared pool."""
    async with anyio.create_task_group() as tg:
        brokers = [
            Broker(frontend=f"inproc://f{n}", backend=f"inproc://b{n}", context=context)
            for n in range(45)
        ]
        for broker in brokers:
            await tg.start(broker.run)
        served: Counter[str] = Counter()
        async with (
            AsyncWorker("inproc://b44", echo_handler("w", served), context=context),
            AsyncClient("inproc://f44", context=context, timeout=5) as client,
        ):
            assert await client.request(b"last") == b"World last"
            assert await anyio.to_thread.run_sync(lambda: "the shared pool still works")
        tg.cancel_scope.cancel()
