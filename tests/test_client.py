from __future__ import annotations

import pathlib
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest
import pytest_asyncio
import zmq

from peers import echo_handler, eventually, raw_socket
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    BrokenError,
    Broker,
    ClosedError,
    EndpointError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    RetryPolicy,
)
from zmqrelay.pytest_plugin import WorkerFactory
from zmqrelay.testing import BrokerHarness, LeakCheckingContext, relay_harness

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.zmqrelay(frontend="inproc://f", backend="inproc://b", drain_timeout=0),
]


@pytest.fixture
def broker(relay_broker: BrokerHarness) -> BrokerHarness:
    return relay_broker


@pytest_asyncio.fixture
async def backend(
    broker: BrokerHarness, context: LeakCheckingContext
) -> AsyncIterator[zmq.asyncio.Socket]:
    """A hand-driven DEALER worker: the test reads requests and answers them as it likes."""
    sock = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
    yield sock
    sock.close()


async def test_replies_are_matched_in_any_order(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with AsyncClient("inproc://f", context=context, timeout=5) as client:
        replies: dict[int, bytes] = {}

        async def ask(n: int) -> None:
            replies[n] = await client.request(b"%d" % n)

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(ask, n)
            requests = [await backend.recv_multipart() for _ in range(10)]
            assert client.statistics().in_flight == 10
            for request in reversed(requests):
                await backend.send_multipart([*request[:-1], b"re " + request[-1]])
        assert replies == {n: b"re %d" % n for n in range(10)}
        assert client.statistics().replies_received == 10


async def test_timeout_is_a_typed_timeout_error_and_the_late_reply_is_counted(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with AsyncClient("inproc://f", context=context) as client:
        with pytest.raises(RequestTimeout, match=r"no reply within 0\.05 s") as caught:
            await client.request(b"slow", timeout=0.05)
        assert isinstance(caught.value, TimeoutError)
        request = await backend.recv_multipart()
        await backend.send_multipart(request)
        await eventually(lambda: client.statistics().late_replies == 1)
        stats = client.statistics()
        assert (stats.timeouts, stats.in_flight, stats.replies_received) == (1, 0, 0)


async def test_cancelling_one_request_disturbs_no_other(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with AsyncClient("inproc://f", context=context, timeout=5) as client:
        replies: list[bytes] = []
        async with anyio.create_task_group() as tg:
            cancelled = anyio.CancelScope()

            async def doomed() -> None:
                with cancelled:
                    await client.request(b"doomed")

            async def kept() -> None:
                replies.append(await client.request(b"kept"))

            tg.start_soon(doomed)
            first = await backend.recv_multipart()
            tg.start_soon(kept)
            second = await backend.recv_multipart()
            cancelled.cancel()
            await eventually(lambda: client.statistics().in_flight == 1)
            await backend.send_multipart(first)
            await backend.send_multipart(second)
        assert replies == [b"kept"]
        await eventually(lambda: client.statistics().late_replies == 1)


async def test_many_tasks_share_one_client(
    context: LeakCheckingContext, broker: BrokerHarness
) -> None:
    served: Counter[str] = Counter()
    async with (
        AsyncWorker("inproc://b", echo_handler("w", served), context=context, concurrency=8),
        AsyncClient("inproc://f", context=context, timeout=10) as client,
        anyio.create_task_group() as tg,
    ):
        results: list[bool] = []

        async def ask_five(task: int) -> None:
            for n in range(5):
                body = b"%d-%d" % (task, n)
                results.append(await client.request(body) == b"World " + body)

        for task in range(40):
            tg.start_soon(ask_five, task)
    assert results == [True] * 200
    assert served["w"] == 200


async def test_multipart_requests_and_replies(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    frames = [b"", b"\x00\xff binary", b"", b"last"]
    async with (
        AsyncClient("inproc://f", context=context, timeout=5) as client,
        anyio.create_task_group() as tg,
    ):
        replies: list[list[bytes]] = []

        async def ask() -> None:
            replies.append(await client.request_frames(frames))

        tg.start_soon(ask)
        request = await backend.recv_multipart()
        delimiter = request.index(b"")
        assert request[delimiter + 1 :] == frames
        await backend.send_multipart(request[: delimiter + 1] + frames[::-1])
    assert replies == [frames[::-1]]


async def test_request_refuses_a_multipart_reply(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    async with (
        AsyncClient("inproc://f", context=context, timeout=5) as client,
        anyio.create_task_group() as tg,
    ):

        async def answer_twice() -> None:
            request = await backend.recv_multipart()
            await backend.send_multipart([*request, b"extra"])

        tg.start_soon(answer_twice)
        with pytest.raises(RemoteProtocolError, match="use request_frames"):
            await client.request(b"one")


async def test_an_empty_request_is_refused_locally(
    context: LeakCheckingContext, broker: BrokerHarness
) -> None:
    async with AsyncClient("inproc://f", context=context) as client:
        with pytest.raises(LocalProtocolError):
            await client.request_frames([])


async def test_handler_errors_arrive_as_remote_errors(
    context: LeakCheckingContext, broker: BrokerHarness
) -> None:
    async def fail(request: bytes) -> bytes:
        raise KeyError(request.decode())

    async with (
        AsyncWorker("inproc://b", fail, context=context),
        AsyncClient("inproc://f", context=context, timeout=5) as client,
    ):
        with pytest.raises(RemoteError, match="KeyError: 'missing'") as caught:
            await client.request(b"missing")
    assert caught.value.type_name == "KeyError"


async def test_using_a_client_outside_its_lifetime_is_a_closed_error(
    context: LeakCheckingContext,
) -> None:
    client = AsyncClient("inproc://nowhere", context=context)
    with pytest.raises(ClosedError, match="new"):
        await client.request(b"x")
    async with client:
        pass
    with pytest.raises(ClosedError, match="closed"):
        await client.request(b"x")
    assert "closed" in repr(client)


async def test_closing_fails_requests_still_waiting(
    context: LeakCheckingContext, backend: zmq.asyncio.Socket
) -> None:
    client = AsyncClient("inproc://f", context=context)
    failures: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        await tg.start(client.run)

        async def ask() -> None:
            try:
                await client.request(b"pending")
            except ClosedError as exc:
                failures.append(exc)

        tg.start_soon(ask)
        await backend.recv_multipart()
        await client.aclose()
    assert len(failures) == 1


async def test_a_socket_destroyed_under_the_client_is_a_broken_error_not_a_closed_one(
    tmp_path: pathlib.Path,
) -> None:
    """The client did not close: its socket failed, which is BrokenError (anyio's split)."""
    endpoint = f"ipc://{tmp_path}/f"
    async with (
        Broker(frontend=endpoint, backend=f"ipc://{tmp_path}/b") as own,
        AsyncWorker(own.endpoints.backend, echo_handler("w", Counter())),
    ):
        context = zmq.asyncio.Context()
        async with AsyncClient(endpoint, context=context, timeout=5) as client:
            assert await client.request(b"before") == b"World before"
            context.destroy(linger=0)
            with pytest.raises(BrokenError, match="the client's socket failed") as caught:
                await client.request(b"after")
            assert not isinstance(caught.value, ClosedError)
            assert isinstance(caught.value.__cause__, zmq.ZMQError)


async def test_invalid_endpoint_is_an_endpoint_error(context: LeakCheckingContext) -> None:
    with pytest.raises(EndpointError):
        async with AsyncClient("nonsense", context=context):
            pass


async def test_closing_wakes_requests_stuck_behind_a_full_queue(
    context: LeakCheckingContext,
) -> None:
    """Requests waiting to be queued end in ClosedError, never in a cancellation that would
    escape into the caller's task group."""
    client = AsyncClient("tcp://127.0.0.1:9", context=context)  # nobody there: queue fills up
    outcomes: Counter[str] = Counter()
    async with anyio.create_task_group() as tg:
        await tg.start(client.run)

        async def ask() -> None:
            try:
                await client.request(b"x")
            except ClosedError:
                outcomes["closed"] += 1

        for _ in range(1010):  # more than the 1000 messages a socket queues by default
            tg.start_soon(ask)
        await eventually(lambda: client.statistics().requests_sent == 1010)
        await client.aclose()
    assert outcomes == {"closed": 1010}


async def test_a_retry_policy_sends_again_and_the_caller_gets_one_reply(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    worker = await relay_worker(_echo)
    worker.pause()
    policy = RetryPolicy(attempts=10, backoff=0.01, max_backoff=0.02)
    async with anyio.create_task_group() as tg:
        replies: list[bytes] = []

        async def ask() -> None:
            replies.append(await relay_client.request(b"again", timeout=0.05, retry=policy))

        tg.start_soon(ask)
        await eventually(lambda: relay_client.statistics().retries >= 2)
        worker.resume()
    assert replies == [b"again"]
    await eventually(lambda: relay_client.statistics().late_replies >= 1)


async def test_without_a_retry_policy_the_failure_reaches_the_caller(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    worker = await relay_worker(_echo)
    worker.pause()
    with pytest.raises(RequestTimeout):
        await relay_client.request(b"once", timeout=0.05)
    assert relay_client.statistics().retries == 0
    worker.resume()


async def test_a_retry_policy_rides_out_a_broker_restart() -> None:
    async with relay_harness(
        transport="ipc", drain_timeout=0, mode="load-balancing", heartbeat_interval=0.05
    ) as harness:
        await harness.start_worker(_echo, mode="load-balancing", heartbeat_interval=0.05)
        client = await harness.connect_client(retry=RetryPolicy(attempts=50, backoff=0.02))
        assert await client.request(b"before") == b"before"
        async with anyio.create_task_group() as tg:
            replies: list[bytes] = []

            async def ask() -> None:
                replies.append(await client.request(b"during", timeout=0.2))

            await harness.restart_broker()
            tg.start_soon(ask)
        assert replies == [b"during"]


async def _echo(request: bytes) -> bytes:
    return request


async def test_a_frame_that_is_not_bytes_is_refused_before_anything_is_sent(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    async def frames_echo(frames: list[bytes]) -> list[bytes]:
        return frames

    await relay_worker(frames_echo, frames=True)
    with pytest.raises(LocalProtocolError, match="must be bytes, not str"):
        await relay_client.request_frames([b"first", "second"])  # type: ignore[list-item]
    # Nothing of it went out: the next request is whole, not glued to a half message.
    assert await relay_client.request_frames([b"next", b""]) == [b"next", b""]
    assert relay_client.statistics().requests_sent == 1
