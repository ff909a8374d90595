"""Load-balancing mode through real sockets: guide and zmqrelay workers, refusals, liveness."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import pytest
import pytest_asyncio
import zmq
import zmq.asyncio

from peers import balancer_statistics, eventually, lb_broker, raw_socket, req_client
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    Broker,
    BrokerBusy,
    NoWorkers,
    RemoteError,
    RequestTimeout,
    WorkerDied,
    is_redelivery,
    time_left,
)
from zmqrelay._core import lbwire
from zmqrelay._core.tag import Status
from zmqrelay.testing import LeakCheckingContext, relay_harness, running

pytestmark = pytest.mark.asyncio


async def guide_worker(
    context: LeakCheckingContext,
    name: bytes,
    served: list[bytes],
    hold: anyio.Event | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The ZeroMQ guide's load-balancing worker: a REQ socket that says READY first."""
    sock = raw_socket(context, zmq.REQ, "inproc://b")
    try:
        await sock.send(b"READY")
        task_status.started()
        while True:
            reply_to, empty, request = await sock.recv_multipart()
            served.append(name)
            if hold is not None:
                await hold.wait()
            await sock.send_multipart([reply_to, empty, request + b" by " + name])
    finally:
        sock.close()


@pytest_asyncio.fixture
async def client(context: LeakCheckingContext) -> AsyncIterator[AsyncClient]:
    async with running(AsyncClient("inproc://f", context=context, timeout=10)) as started:
        yield started


async def test_guide_workers_serve_and_a_busy_one_gets_no_more(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    served: list[bytes] = []
    hold = anyio.Event()
    async with running(lb_broker(context)) as broker, anyio.create_task_group() as tg:
        await tg.start(guide_worker, context, b"slow", served, hold)
        await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
        first: list[bytes] = []

        async def ask_slow() -> None:
            first.append(await client.request(b"first"))

        tg.start_soon(ask_slow)
        await eventually(lambda: served == [b"slow"])
        await tg.start(guide_worker, context, b"fast", served)
        await eventually(lambda: broker.statistics().scheduler.workers == 2)  # type: ignore[union-attr]
        # The slow worker holds one request: every other goes to the fast one.
        replies = [await client.request(b"%d" % n) for n in range(5)]
        assert replies == [b"%d by fast" % n for n in range(5)]
        hold.set()
        await eventually(lambda: first == [b"first by slow"])
        tg.cancel_scope.cancel()


async def test_a_full_queue_refuses_at_once(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async with running(lb_broker(context, queue_limit=0)) as broker:
        with pytest.raises(BrokerBusy):
            await client.request(b"no room")
        async with req_client(context, "inproc://f") as plain:
            assert (await plain(b"no room")).startswith(b"zmqrelay-error: BrokerBusy: ")
        assert broker.statistics().scheduler.refused == 2  # type: ignore[union-attr]


async def test_no_worker_in_time_is_a_typed_error(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async with running(lb_broker(context, queue_timeout=0.05)):
        with anyio.fail_after(5), pytest.raises(NoWorkers):
            await client.request(b"anyone?")


async def zrw_worker(
    context: LeakCheckingContext, routing_id: bytes, credits: int
) -> zmq.asyncio.Socket:
    sock = raw_socket(context, zmq.DEALER, "inproc://b", routing_id=routing_id)
    await sock.send_multipart(lbwire.encode_ready(credits))
    # The broker acknowledges a registration with a heartbeat at once.
    assert await sock.recv_multipart() == [lbwire.PROTOCOL + lbwire.HEARTBEAT]
    return sock


@pytest.mark.timeout(20)
async def test_a_ready_answered_by_a_request_registers_the_worker_at_once(
    context: LeakCheckingContext,
) -> None:
    """A ZRW broker may answer READY with work rather than a heartbeat: the worker is registered
    then, and heartbeats one interval later, not two (it waited out the READY's interval)."""
    interval = 0.5
    router = raw_socket(context, zmq.ROUTER, "tcp://127.0.0.1:*", bind=True)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    async def echo(request: bytes) -> bytes:
        return request

    worker = AsyncWorker(
        endpoint, echo, mode="load-balancing", heartbeat_interval=interval, context=context
    )
    try:
        async with running(worker):
            identity, *ready = await router.recv_multipart()
            assert ready[0][:5] == lbwire.PROTOCOL + lbwire.READY
            answered = anyio.current_time()
            header = lbwire.REQUEST_HEADER.pack(
                lbwire.PROTOCOL, lbwire.REQUEST, b"12345678", 0, lbwire.NO_TIMEOUT
            )
            await router.send_multipart([identity, header, b"work"])
            await router.send_multipart([identity, lbwire.PROTOCOL + lbwire.HEARTBEAT])
            while True:
                _, *frames = await router.recv_multipart()
                if frames == [lbwire.PROTOCOL + lbwire.HEARTBEAT]:
                    break
                assert frames[0][4:5] == lbwire.REPLY  # the answer to the work
            assert anyio.current_time() - answered < 1.6 * interval
    finally:
        router.close(linger=0)


async def test_zmqrelay_workers_get_heartbeats_and_a_silent_one_dies(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    broker = lb_broker(context, heartbeat_interval=0.05, liveness=3, redeliveries=1)
    async with running(broker), anyio.create_task_group() as tg:
        silent = await zrw_worker(context, b"silent", credits=1)
        try:
            await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
            answers: list[bytes] = []

            async def ask() -> None:
                answers.append(await client.request(b"survive"))

            tg.start_soon(ask)
            request = await silent.recv_multipart()
            assignment = lbwire.decode_from_broker(request)
            assert isinstance(assignment, lbwire.Assignment)
            assert not assignment.redelivery
            assert await silent.recv_multipart() == [lbwire.PROTOCOL + lbwire.HEARTBEAT]
            # It never answers nor beats: it dies, and the request goes to the next worker.
            healthy = await zrw_worker(context, b"healthy", credits=1)
            try:
                with anyio.fail_after(5):
                    while (again := lbwire.decode_from_broker(await healthy.recv_multipart())) == (
                        "heartbeat"
                    ):
                        await healthy.send_multipart([lbwire.PROTOCOL + lbwire.HEARTBEAT])
                assert isinstance(again, lbwire.Assignment)
                assert again.redelivery
                await healthy.send_multipart(
                    lbwire.encode_reply(again.reply_to, Status.OK, [b"saved"])
                )
                await eventually(lambda: answers == [b"saved"])
            finally:
                healthy.close()
            assert broker.statistics().scheduler.dead_workers == 1  # type: ignore[union-attr]
        finally:
            silent.close()
        tg.cancel_scope.cancel()


async def test_a_worker_of_zrw1_the_first_version_is_served_in_it(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    # An AsyncWorker of an earlier zmqrelay speaks ZRW1: a frame for each field.
    zrw1 = [b"", b"ZRW1"]
    async with running(lb_broker(context)):
        worker = raw_socket(context, zmq.DEALER, "inproc://b")
        try:
            await worker.send_multipart([*zrw1, lbwire.READY, b"1"])
            assert await worker.recv_multipart() == [*zrw1, lbwire.HEARTBEAT]
            async with anyio.create_task_group() as tg:
                replies: list[bytes] = []

                async def ask() -> None:
                    replies.append(await client.request(b"old", timeout=5))

                tg.start_soon(ask)
                with anyio.fail_after(5):
                    request = await worker.recv_multipart()
                assert request[:3] == [*zrw1, lbwire.REQUEST]
                reply_to, flags, milliseconds, body = request[3:]
                assert (flags, body) == (b"\x00", b"old")
                assert 0 < int(milliseconds) <= 5000
                await worker.send_multipart([*zrw1, lbwire.REPLY, reply_to, b"\x00", b"OLD"])
            assert replies == [b"OLD"]
        finally:
            worker.close()


async def test_without_redeliveries_a_dead_workers_request_ends_in_worker_died(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async with running(lb_broker(context, heartbeat_interval=0.05, liveness=2)):
        silent = await zrw_worker(context, b"silent", credits=1)
        try:
            with anyio.fail_after(5), pytest.raises(WorkerDied):
                await client.request(b"lost")
        finally:
            silent.close()


async def test_error_replies_and_protocol_violations(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async with running(lb_broker(context)) as broker, anyio.create_task_group() as tg:
        worker = await zrw_worker(context, b"w", credits=2)
        try:
            failures: list[RemoteError] = []

            async def ask() -> None:
                try:
                    await client.request(b"fail please")
                except RemoteError as exc:
                    failures.append(exc)

            tg.start_soon(ask)
            assignment = lbwire.decode_from_broker(await worker.recv_multipart())
            assert isinstance(assignment, lbwire.Assignment)
            await worker.send_multipart(
                lbwire.encode_reply(assignment.reply_to, Status.ERROR, [b"ValueError", b"no"])
            )
            await eventually(lambda: len(failures) == 1)
            assert failures[0].type_name == "ValueError"
            # A reply to a request it was never given is counted; an unknown command is a
            # protocol violation, and the worker is forgotten (and told so).
            await worker.send_multipart(lbwire.encode_reply(bytes(8), Status.OK, [b"?"]))
            await worker.send_multipart([lbwire.PROTOCOL + b"\x7f"])
            assert await worker.recv_multipart() == [lbwire.PROTOCOL + lbwire.DISCONNECT]
            stats = broker.statistics()
            assert stats.malformed_replies == 2
            assert stats.scheduler.workers == 0  # type: ignore[union-attr]
        finally:
            worker.close()
        tg.cancel_scope.cancel()


async def test_async_workers_register_their_concurrency_as_credits(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    inside, most = [0], [0]

    async def careful(request: bytes) -> bytes:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        await anyio.sleep(0.01)
        inside[0] -= 1
        if request == b"bad":
            raise ValueError("not this one")
        return request.upper()

    worker = AsyncWorker(
        "inproc://b", careful, context=context, concurrency=3, mode="load-balancing"
    )
    async with running(lb_broker(context)) as broker, running(worker):
        await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
        replies: list[bytes] = []
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(_collect, replies, client, b"r%d" % n)
        assert sorted(replies) == sorted(b"R%d" % n for n in range(10))
        assert most[0] == 3
        with pytest.raises(RemoteError, match="ValueError: not this one"):
            await client.request(b"bad")
    assert worker.statistics().replies_sent == 11


async def _collect(replies: list[bytes], client: AsyncClient, body: bytes) -> None:
    replies.append(await client.request(body))


async def test_a_leaving_worker_gets_no_new_requests(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async def echo(request: bytes) -> bytes:
        return request

    worker = AsyncWorker("inproc://b", echo, context=context, mode="load-balancing")
    async with running(lb_broker(context, queue_timeout=0.05)) as broker:
        async with running(worker):
            await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
            assert await client.request(b"hi") == b"hi"
        await eventually(lambda: broker.statistics().scheduler.workers == 0)  # type: ignore[union-attr]
        with pytest.raises(NoWorkers):
            await client.request(b"anyone left?")


async def test_workers_register_again_with_a_restarted_broker() -> None:
    async def echo(request: bytes) -> bytes:
        return request

    async with relay_harness(
        transport="ipc", drain_timeout=0, mode="load-balancing", heartbeat_interval=0.05
    ) as harness:
        await harness.start_worker(echo, mode="load-balancing", heartbeat_interval=0.05)
        client = await harness.connect_client()
        assert await client.request(b"before") == b"before"
        await harness.restart_broker()
        with anyio.fail_after(10):
            while True:
                try:
                    assert await client.request(b"after", timeout=0.5) == b"after"
                    break
                except (NoWorkers, RequestTimeout):
                    continue
        assert balancer_statistics(harness.broker).scheduler.workers == 1


async def test_the_clients_timeout_reaches_the_worker_and_bounds_its_handler(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    seen: list[float | None] = []

    async def stubborn(request: bytes) -> bytes:
        seen.append(time_left())
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    worker = AsyncWorker("inproc://b", stubborn, context=context, mode="load-balancing")
    async with running(lb_broker(context)) as broker, running(worker):
        await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
        with pytest.raises(RequestTimeout):
            await client.request(b"slow", timeout=0.2)
        # The worker cancelled its handler at the deadline and answered, freeing its credit.
        await eventually(lambda: worker.statistics().handler_errors == 1)
        await eventually(lambda: broker.statistics().scheduler.free_credits == 1)  # type: ignore[union-attr]
    assert seen[0] is not None
    assert 0 < seen[0] <= 0.2


async def test_a_queued_request_past_its_deadline_is_refused_by_the_broker(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async with running(lb_broker(context, queue_timeout=60)) as broker:
        with pytest.raises(RequestTimeout):  # DeadlineExceeded is a RequestTimeout too
            await client.request(b"nobody", timeout=0.1)
        await eventually(lambda: broker.statistics().scheduler.refused == 1)  # type: ignore[union-attr]


async def test_a_request_may_ask_to_be_sent_again_if_its_worker_dies(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async with running(lb_broker(context, heartbeat_interval=0.05, liveness=2)) as broker:
        silent = await zrw_worker(context, b"silent", credits=1)
        try:
            async with anyio.create_task_group() as tg:
                answers: list[bytes] = []

                async def ask() -> None:
                    answers.append(await client.request(b"important", redeliveries=1))

                tg.start_soon(ask)
                await silent.recv_multipart()  # it takes the request, then says nothing
                healthy = await zrw_worker(context, b"healthy", credits=1)
                try:
                    with anyio.fail_after(5):
                        while (
                            again := lbwire.decode_from_broker(await healthy.recv_multipart())
                        ) == "heartbeat":
                            await healthy.send_multipart([lbwire.PROTOCOL + lbwire.HEARTBEAT])
                    assert isinstance(again, lbwire.Assignment)
                    assert again.redelivery
                    await healthy.send_multipart(
                        lbwire.encode_reply(again.reply_to, Status.OK, [b"done"])
                    )
                finally:
                    await eventually(lambda: answers == [b"done"])
                    healthy.close()
            assert broker.statistics().scheduler.redelivered == 1  # type: ignore[union-attr]
        finally:
            silent.close()


async def test_relay_workers_honour_the_clients_timeout_too(
    relay_worker: object, relay_client: AsyncClient
) -> None:
    seen: list[float | None] = []

    async def patient(request: bytes) -> bytes:
        seen.append(time_left())
        return request

    start = relay_worker
    assert callable(start)
    await start(patient)
    assert await relay_client.request(b"x", timeout=3) == b"x"
    assert await relay_client.request(b"y", timeout=None) == b"y"
    assert seen[0] is not None
    assert 2 < seen[0] <= 3
    assert seen[1] is None


async def test_a_worker_whose_event_loop_is_blocked_is_dropped(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    """A blocked loop sends no heartbeats: to the broker it looks like a frozen process."""
    release = threading.Event()

    async def blocking(request: bytes) -> bytes:
        release.wait(10)  # blocks the worker's whole event loop, heartbeats included
        return request

    def worker_thread(backend: str, registered: threading.Event) -> None:
        async def main() -> None:
            worker_context = zmq.asyncio.Context()
            worker = AsyncWorker(
                backend, blocking, context=worker_context, mode="load-balancing",
                heartbeat_interval=0.05,
            )  # fmt: skip
            async with worker:
                registered.set()
                await anyio.to_thread.run_sync(release.wait, 10)
            worker_context.term()

        anyio.run(main)

    broker = Broker(
        frontend="inproc://f", backend="tcp://127.0.0.1:0", context=context,
        mode="load-balancing", heartbeat_interval=0.05, liveness=3, drain_timeout=0,
    )  # fmt: skip
    async with running(broker):
        registered = threading.Event()
        thread = threading.Thread(
            target=worker_thread, args=(broker.endpoints.backend, registered)
        )
        thread.start()
        try:
            await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
            with anyio.fail_after(5), pytest.raises(WorkerDied):
                await client.request(b"stuck")
            assert broker.statistics().scheduler.dead_workers == 1  # type: ignore[union-attr]
        finally:
            release.set()
            await anyio.to_thread.run_sync(thread.join, 10)


async def test_a_plain_clients_request_ends_even_if_its_guide_worker_dies_unseen(
    context: LeakCheckingContext,
) -> None:
    """Guide workers send no heartbeats: a broker-wide request timeout still ends the wait."""
    served: list[bytes] = []
    async with running(lb_broker(context, request_timeout=0.2)), anyio.create_task_group() as tg:
        hold = anyio.Event()
        await tg.start(guide_worker, context, b"doomed", served, hold)
        async with req_client(context, "inproc://f") as plain:
            with anyio.fail_after(5):
                reply = await plain(b"anyone?")
        assert reply.startswith(b"zmqrelay-error: DeadlineExceeded: ")
        tg.cancel_scope.cancel()


async def test_the_broker_drains_requests_in_flight_when_it_closes(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    release = anyio.Event()

    async def slow(request: bytes) -> bytes:
        await release.wait()
        return request

    broker = Broker(
        frontend="inproc://f", backend="inproc://b", context=context, mode="load-balancing",
        drain_timeout=10,
    )  # fmt: skip
    worker = AsyncWorker("inproc://b", slow, context=context, mode="load-balancing")
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        async with running(worker):
            await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
            replies: list[bytes] = []

            async def ask() -> None:
                replies.append(await client.request(b"in flight"))

            tg.start_soon(ask)
            await eventually(lambda: worker.statistics().in_flight == 1)
            tg.start_soon(broker.aclose)
            await eventually(lambda: "draining" in repr(broker))
            release.set()
            await eventually(lambda: "closed" in repr(broker))
        assert replies == [b"in flight"]


async def test_a_handler_can_tell_a_redelivered_request(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    seen: list[bool] = []

    async def holds(request: bytes) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def answers(request: bytes) -> bytes:
        seen.append(is_redelivery())
        return request

    options = {"mode": "load-balancing", "heartbeat_interval": 0.05}
    first = AsyncWorker("inproc://b", holds, context=context, **options)  # type: ignore[call-overload]
    second = AsyncWorker("inproc://b", answers, context=context, **options)  # type: ignore[call-overload]
    async with (
        running(lb_broker(context, heartbeat_interval=0.05, redeliveries=1)) as broker,
        anyio.create_task_group() as tg,
    ):
        await tg.start(first.run)
        await eventually(lambda: broker.statistics().scheduler.workers == 1)  # type: ignore[union-attr]
        replies: list[bytes] = []

        async def ask() -> None:
            replies.append(await client.request(b"once more"))

        tg.start_soon(ask)
        await eventually(lambda: first.statistics().in_flight == 1)
        await tg.start(second.run)
        await first.abort()  # dies mid-request: no reply, no more heartbeats
        await eventually(lambda: replies == [b"once more"])
        await second.aclose()
    assert seen == [True]


async def pirate_serves_a_plain_client(
    context: LeakCheckingContext, worker: zmq.asyncio.Socket
) -> bytes:
    """A REQ client asks b"hello"; ``worker``, a Paranoid Pirate, answers it in capitals."""
    replies: list[bytes] = []
    async with req_client(context, "inproc://f") as request, anyio.create_task_group() as tg:

        async def ask() -> None:
            replies.append(await request(b"hello"))

        tg.start_soon(ask)
        with anyio.fail_after(5):
            while (frames := await worker.recv_multipart()) == [b"\x02"]:  # heartbeats
                pass
        reply_to, empty, body = frames
        assert (empty, body) == (b"", b"hello")
        await worker.send_multipart([reply_to, empty, body.upper()])
    (reply,) = replies
    return reply


async def test_the_guides_paranoid_pirate_workers_are_served_and_heartbeated(
    context: LeakCheckingContext,
) -> None:
    # ppworker: a DEALER that says READY (b"\x01") and HEARTBEAT (b"\x02") as one frame, and
    # answers [reply-to, "", request] as [reply-to, "", reply]; it expects heartbeats back.
    async with running(lb_broker(context, heartbeat_interval=0.1)) as broker:
        worker = raw_socket(context, zmq.DEALER, "inproc://b", routing_id=b"pirate")
        try:
            await worker.send(b"\x01")
            await eventually(lambda: balancer_statistics(broker).scheduler.workers == 1)
            with anyio.fail_after(5):
                assert await worker.recv_multipart() == [b"\x02"]  # the broker heartbeats it
            await worker.send(b"\x02")  # and its heartbeats keep it, as no new READY would
            assert await pirate_serves_a_plain_client(context, worker) == b"HELLO"
            assert balancer_statistics(broker).scheduler.dead_workers == 0
        finally:
            worker.close()


async def test_a_request_to_a_broker_no_worker_has_reached_yet_waits_for_one(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    served: list[bytes] = []
    replies: list[bytes] = []

    async def ask() -> None:
        replies.append(await client.request(b"early"))

    async with (
        running(lb_broker(context, queue_timeout=5)) as broker,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(ask)
        await eventually(lambda: balancer_statistics(broker).requests_held == 1)
        await tg.start(guide_worker, context, b"late", served)
        await eventually(lambda: replies == [b"early by late"])
        tg.cancel_scope.cancel()


async def test_a_worker_sending_a_frame_past_max_message_size_is_cut_off(
    context: LeakCheckingContext,
) -> None:
    async def oversized(request: bytes) -> bytes:
        return bytes(10_000)

    # Over TCP: libzmq checks the size where it decodes frames off a connection.
    broker = lb_broker(
        context, frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0", max_message_size=1_000
    )
    async with running(broker):
        front, back = broker.endpoints
        async with AsyncClient(front, context=context) as client:
            async with AsyncWorker(back, oversized, context=context, mode="load-balancing") as big:
                with pytest.raises(RequestTimeout):  # its reply never reaches the client
                    await client.request(b"big", timeout=1)
                assert big.statistics().replies_sent == 1
            small = raw_socket(context, zmq.REQ, back)
            try:
                await small.send(b"READY")

                async def serve_one() -> None:
                    reply_to, empty, request = await small.recv_multipart()
                    await small.send_multipart([reply_to, empty, request + b" by small"])

                async with anyio.create_task_group() as tg:
                    tg.start_soon(serve_one)
                    assert await client.request(b"after", timeout=5) == b"after by small"
            finally:
                small.close()


async def test_a_burst_of_refusals_larger_than_the_clients_queue_all_reach_it(
    context: LeakCheckingContext,
) -> None:
    burst = 5_000  # five times what libzmq queues for one peer by default
    async with running(lb_broker(context, queue_timeout=0.2)) as broker:
        client = raw_socket(context, zmq.DEALER, "inproc://f")
        client.rcvhwm = 100
        try:
            for number in range(burst):
                await client.send_multipart([b"", b"%d" % number])
            # They all end at once, with no worker: and only then does the client read.
            await eventually(lambda: balancer_statistics(broker).scheduler.refused == burst)
            refused = []
            with anyio.fail_after(20):
                for _ in range(burst):
                    refused.append(await client.recv_multipart())
        finally:
            client.close()
        stats = balancer_statistics(broker)
    assert all(reply[1].startswith(b"zmqrelay-error: NoWorkers: ") for reply in refused)
    assert (stats.congested_replies, stats.unroutable_replies) == (0, 0)


async def test_a_worker_reconnecting_with_its_identity_takes_it_over(
    context: LeakCheckingContext,
) -> None:
    # A Paranoid Pirate worker that falls silent opens a new socket with the same identity;
    # its old connection may not have dropped yet.
    async with running(lb_broker(context)) as broker:
        old = raw_socket(context, zmq.DEALER, "inproc://b", routing_id=b"pirate")
        await old.send(b"\x01")
        await eventually(lambda: balancer_statistics(broker).scheduler.workers == 1)
        new = raw_socket(context, zmq.DEALER, "inproc://b", routing_id=b"pirate")
        try:
            await new.send(b"\x01")  # READY again, from the new connection: it restarted
            assert await pirate_serves_a_plain_client(context, new) == b"HELLO"
        finally:
            old.close()
            new.close()
