"""Named services, streamed replies and Majordomo, from the client's and the worker's side.

Everything goes through real sockets: zmqrelay's load-balancing broker (on ``inproc``, or on
``tcp`` where it restarts), plain REQ peers, and majortomo's own Majordomo broker in a thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TypeVar

import anyio
import pytest
import zmq
import zmq.asyncio
from majortomo.broker import Broker as MajortomoBroker

from peers import balancer_statistics, eventually, lb_broker, raw_socket
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    Broker,
    ClosedError,
    NoWorkers,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    RetryPolicy,
)
from zmqrelay._aio.service import ProtocolName
from zmqrelay.testing import LeakCheckingContext, relay_harness, running

pytestmark = pytest.mark.asyncio

CLIENT_PROTOCOLS: list[ProtocolName] = ["zmqrelay", "mdp-0.1", "mdp-0.2", "majortomo"]
MDP_PROTOCOLS: list[ProtocolName] = ["mdp-0.1", "mdp-0.2", "majortomo"]

T = TypeVar("T")


def client_for(
    context: LeakCheckingContext, protocol: ProtocolName = "zmqrelay", **options: object
) -> AsyncClient:
    options.setdefault("timeout", 5.0)
    return AsyncClient("inproc://f", context=context, protocol=protocol, **options)  # type: ignore[arg-type]


async def registered(broker: Broker, workers: int) -> None:
    await eventually(lambda: broker.statistics().scheduler.workers == workers)  # type: ignore[union-attr]


async def counting(request: bytes) -> AsyncIterator[bytes]:
    """Stream ``b"0"``, ``b"1"``, ... up to the number the request names."""
    for n in range(int(request)):
        yield b"%d" % n


async def collect(parts: AsyncIterator[T], into: list[T]) -> None:
    """Append every part of a stream to ``into`` (what came before a failure stays there)."""
    async for part in parts:
        into.append(part)


# -- services through zmqrelay's broker --------------------------------------------------------


async def test_two_services_side_by_side_never_mix(context: LeakCheckingContext) -> None:
    async def alpha(request: bytes) -> bytes:
        return b"alpha " + request

    async def beta(request: bytes) -> bytes:
        return b"beta " + request

    first = AsyncWorker("inproc://b", alpha, service="alpha", context=context, concurrency=4)
    second = AsyncWorker("inproc://b", beta, service=b"beta", context=context, concurrency=4)
    async with (
        running(lb_broker(context)) as broker,
        running(first),
        running(second),
        running(client_for(context)) as client,
    ):
        await registered(broker, 2)
        replies: dict[tuple[str, int], bytes] = {}

        async def ask(service: str, n: int) -> None:
            replies[service, n] = await client.request(service, b"%d" % n)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(ask, "alpha", n)
                tg.start_soon(ask, "beta", n)
        assert replies == {
            (service, n): b"%s %d" % (service.encode(), n)
            for service in ("alpha", "beta")
            for n in range(20)
        }
        assert broker.statistics().scheduler.services == 2  # type: ignore[union-attr]
    assert first.statistics().requests_received == 20
    assert second.statistics().requests_received == 20


async def test_a_service_is_named_by_str_or_bytes(context: LeakCheckingContext) -> None:
    async def upper(request: bytes) -> bytes:
        return request.upper()

    worker = AsyncWorker("inproc://b", upper, service="upper", context=context)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        assert await client.request("upper", b"str") == b"STR"
        assert await client.request(b"upper", b"bytes") == b"BYTES"
        with pytest.raises(TypeError):
            await client.request(42, b"neither")  # type: ignore[call-overload]


async def test_multipart_bodies_with_empty_and_binary_frames(context: LeakCheckingContext) -> None:
    async def backwards(frames: list[bytes]) -> list[bytes]:
        return [*reversed(frames), b"%d frames" % len(frames)]

    worker = AsyncWorker("inproc://b", backwards, frames=True, service="rev", context=context)
    body = [b"", bytes(range(256)), b"\x00", b"", b"x" * 100_000]
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        assert await client.request_frames("rev", body) == [*reversed(body), b"5 frames"]
        assert await client.request_frames(b"rev", [b""]) == [b"", b"1 frames"]


async def test_many_requests_in_flight_to_one_service(context: LeakCheckingContext) -> None:
    inside, most = [0], [0]

    async def echo(request: bytes) -> bytes:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        await anyio.sleep(0.005)  # holds its credit a moment: the work itself
        inside[0] -= 1
        return b"re " + request

    worker = AsyncWorker("inproc://b", echo, service="echo", context=context, concurrency=8)
    async with (
        running(lb_broker(context)) as broker,
        running(worker),
        running(client_for(context)) as client,
    ):
        await registered(broker, 1)
        replies: dict[int, bytes] = {}

        async def ask(n: int) -> None:
            replies[n] = await client.request("echo", b"%d" % n)

        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(ask, n)
        assert replies == {n: b"re %d" % n for n in range(50)}
        assert most[0] == 8
        stats = client.statistics()
        assert (stats.replies_received, stats.in_flight, stats.late_replies) == (50, 0, 0)


@pytest.mark.parametrize("protocol", CLIENT_PROTOCOLS)
async def test_an_unknown_service_ends_in_no_workers(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    async with running(lb_broker(context, queue_timeout=0.3)) as broker:
        async with running(client_for(context, protocol)) as client:
            started = anyio.current_time()
            with pytest.raises(NoWorkers, match="nobody"):
                await client.request("nobody", b"anyone?")
            assert 0.25 <= anyio.current_time() - started < 3
        assert broker.statistics().scheduler.refused == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", CLIENT_PROTOCOLS)
async def test_service_discovery_through_mmi(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    async def echo(request: bytes) -> bytes:
        return request

    worker = AsyncWorker("inproc://b", echo, service="echo", context=context)
    async with (
        running(lb_broker(context)) as broker,
        running(worker),
        running(client_for(context, protocol)) as client,
    ):
        await registered(broker, 1)
        assert await client.request("mmi.service", b"echo") == b"200"
        assert await client.request(b"mmi.service", b"nothing") == b"404"
        assert await client.request("mmi.other", b"echo") == b"501"
        assert broker.statistics().scheduler.services == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("service", ["mmi.service", b"mmi.mine", "mmi."])
@pytest.mark.parametrize("protocol", ["zmqrelay", "mdp-0.2"])
async def test_a_worker_may_not_offer_an_mmi_service(
    service: str | bytes, protocol: ProtocolName
) -> None:
    async def echo(request: bytes) -> bytes:
        return request

    with pytest.raises(ValueError, match=r"mmi\."):
        AsyncWorker("inproc://b", echo, service=service, protocol=protocol)


async def test_a_handler_error_is_a_remote_error(context: LeakCheckingContext) -> None:
    async def picky(request: bytes) -> bytes:
        if request == b"bad":
            raise KeyError("not this one")
        return request

    worker = AsyncWorker("inproc://b", picky, service="picky", context=context)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        with pytest.raises(RemoteError, match="not this one") as caught:
            await client.request("picky", b"bad")
        assert caught.value.type_name == "KeyError"
        assert await client.request("picky", b"good") == b"good"
    assert worker.statistics().handler_errors == 1


# -- streamed replies ----------------------------------------------------------------------------


async def test_a_stream_yields_every_part_in_order_and_other_calls_get_them_joined(
    context: LeakCheckingContext,
) -> None:
    worker = AsyncWorker("inproc://b", counting, service="count", context=context, concurrency=4)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        assert [part async for part in client.stream("count", b"20")] == [
            b"%d" % n for n in range(20)
        ]
        assert [part async for part in client.stream_frames("count", [b"3"])] == [
            [b"0"],
            [b"1"],
            [b"2"],
        ]
        # A caller that takes one reply gets the frames of every part, in order.
        assert await client.request_frames("count", [b"4"]) == [b"0", b"1", b"2", b"3"]
        # A one-part stream is an ordinary single-frame reply; more parts are more frames.
        assert await client.request("count", b"1") == b"0"
        with pytest.raises(RemoteProtocolError, match="request_frames"):
            await client.request("count", b"2")
        stats = client.statistics()
        assert (stats.in_flight, stats.late_replies, stats.malformed_replies) == (0, 0, 0)


async def test_a_stream_of_multipart_parts(context: LeakCheckingContext) -> None:
    async def pairs(frames: list[bytes]) -> AsyncIterator[list[bytes]]:
        for frame in frames:
            yield [frame, b""]

    worker = AsyncWorker("inproc://b", pairs, frames=True, service="pairs", context=context)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        parts = [part async for part in client.stream_frames("pairs", [b"a", b"\xff"])]
        assert parts == [[b"a", b""], [b"\xff", b""]]
        with pytest.raises(RemoteProtocolError, match="stream_frames"):
            await collect(client.stream("pairs", b"a"), [])


async def test_a_stream_with_no_parts_is_a_remote_error(context: LeakCheckingContext) -> None:
    worker = AsyncWorker("inproc://b", counting, service="count", context=context)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        parts: list[bytes] = []
        with pytest.raises(RemoteError, match="at least one part"):
            await collect(client.stream("count", b"0"), parts)
        assert parts == []
        with pytest.raises(RemoteError, match="at least one part"):
            await client.request("count", b"0")
        assert await client.request("count", b"1") == b"0"


async def test_a_handler_that_fails_midway_sends_its_parts_then_the_error(
    context: LeakCheckingContext,
) -> None:
    async def failing(request: bytes) -> AsyncIterator[bytes]:
        for n in range(int(request)):
            yield b"%d" % n
        raise RuntimeError("ran dry")

    worker = AsyncWorker("inproc://b", failing, service="dry", context=context)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        parts: list[bytes] = []
        with pytest.raises(RemoteError, match="ran dry") as caught:
            await collect(client.stream("dry", b"3"), parts)
        assert caught.value.type_name == "RuntimeError"
        assert parts == [b"0", b"1", b"2"]
        with pytest.raises(RemoteError, match="ran dry"):
            await client.request_frames("dry", [b"3"])
        assert client.statistics().in_flight == 0


async def test_leaving_a_stream_early_leaves_the_client_usable(
    context: LeakCheckingContext,
) -> None:
    release = anyio.Event()

    async def held(request: bytes) -> AsyncIterator[bytes]:
        if request == b"quick":
            yield b"quick"
            return
        yield b"0"
        yield b"1"  # part 0 goes now
        await release.wait()
        yield b"2"  # part 1 goes now
        yield b"3"  # part 2 goes now, then 3 as the last

    worker = AsyncWorker("inproc://b", held, service="held", context=context, concurrency=2)
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context)) as client,
    ):
        async for part in client.stream("held", b"long"):
            assert part == b"0"
            break
        # The abandoned stream is closed (by the event loop) and forgets its request.
        await eventually(lambda: client.statistics().in_flight == 0)
        assert await client.request("held", b"quick") == b"quick"
        release.set()
        await eventually(lambda: client.statistics().late_replies == 3)
        assert await client.request("held", b"quick") == b"quick"
        stats = client.statistics()
        assert (stats.replies_received, stats.foreign_replies, stats.malformed_replies) == (
            2,
            0,
            0,
        )
        # aclosing() ends it at once.
        async with contextlib.aclosing(client.stream("held", b"long")) as parts:
            async for part in parts:
                assert part == b"0"
                break
        assert client.statistics().in_flight == 0
        assert await client.request("held", b"quick") == b"quick"


@pytest.mark.parametrize("protocol", ["zmqrelay", "mdp-0.2", "majortomo"])
async def test_the_timeout_bounds_the_whole_stream(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    async def endless(request: bytes) -> AsyncIterator[bytes]:
        n = 0
        while True:
            yield b"%d" % n
            n += 1
            await anyio.sleep(0.02)  # a part every 20 ms, forever: paces the producer

    worker = AsyncWorker(
        "inproc://b", endless, service="endless", context=context, drain_timeout=0
    )
    async with (
        running(lb_broker(context)),
        running(worker),
        running(client_for(context, protocol)) as client,
    ):
        parts: list[bytes] = []
        started = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await collect(client.stream("endless", b"go", timeout=0.3), parts)
        assert 0.3 <= anyio.current_time() - started < 2
        assert len(parts) >= 3
        assert parts == [b"%d" % n for n in range(len(parts))]
        if protocol == "zmqrelay":
            # The deadline travelled with the request: the worker cancelled its handler.
            await eventually(lambda: worker.statistics().handler_errors == 1)
            assert client.statistics().timeouts == 1


async def test_a_plain_req_client_gets_a_stream_as_one_reply(
    context: LeakCheckingContext,
) -> None:
    # No service: the broker's default one, where plain requests go.
    worker = AsyncWorker("inproc://b", counting, mode="load-balancing", context=context)
    async with running(lb_broker(context)) as broker, running(worker):
        await registered(broker, 1)
        req = raw_socket(context, zmq.REQ, "inproc://f")
        try:
            with anyio.fail_after(5):
                await req.send(b"3")
                assert await req.recv_multipart() == [b"0", b"1", b"2"]
                await req.send(b"0")
                reply = await req.recv_multipart()
            assert len(reply) == 1
            assert reply[0].startswith(b"zmqrelay-error: LocalProtocolError: ")
        finally:
            req.close()
        async with running(client_for(context)) as client:
            assert [part async for part in client.stream(b"3")] == [b"0", b"1", b"2"]
            assert await client.request_frames([b"2"]) == [b"0", b"1"]


# -- Majordomo ---------------------------------------------------------------------------------


async def majordomo_handler(frames: list[bytes]) -> AsyncIterator[list[bytes]]:
    """``[b"count", n]`` streams n parts; ``[b"fail"]`` raises; else the frames backwards."""
    if frames[0] == b"count":
        for n in range(int(frames[1])):
            yield [b"%d" % n]
    elif frames[0] == b"fail":
        raise ValueError("as asked")
    else:
        yield [*reversed(frames)]


@pytest.mark.parametrize("client_protocol", CLIENT_PROTOCOLS)
@pytest.mark.parametrize("worker_protocol", [*MDP_PROTOCOLS, "zmqrelay"])
async def test_every_worker_protocol_serves_every_client_protocol(
    context: LeakCheckingContext, worker_protocol: ProtocolName, client_protocol: ProtocolName
) -> None:
    worker = AsyncWorker(
        "inproc://b", majordomo_handler, frames=True, service="svc",
        protocol=worker_protocol, context=context,
    )  # fmt: skip
    async with (
        running(lb_broker(context)) as broker,
        running(worker),
        running(client_for(context, client_protocol)) as client,
    ):
        await registered(broker, 1)
        body = [b"", b"\x00\x01", b"last"]
        assert await client.request_frames("svc", body) == [*reversed(body)]
        assert await client.request_frames("svc", [b"count", b"3"]) == [b"0", b"1", b"2"]
        parts = [part async for part in client.stream_frames("svc", [b"count", b"3"])]
        # Majordomo 0.1 has no PARTIAL: a 0.1 worker's parts, or a 0.1 client's, come joined.
        if "mdp-0.1" in (worker_protocol, client_protocol):
            assert parts == [[b"0", b"1", b"2"]]
        else:
            assert parts == [[b"0"], [b"1"], [b"2"]]
        with pytest.raises(RemoteError, match="as asked") as caught:
            await client.request_frames("svc", [b"fail"])
        assert caught.value.type_name == "ValueError"
        assert await client.request("svc", b"again") == b"again"


@pytest.mark.parametrize("protocol", MDP_PROTOCOLS)
async def test_a_majordomo_timeout_never_hands_its_late_reply_to_the_next_request(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    release = anyio.Event()

    async def slow_first(request: bytes) -> bytes:
        if request == b"slow":
            await release.wait()
        return b"re " + request

    worker = AsyncWorker("inproc://b", slow_first, service="svc", context=context)
    async with (
        running(lb_broker(context)) as broker,
        running(worker),
        running(client_for(context, protocol)) as client,
        anyio.create_task_group() as tg,
    ):
        await registered(broker, 1)
        with pytest.raises(RequestTimeout):
            await client.request("svc", b"slow", timeout=0.2)
        replies: list[bytes] = []

        async def ask() -> None:
            replies.append(await client.request("svc", b"fast"))

        tg.start_soon(ask)
        # The next request waits behind the slow one; only then is the slow one answered.
        await eventually(lambda: broker.statistics().scheduler.queued == 1)  # type: ignore[union-attr]
        release.set()
        await eventually(lambda: replies == [b"re fast"])
        assert worker.statistics().replies_sent == 2
        assert await client.request("svc", b"third") == b"re third"
        stats = client.statistics()
        assert (stats.requests_sent, stats.replies_received, stats.timeouts) == (3, 2, 1)
        assert stats.in_flight == 0


@pytest.mark.parametrize("protocol", ["mdp-0.2", "majortomo"])
async def test_leaving_a_majordomo_stream_early_never_misleads_the_next_request(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    release = anyio.Event()

    async def held(request: bytes) -> AsyncIterator[bytes]:
        yield request + b" 0"
        yield request + b" 1"  # part 0 goes now
        if request == b"long":
            await release.wait()
        yield request + b" 2"

    worker = AsyncWorker("inproc://b", held, service="held", context=context)
    async with (
        running(lb_broker(context)) as broker,
        running(worker),
        running(client_for(context, protocol)) as client,
        anyio.create_task_group() as tg,
    ):
        async with contextlib.aclosing(client.stream("held", b"long")) as parts:
            async for part in parts:
                assert part == b"long 0"
                break
        replies: list[list[bytes]] = []

        async def ask() -> None:
            replies.append(await client.request_frames("held", [b"next"]))

        tg.start_soon(ask)
        await eventually(lambda: broker.statistics().scheduler.queued == 1)  # type: ignore[union-attr]
        release.set()  # the rest of the abandoned stream goes to a socket that is gone
        await eventually(lambda: replies == [[b"next 0", b"next 1", b"next 2"]])


@pytest.mark.parametrize("protocol", MDP_PROTOCOLS)
async def test_a_majordomo_request_names_a_service(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    async with running(lb_broker(context)), running(client_for(context, protocol)) as client:
        with pytest.raises(ValueError, match="names a service"):
            await client.request(b"body only")
        with pytest.raises(ValueError, match="names a service"):
            await client.request_frames([b"body", b"only"])
        with pytest.raises(ValueError, match="names a service"):
            await collect(client.stream(b"body only"), [])
        with pytest.raises(ValueError, match="no redelivery"):
            await client.request("svc", b"body", redeliveries=1)
        assert client.statistics().requests_sent == 0


def free_tcp_endpoint() -> str:
    # majortomo's broker binds the address it is given; ask the system for a free port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@contextlib.contextmanager
def majortomo_broker() -> Iterator[str]:
    """majortomo's own broker, running in a thread with a context of its own."""
    endpoint = free_tcp_endpoint()
    broker_context = zmq.Context()
    broker_context.linger = 0
    broker = MajortomoBroker(
        bind=endpoint, heartbeat_interval=0.1, heartbeat_timeout=1.0, zmq_context=broker_context
    )
    thread = threading.Thread(target=broker.run, name="majortomo broker")
    thread.start()
    try:
        yield endpoint
    finally:
        broker.stop()  # type: ignore[no-untyped-call]
        thread.join(5)
        assert not thread.is_alive()
        broker_context.term()


async def test_through_majortomos_broker(context: LeakCheckingContext) -> None:
    inside, all_in = [0], anyio.Event()

    async def together(frames: list[bytes]) -> AsyncIterator[list[bytes]]:
        if frames[0] == b"together":
            inside[0] += 1
            if inside[0] == 3:
                all_in.set()
            await all_in.wait()  # three workers hold a request each at once
        async for part in majordomo_handler(frames):
            yield part

    with majortomo_broker() as endpoint:
        workers = [
            AsyncWorker(
                endpoint,
                together,
                frames=True,
                service="svc",
                protocol="majortomo",
                context=context,
                heartbeat_interval=0.1,
            )
            for _ in range(3)
        ]
        client = AsyncClient(endpoint, context=context, protocol="majortomo", timeout=5)
        async with contextlib.AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(running(worker))
            await stack.enter_async_context(running(client))
            assert await client.request_frames("svc", [b"a", b""]) == [b"", b"a"]
            parts = [part async for part in client.stream_frames("svc", [b"count", b"3"])]
            assert parts == [[b"0"], [b"1"], [b"2"]]
            with pytest.raises(RemoteError, match="as asked"):
                await client.request_frames("svc", [b"fail"])
            before = len(dealers(context))
            replies: dict[int, list[bytes]] = {}

            async def ask(n: int) -> None:
                replies[n] = await client.request_frames("svc", [b"together", b"%d" % n])

            async with anyio.create_task_group() as tg:
                for n in range(6):
                    tg.start_soon(ask, n)
            assert replies == {n: [b"%d" % n, b"together"] for n in range(6)}
            # Six requests in flight at once, each on a socket of its own (one was idle).
            assert len(dealers(context)) - before == 5
            assert sum(worker.statistics().replies_sent for worker in workers) == 9


def dealers(context: LeakCheckingContext) -> Sequence[zmq.asyncio.Socket]:
    return [sock for sock in context.opened if sock.type == zmq.DEALER]


async def test_a_majordomo_timeout_through_majortomos_broker(
    context: LeakCheckingContext,
) -> None:
    release = anyio.Event()

    async def slow_first(request: bytes) -> bytes:
        if request == b"slow":
            await release.wait()
        return b"re " + request

    with majortomo_broker() as endpoint:
        worker = AsyncWorker(
            endpoint, slow_first, service="svc", protocol="majortomo", context=context,
            heartbeat_interval=0.1,
        )  # fmt: skip
        client = AsyncClient(endpoint, context=context, protocol="majortomo", timeout=5)
        async with running(worker), running(client):
            with pytest.raises(RequestTimeout):
                await client.request("svc", b"slow", timeout=0.2)
            release.set()
            await eventually(lambda: worker.statistics().replies_sent == 1)
            assert await client.request("svc", b"fast") == b"re fast"


# -- registering again -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["zmqrelay", *MDP_PROTOCOLS])
async def test_a_service_worker_registers_again_with_a_restarted_broker(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    async def echo(request: bytes) -> bytes:
        return b"re " + request

    async with relay_harness(
        transport="tcp", context=context, mode="load-balancing", heartbeat_interval=0.1,
        drain_timeout=0, queue_timeout=3,
    ) as harness:  # fmt: skip
        await harness.start_worker(
            echo, service="svc", protocol=protocol, heartbeat_interval=0.1, linger=0
        )
        # A request sent before the client has seen its old connection drop is lost with it:
        # the client tries again (Lazy Pirate), as any client of a restarting broker must.
        client = await harness.connect_client(timeout=2, retry=RetryPolicy(attempts=3))
        assert await client.request("svc", b"before") == b"re before"
        await harness.restart_broker()
        # The request waits in the new broker's queue until the worker is back.
        assert await client.request("svc", b"after") == b"re after"
        assert balancer_statistics(harness.broker).scheduler.workers == 1


@pytest.mark.parametrize("protocol", MDP_PROTOCOLS)
async def test_a_majordomo_worker_told_disconnect_registers_again_on_a_new_connection(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    # The broker here is a bare ROUTER, so the test sees exactly what the worker sends.
    router = context.socket(zmq.ROUTER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        worker = AsyncWorker(
            f"tcp://127.0.0.1:{port}",
            _echo,
            service="svc",
            protocol=protocol,
            heartbeat_interval=0.05,
            context=context,
        )
        async with running(worker):
            with anyio.fail_after(5):
                first = await _next_ready(router)
                disconnect = {"mdp-0.1": b"\x05", "mdp-0.2": b"\x06", "majortomo": b"\x06"}
                header = [b"MDPW02"] if protocol == "mdp-0.2" else [b"", _HEADERS[protocol]]
                await router.send_multipart([first, *header, disconnect[protocol]])
                second = await _next_ready(router)
        # A new connection is a new peer for the ROUTER: a session of its own (specs 7, 18).
        assert second != first
    finally:
        router.close(linger=0)


_HEADERS = {"mdp-0.1": b"MDPW01", "majortomo": b"MDPW02"}


async def _echo(request: bytes) -> bytes:
    return request


async def _next_ready(router: zmq.asyncio.Socket) -> bytes:
    """The routing id of the next READY the ROUTER reads (heartbeats are skipped)."""
    while True:
        frames = await router.recv_multipart()
        command = frames[2] if frames[1] == b"MDPW02" else frames[3]
        if command == b"\x01":
            return frames[0]


@pytest.mark.parametrize("protocol", ["zmqrelay", *MDP_PROTOCOLS])
async def test_closing_a_client_fails_its_waiting_requests_and_streams_with_closed_error(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    both_started = anyio.Event()
    started = 0

    async def never(request: bytes) -> AsyncIterator[bytes]:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await anyio.sleep_forever()
        yield request

    workers = [
        AsyncWorker("inproc://b", never, service="never", context=context, drain_timeout=0)
        for _ in range(2)
    ]
    outcomes: list[str] = []
    async with running(lb_broker(context)) as broker, running(workers[0]), running(workers[1]):
        await registered(broker, 2)
        client = client_for(context, protocol)
        async with anyio.create_task_group() as tg:
            await tg.start(client.run)

            async def ask() -> None:
                try:
                    await client.request("never", b"x")
                except ClosedError as exc:
                    outcomes.append(f"request: {exc}")

            async def listen() -> None:
                try:
                    await collect(client.stream("never", b"y"), [])
                except ClosedError as exc:
                    outcomes.append(f"stream: {exc}")

            tg.start_soon(ask)
            tg.start_soon(listen)
            with anyio.fail_after(5):
                await both_started.wait()
            await client.aclose()
    assert sorted(outcomes) == [
        "request: the client closed before the reply came",
        "stream: the client closed before the reply came",
    ]


async def test_a_majordomo_client_keeps_at_most_max_sockets_requests_in_flight(
    context: LeakCheckingContext,
) -> None:
    in_hand = 0
    most = 0

    async def count_in_hand(request: bytes) -> bytes:
        nonlocal in_hand, most
        in_hand += 1
        most = max(most, in_hand)
        await anyio.sleep(0.01)
        in_hand -= 1
        return request

    workers = [
        AsyncWorker(
            "inproc://b", count_in_hand, service="svc", protocol="mdp-0.2", context=context
        )
        for _ in range(6)
    ]
    client = AsyncClient("inproc://f", context=context, protocol="mdp-0.2", max_sockets=2)
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(running(lb_broker(context)))
        for worker in workers:
            await stack.enter_async_context(running(worker))
        await registered(broker, 6)
        await stack.enter_async_context(running(client))
        replies: list[bytes] = []

        async def ask(n: int) -> None:
            replies.append(await client.request("svc", b"%d" % n))
            assert client.statistics().in_flight <= 2

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(ask, n)
    # Six workers were free, but two sockets carried all twelve requests, two at a time.
    assert sorted(replies) == sorted(b"%d" % n for n in range(12))
    assert most == 2
    assert len(dealers(context)) == 6 + 2


@pytest.mark.parametrize("protocol", MDP_PROTOCOLS)
async def test_a_majordomo_worker_names_its_service(protocol: ProtocolName) -> None:
    async def echo(request: bytes) -> bytes:
        return request

    with pytest.raises(ValueError, match="service="):
        AsyncWorker("inproc://b", echo, protocol=protocol)
    with pytest.raises(ValueError, match="service="):
        AsyncWorker("inproc://b", echo, service="", protocol=protocol)


@pytest.mark.parametrize("protocol", MDP_PROTOCOLS)
async def test_a_majordomo_worker_that_stops_gracefully_loses_no_request_another_can_serve(
    context: LeakCheckingContext, protocol: ProtocolName
) -> None:
    async def work(request: bytes) -> bytes:
        await anyio.sleep(0.01)
        return request

    def worker() -> AsyncWorker:
        return AsyncWorker("inproc://b", work, service="s", protocol=protocol, context=context)

    leaving, staying = worker(), worker()
    # Majordomo has no LEAVING: a request the broker sends the leaving worker between its
    # last reply and its DISCONNECT may go to the other one (the broker allows one retry).
    async with (
        running(lb_broker(context, redeliveries=1)) as broker,
        running(staying),
        running(leaving),
        running(client_for(context, "zmqrelay")) as client,
        anyio.create_task_group() as tg,
    ):
        await registered(broker, 2)
        replies: list[bytes] = []

        async def ask(n: int) -> None:
            replies.append(await client.request("s", b"%d" % n))

        for n in range(40):
            tg.start_soon(ask, n)
        await eventually(lambda: leaving.statistics().replies_sent >= 3)
        await leaving.aclose()
        await eventually(lambda: len(replies) == 40)
    assert sorted(replies) == sorted(b"%d" % n for n in range(40))
    assert leaving.statistics().refused_requests == 0  # it answered nothing with an error


async def _three_parts(request: bytes) -> AsyncIterator[bytes]:
    for n in range(3):
        yield request + b" %d" % n


@pytest.mark.parametrize("max_sockets", [1, 64])
async def test_majordomo_streams_share_the_socket_budget_across_tasks_and_early_exits(
    context: LeakCheckingContext, max_sockets: int
) -> None:
    workers = [
        AsyncWorker(
            "inproc://b", _three_parts, service="parts", protocol="mdp-0.2", context=context
        ),
        AsyncWorker("inproc://b", _echo, service="echo", protocol="mdp-0.2", context=context),
    ]
    client = AsyncClient(
        "inproc://f", context=context, protocol="mdp-0.2", timeout=5, max_sockets=max_sockets
    )
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(running(lb_broker(context)))
        for worker in workers:
            await stack.enter_async_context(running(worker))
        await registered(broker, 2)
        await stack.enter_async_context(running(client))
        if max_sockets > 1:  # a request from inside a stream's loop, in the same task
            async with contextlib.aclosing(client.stream("parts", b"x")) as parts:
                async for part in parts:
                    assert await client.request("echo", part) == part
        stream = client.stream("parts", b"y")
        async for _ in stream:
            break  # left early, without aclosing: the generator is finished elsewhere
        del stream
        replies: list[bytes] = []

        async def ask() -> None:  # from another task: the slot was given back
            replies.append(await client.request("echo", b"hi"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
        assert replies == [b"hi"]
