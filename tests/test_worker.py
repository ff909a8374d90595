from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import anyio
import pytest
import zmq

from peers import eventually, raw_socket, req_client
from zmqrelay import AsyncClient, AsyncWorker, NoWorkers, RemoteError
from zmqrelay._core import tag
from zmqrelay.testing import LeakCheckingContext

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.zmqrelay(frontend="inproc://f", backend="inproc://b", drain_timeout=0),
]


@pytest.fixture
def client(relay_client: AsyncClient) -> AsyncClient:
    return relay_client


class Gate:
    """A handler that holds every request until the test opens the gate."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.inside = 0
        self.most_inside = 0

    async def __call__(self, request: bytes) -> bytes:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.open.wait()
        finally:
            self.inside -= 1
        return request


async def test_handles_up_to_concurrency_requests_at_once(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    gate = Gate()
    worker = AsyncWorker("inproc://b", gate, context=context, concurrency=3)
    replies: list[bytes] = []
    async with worker, anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(_ask, client, b"%d" % n, replies)
        await eventually(lambda: gate.inside == 3)
        assert worker.statistics().in_flight == 3
        assert "in_flight=3/3" in repr(worker)
        gate.open.set()
    assert sorted(replies) == sorted(b"%d" % n for n in range(10))
    assert gate.most_inside == 3
    stats = worker.statistics()
    assert (stats.requests_received, stats.replies_sent, stats.in_flight) == (10, 10, 0)


async def test_requests_queued_behind_a_waiting_handler_go_to_a_free_one(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    # The worker wakes one free handler per batch and the others only for what it leaves
    # queued: the requests that came with one that waits must still be served meanwhile.
    held = anyio.Event()

    async def handle(request: bytes) -> bytes:
        if request == b"slow":
            await held.wait()
        return request

    worker = AsyncWorker("inproc://b", handle, context=context, concurrency=2)
    replies: list[bytes] = []
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(_ask, client, b"slow", replies)
        for n in range(20):
            tg.start_soon(_ask, client, b"%d" % n, replies)
        await eventually(lambda: len(replies) == 20)
        assert b"slow" not in replies
        assert worker.statistics().in_flight == 1
        held.set()
    assert sorted(replies) == sorted([b"slow", *(b"%d" % n for n in range(20))])


async def _ask(client: AsyncClient, body: bytes, replies: list[bytes]) -> None:
    replies.append(await client.request(body))


async def test_a_raising_handler_answers_every_kind_of_client_and_keeps_serving(
    context: LeakCheckingContext, client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def picky(request: bytes) -> bytes:
        if request == b"bad":
            raise ValueError("boom")
        return b"ok"

    async with AsyncWorker("inproc://b", picky, context=context) as worker:
        with (
            caplog.at_level(logging.ERROR, logger="zmqrelay.worker"),
            pytest.raises(RemoteError, match="ValueError: boom"),
        ):
            await client.request(b"bad")
        assert "handler raised" in caplog.text
        async with req_client(context, "inproc://f") as plain:
            assert await plain(b"bad") == b"zmqrelay-error: ValueError: boom"
            assert await plain(b"good") == b"ok"
        assert await client.request(b"good") == b"ok"
    assert worker.statistics().handler_errors == 2


async def test_frames_handlers_take_and_return_multipart_bodies(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async def reverse(frames: list[bytes]) -> Sequence[bytes]:
        return frames[::-1]

    body = [b"", b"\x00\x01binary", b"", b"end"]
    async with AsyncWorker("inproc://b", reverse, frames=True, context=context):
        assert await client.request_frames(body) == body[::-1]


async def test_a_single_frame_handler_refuses_multipart_requests(
    context: LeakCheckingContext, client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def echo(request: bytes) -> bytes:
        return request

    async with AsyncWorker("inproc://b", echo, context=context) as worker:
        for _ in range(50):  # a flood of input the handler cannot take
            with pytest.raises(RemoteError, match="single-frame request, got 2 frames"):
                await client.request_frames([b"a", b"b"])
        stats = worker.statistics()
    # It is the peer's fault, not the handler's: counted as malformed, and logged once in a
    # while, without a traceback: the first at once, the rest counted as the worker stops.
    assert (stats.malformed_requests, stats.handler_errors) == (50, 0)
    warnings = [record for record in caplog.records if record.name == "zmqrelay.worker"]
    assert len(warnings) == 2
    assert all(warning.exc_info is None for warning in warnings)
    assert "single-frame request" in warnings[0].getMessage()
    assert [warning.count for warning in warnings] == [1, 49]  # type: ignore[attr-defined]


async def test_a_request_for_a_service_through_a_relay_broker_is_refused_at_once(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    """Relay mode has no services: the client hears so, rather than time out."""

    async def shout(request: bytes) -> bytes:
        return request.upper()

    async with AsyncWorker("inproc://b", shout, context=context) as worker:
        with anyio.fail_after(2), pytest.raises(NoWorkers, match=r"'shout'.*relay mode"):
            await client.request("shout", b"hi", timeout=30)
        assert await client.request(b"hi") == b"HI"
        stats = worker.statistics()
    assert (stats.malformed_requests, stats.requests_received) == (1, 1)


async def test_a_handler_returning_the_wrong_type_gets_an_error_reply(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async def wrong(request: bytes) -> bytes:
        return "text"  # type: ignore[return-value]

    async with AsyncWorker("inproc://b", wrong, context=context):
        with pytest.raises(RemoteError, match="LocalProtocolError: reply frames must be bytes"):
            await client.request(b"x")


async def test_graceful_close_finishes_requests_in_hand(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    gate = Gate()
    worker = AsyncWorker("inproc://b", gate, context=context, drain_timeout=10)
    replies: list[bytes] = []
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        tg.start_soon(_ask, client, b"in hand", replies)
        await eventually(lambda: gate.inside == 1)
        tg.start_soon(worker.aclose)
        await eventually(lambda: "draining" in repr(worker))
        gate.open.set()
    assert replies == [b"in hand"]
    assert "closed" in repr(worker)


async def test_handlers_past_the_drain_timeout_are_cancelled_and_answered(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    gate = Gate()
    worker = AsyncWorker("inproc://b", gate, context=context, drain_timeout=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        failures: list[RemoteError] = []

        async def ask() -> None:
            try:
                await client.request(b"stuck")
            except RemoteError as exc:
                failures.append(exc)

        tg.start_soon(ask)
        await eventually(lambda: gate.inside == 1)
        await worker.aclose()
    assert [failure.type_name for failure in failures] == ["WorkerStopped"]


async def test_cancelling_run_stops_at_once_and_closes_the_socket(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    gate = Gate()
    worker = AsyncWorker("inproc://b", gate, context=context)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_ask_despite_errors, client, b"stuck")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as inner:
                await inner.start(worker.run)
                await eventually(lambda: gate.inside == 1)
                scope.cancel()
        assert "closed" in repr(worker)
        tg.cancel_scope.cancel()


async def _ask_despite_errors(client: AsyncClient, body: bytes) -> None:
    with contextlib.suppress(RemoteError):
        await client.request(body)


async def test_malformed_requests_are_dropped_and_counted(context: LeakCheckingContext) -> None:
    broker_side = raw_socket(context, zmq.ROUTER, "inproc://fake-broker", bind=True)
    try:

        async def echo(request: bytes) -> bytes:
            return request

        worker = AsyncWorker("inproc://fake-broker", echo, context=context, routing_id=b"w1")
        async with worker:
            for garbage in ([b"no delimiter"], [b"", b"no routing"], [b"hop", b""]):
                await broker_side.send_multipart([b"w1", *garbage])
            await broker_side.send_multipart([b"w1", b"client", b"", b"fine"])
            assert await broker_side.recv_multipart() == [b"w1", b"client", b"", b"fine"]
        assert worker.statistics().malformed_requests == 3
    finally:
        broker_side.close()


async def test_handlers_past_their_deadline_are_cancelled_and_the_task_serves_on(
    context: LeakCheckingContext,
) -> None:
    # One handler task: a request whose handler hangs, one whose handler ignores being
    # cancelled, then one that answers; each deadline passed gets one DeadlineExceeded reply.
    broker_side = raw_socket(context, zmq.ROUTER, "inproc://fake-broker", bind=True)
    cancelled: list[bytes] = []

    async def handle(request: bytes) -> bytes:
        if request == b"fine":
            return request
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(request)
            if request == b"stubborn":
                return b"too late"  # swallowed: its client has been told already
            raise
        raise AssertionError

    try:
        worker = AsyncWorker(
            "inproc://fake-broker", handle, context=context, routing_id=b"w1", tracing=False
        )
        async with worker:
            for n, body in enumerate((b"hang", b"stubborn", b"fine")):
                hop = tag.encode(n, timeout=0.05 if body != b"fine" else 5.0)
                await broker_side.send_multipart([b"w1", b"client", hop, b"", body])
                with anyio.fail_after(5):
                    reply = await broker_side.recv_multipart()
                status = tag.decode(reply[2])
                assert status is not None
                if body == b"fine":
                    assert (status.status, reply[4:]) == (tag.Status.OK, [b"fine"])
                else:
                    assert status.status == tag.Status.ERROR
                    assert reply[4] == b"DeadlineExceeded"
            assert cancelled == [b"hang", b"stubborn"]
            stats = worker.statistics()
            assert (stats.replies_sent, stats.handler_errors, stats.in_flight) == (3, 2, 0)
            assert not await broker_side.poll(50)  # no second reply to "stubborn"
    finally:
        broker_side.close()


async def test_concurrency_must_be_positive() -> None:
    async def echo(request: bytes) -> bytes:
        return request

    with pytest.raises(ValueError, match="concurrency"):
        AsyncWorker("inproc://b", echo, concurrency=0)


async def test_a_handler_raising_cancelled_error_is_a_handler_error(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    async def awaits_a_cancelled_future(request: bytes) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.cancel()
        return await future

    async with AsyncWorker("inproc://b", awaits_a_cancelled_future, context=context) as worker:
        for _ in range(2):  # the worker survives it
            with pytest.raises(RemoteError, match="CancelledError"):
                await client.request(b"x")
        assert "running" in repr(worker)
    assert worker.statistics().handler_errors == 2


async def test_graceful_close_refuses_requests_queued_behind_the_one_in_hand(
    context: LeakCheckingContext, client: AsyncClient
) -> None:
    gate = Gate()
    worker = AsyncWorker("inproc://b", gate, context=context, drain_timeout=10)
    outcomes: list[bytes | str] = []

    async def ask(body: bytes) -> None:
        try:
            outcomes.append(await client.request(body))
        except RemoteError as exc:
            outcomes.append(exc.type_name)

    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        for n in range(5):
            tg.start_soon(ask, b"%d" % n)
        await eventually(lambda: gate.inside == 1 and client.statistics().requests_sent == 5)
        tg.start_soon(worker.aclose)
        # The four queued requests are refused at once, while the one in hand still runs.
        await eventually(lambda: outcomes.count("WorkerStopped") == 4)
        assert gate.inside == 1
        gate.open.set()
    assert len(outcomes) == 5
    assert worker.statistics().refused_requests == 4
