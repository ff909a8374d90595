"""An AsyncClient over several brokers: spreading, failing over, taking a broker back."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
import zmq
import zmq.asyncio

from peers import broker_process, echo_handler, end_process, eventually, free_port, raw_socket
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    BrokerLost,
    ClientLinkStatistics,
    ClosedError,
    RequestTimeout,
    RetryPolicy,
)
from zmqrelay.testing import BrokerHarness, LeakCheckingContext, relay_harness, running

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02)


@asynccontextmanager
async def brokers(
    count: int, served: Counter[str], **options: object
) -> AsyncIterator[list[BrokerHarness]]:
    """``count`` in-process brokers on tcp, each with an echo worker named after its place."""
    async with AsyncExitStack() as stack:
        harnesses = []
        for index in range(count):
            harness = await stack.enter_async_context(
                relay_harness(transport="tcp", drain_timeout=0)
            )
            await harness.start_worker(echo_handler(str(index), served))
            harnesses.append(harness)
        yield harnesses


def links(client: AsyncClient) -> tuple[ClientLinkStatistics, ...]:
    return client.statistics().links


async def all_up(client: AsyncClient) -> None:
    await eventually(lambda: all(link.state == "up" for link in links(client)))


async def test_requests_spread_over_two_brokers_that_both_serve(
    context: LeakCheckingContext,
) -> None:
    served: Counter[str] = Counter()
    async with brokers(2, served) as (a, b):
        endpoints = [a.endpoints.frontend, b.endpoints.frontend]
        async with AsyncClient(
            endpoints, context=context, timeout=5, heartbeat_interval=0.05, heartbeat_timeout=0.3
        ) as client:
            await all_up(client)
            replies = []
            async with anyio.create_task_group() as tg:
                for n in range(200):

                    async def ask(n: int = n) -> None:
                        replies.append(await client.request(b"%d" % n))

                    tg.start_soon(ask)
            assert sorted(replies) == sorted(b"World %d" % n for n in range(200))
            assert served["0"] + served["1"] == 200
            assert served["0"] >= 50
            assert served["1"] >= 50
            stats = client.statistics()
            assert [link.endpoint for link in stats.links] == endpoints
            assert sum(link.requests_sent for link in stats.links) == stats.requests_sent == 200
            assert all(link.failovers == 0 and link.in_flight == 0 for link in stats.links)
            assert "endpoints=" in repr(client)


async def test_a_broker_stopped_mid_load_fails_over_and_is_taken_back_when_restarted(
    context: LeakCheckingContext,
) -> None:
    served: Counter[str] = Counter()
    async with brokers(2, served) as (a, b):
        endpoints = [a.endpoints.frontend, b.endpoints.frontend]
        async with AsyncClient(
            endpoints, context=context, timeout=5, heartbeat_interval=0.05, heartbeat_timeout=0.3
        ) as client:
            await all_up(client)
            a_worker_gate = anyio.Event()

            # Broker a's requests wait in its worker, so that they are in flight when it goes.
            async def slow(request: bytes) -> bytes:
                await a_worker_gate.wait()
                return request

            await a.start_worker(slow)  # a second worker at a, holding what it gets
            outcomes: Counter[str] = Counter()
            retried: list[bytes] = []

            async def ask(n: int, retry: RetryPolicy | None) -> None:
                started = anyio.current_time()
                try:
                    reply = await client.request(b"%d" % n, timeout=2.0, retry=retry)
                except BrokerLost:
                    outcomes["lost" if retry is None else "lost-after-retries"] += 1
                except RequestTimeout:
                    outcomes["timeout"] += 1
                else:
                    outcomes["replied"] += 1
                    if retry is not None:
                        retried.append(reply)
                # Nothing waits past its timeout (the retried ones: past their attempts).
                assert anyio.current_time() - started < 2.0 * (1 if retry is None else 3) + 1

            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(ask, n, RETRY if n % 2 else None)
                await eventually(lambda: links(client)[0].in_flight >= 4)
                await a.stop_broker(graceful=False)
            sent = 40
            assert sum(outcomes.values()) == sent  # every request ended, once
            assert outcomes["timeout"] == 0
            assert outcomes["lost-after-retries"] == 0
            assert len(retried) == 20  # every retryable request was answered, by b
            assert outcomes["lost"] >= 1  # at-most-once requests that a held are not resent
            first = links(client)[0]
            assert (first.state, first.failovers) == ("down", 1)
            assert first.requests_lost >= 2
            assert client.statistics().in_flight == 0

            # While a is down everything goes to b; restarted, it is taken back.
            before = links(client)[1].requests_sent
            for n in range(5):
                await client.request(b"%d" % n)
            assert links(client)[1].requests_sent == before + 5
            a_worker_gate.set()
            await a.start_broker()
            await eventually(lambda: links(client)[0].state == "up")
            sent_to_a = links(client)[0].requests_sent
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(client.request, b"%d" % n)
            assert links(client)[0].requests_sent > sent_to_a


async def test_a_broker_that_never_answers_is_suspended_then_probed(
    context: LeakCheckingContext,
) -> None:
    # A raw ROUTER answers libzmq's heartbeats but no request: only timeouts can tell.
    served: Counter[str] = Counter()
    async with brokers(1, served) as (good,):
        silent = raw_socket(context, zmq.ROUTER, "tcp://127.0.0.1:*", bind=True)
        try:
            endpoints = [silent.getsockopt_string(zmq.LAST_ENDPOINT), good.endpoints.frontend]
            async with AsyncClient(
                endpoints,
                context=context,
                suspend_after=2,
                suspend_time=0.3,
                heartbeat_interval=0.05,
                heartbeat_timeout=0.3,
            ) as client:
                await all_up(client)
                outcomes: Counter[str] = Counter()

                async def ask() -> None:
                    try:
                        await client.request(b"?", timeout=0.2)
                        outcomes["replied"] += 1
                    except RequestTimeout:
                        outcomes["timeout"] += 1

                for _ in range(6):
                    await ask()
                assert outcomes["timeout"] == 2  # then suspended: the rest went to the good one
                assert links(client)[0].state == "suspended"
                assert links(client)[0].failovers == 1
                await anyio.sleep(0.35)  # its suspension ends: it is probed with one request
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(ask)
                assert outcomes["timeout"] == 3
                assert links(client)[0].state == "suspended"
                assert sum(outcomes.values()) == 10
        finally:
            silent.close()


async def test_one_endpoint_in_a_list_behaves_as_a_single_endpoint(
    context: LeakCheckingContext,
) -> None:
    served: Counter[str] = Counter()
    async with brokers(1, served) as (only,):
        client = AsyncClient([only.endpoints.frontend], context=context, timeout=5)
        async with client:
            assert await client.request(b"x") == b"World x"
            assert client.statistics().links == ()
            assert "endpoint=" in repr(client)


async def test_invalid_endpoint_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AsyncClient([])
    with pytest.raises(ValueError, match="twice"):
        AsyncClient(["tcp://127.0.0.1:5559", "tcp://127.0.0.1:5559"])


async def test_a_stream_whose_broker_is_lost_after_its_first_part_ends_in_broker_lost(
    context: LeakCheckingContext,
) -> None:
    gate = anyio.Event()

    async def parts(request: bytes) -> AsyncIterator[bytes]:
        yield b"first"
        yield b"second"  # the worker holds a part back until the next (to mark the last)
        await gate.wait()
        yield b"third"

    async with (
        relay_harness(
            transport="tcp", drain_timeout=0, mode="load-balancing", heartbeat_interval=0.05
        ) as a,
        relay_harness(
            transport="tcp", drain_timeout=0, mode="load-balancing", heartbeat_interval=0.05
        ) as b,
    ):
        await a.start_worker(parts, service="s")
        await b.start_worker(parts, service="s")
        endpoints = [a.endpoints.frontend, b.endpoints.frontend]
        async with AsyncClient(
            endpoints, context=context, timeout=5, heartbeat_interval=0.05, heartbeat_timeout=0.3
        ) as client:
            await all_up(client)
            got: list[bytes] = []

            async def read() -> None:
                async for part in client.stream("s", b"?"):
                    got.append(part)
                    where = a if links(client)[0].in_flight else b
                    await where.stop_broker(graceful=False)

            with pytest.raises(BrokerLost):
                await read()
            assert got == [b"first"]  # never sent again: the rest would repeat the first part
            assert client.statistics().requests_sent == 1
            gate.set()


async def test_majordomo_clients_use_several_brokers_and_fail_over(
    context: LeakCheckingContext,
) -> None:
    served: Counter[str] = Counter()
    async with AsyncExitStack() as stack:
        harnesses = []
        for name in "ab":
            harness = await stack.enter_async_context(
                relay_harness(
                    transport="tcp",
                    drain_timeout=0,
                    mode="load-balancing",
                    heartbeat_interval=0.05,
                )
            )
            await harness.start_worker(echo_handler(name, served), service="echo")
            harnesses.append(harness)
        endpoints = [harness.endpoints.frontend for harness in harnesses]
        async with AsyncClient(
            endpoints,
            context=context,
            timeout=5,
            protocol="mdp-0.2",
            retry=RETRY,
            heartbeat_interval=0.05,
            heartbeat_timeout=0.3,
        ) as client:
            await all_up(client)
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(client.request, "echo", b"x")
            assert served["a"] >= 5
            assert served["b"] >= 5
            await harnesses[0].stop_broker(graceful=False)
            await eventually(lambda: links(client)[0].state == "down")
            for _ in range(5):
                assert await client.request("echo", b"y") == b"World y"
            assert client.statistics().in_flight == 0


# -- a broker in a process of its own, stopped (SIGSTOP) and killed ------------------------------


async def until(condition: Callable[[], bool]) -> float:
    """Seconds until ``condition()`` holds (within 10)."""
    started = anyio.current_time()
    await eventually(condition, timeout=10)
    return anyio.current_time() - started


async def test_a_stopped_broker_is_found_by_heartbeat_and_a_killed_one_at_once(
    context: LeakCheckingContext,
) -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    process = broker_process(frontend, backend)
    served: Counter[str] = Counter()
    try:
        async with (
            brokers(1, served) as (local,),
            running(AsyncWorker(backend, echo_handler("process", served), context=context)),
            AsyncClient(
                [frontend, local.endpoints.frontend],
                context=context,
                timeout=5,
                heartbeat_interval=0.05,
                heartbeat_timeout=0.3,
            ) as client,
        ):
            await all_up(client)

            async def load(count: int, retry: RetryPolicy | None) -> Counter[str]:
                outcomes: Counter[str] = Counter()

                async def ask() -> None:
                    try:
                        await client.request(b"x", retry=retry)
                        outcomes["replied"] += 1
                    except BrokerLost:
                        outcomes["lost"] += 1

                async with anyio.create_task_group() as tg:
                    for _ in range(count):
                        tg.start_soon(ask)
                return outcomes

            assert (await load(20, None))["replied"] == 20
            assert served["process"] >= 5

            os.kill(process.pid, signal.SIGSTOP)
            stopped_at = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_check, load(20, RETRY), {"replied": 20})
                found = await until(lambda: links(client)[0].state == "down")
            answered = anyio.current_time() - stopped_at
            # Found once heartbeat_timeout (0.3 s) passed without a PONG.
            assert 0.2 <= found < 1.5, found
            assert answered < 2.5

            os.kill(process.pid, signal.SIGCONT)
            await until(lambda: links(client)[0].state == "up")
            await load(20, None)

            os.kill(process.pid, signal.SIGKILL)
            killed = await until(lambda: links(client)[0].state == "down")
            assert killed < 0.2, killed  # the kernel resets the connection: no waiting
            assert (await load(10, None))["replied"] == 10
            assert links(client)[0].failovers == 2
            print(f"\nfailover: stopped {found:.3f} s, killed {killed:.3f} s")
    finally:
        end_process(process)


async def _check(outcomes: Awaitable[Counter[str]], expected: dict[str, int]) -> None:
    assert await outcomes == Counter(expected)


# -- a Majordomo stream held open while its broker is lost or its client closes ---------------

_PARTIAL, _FINAL = b"\x02", b"\x03"  # MDP/0.2 client commands


async def answer_one(router: zmq.asyncio.Socket, command: bytes) -> None:
    """Be a Majordomo 0.2 broker for one request: echo its body as one part."""
    identity, _, _, service, *body = await router.recv_multipart()
    await router.send_multipart([identity, b"MDPC02", command, service, *body])


@asynccontextmanager
async def hand_broker(
    context: zmq.asyncio.Context, port: int
) -> AsyncIterator[zmq.asyncio.Socket]:
    router = raw_socket(context, zmq.ROUTER, f"tcp://127.0.0.1:{port}", bind=True)
    try:
        yield router
    finally:
        router.close(linger=0)


def majordomo_client(context: zmq.asyncio.Context, ports: list[int]) -> AsyncClient:
    return AsyncClient(
        [f"tcp://127.0.0.1:{port}" for port in ports],
        protocol="mdp-0.2",
        context=context,
        timeout=5,
        heartbeat_interval=0.05,
        heartbeat_timeout=0.3,
    )


async def stream_past_its_lost_broker(
    context: zmq.asyncio.Context, client: AsyncClient, port: int, command: bytes
) -> AsyncGenerator[bytes, None]:
    """A stream to the hand broker on ``port`` whose first part (``command``: final or not) was
    read, the stream held open while the broker went away and the client saw it lost."""
    async with hand_broker(context, port) as router:
        await eventually(lambda: links(client)[0].state == "up")
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_one, router, command)
            parts = client.stream("echo", b"one")
            assert await anext(parts) == b"one"
    await eventually(lambda: links(client)[0].state == "down")
    return parts


async def test_a_majordomo_stream_held_past_its_lost_broker_leaves_the_broker_usable(
    context: LeakCheckingContext,
) -> None:
    """The held stream's socket was closed with the broker: it must not serve the next request."""
    port, nobody = free_port(), free_port()
    async with majordomo_client(context, [port, nobody]) as client:
        parts = await stream_past_its_lost_broker(context, client, port, _FINAL)
        await parts.aclose()  # after its last part: its socket would go back to the pool
        async with hand_broker(context, port) as router, anyio.create_task_group() as tg:
            await eventually(lambda: links(client)[0].state == "up")
            tg.start_soon(answer_one, router, _FINAL)
            assert await client.request("echo", b"two") == b"two"


async def test_a_majordomo_stream_read_after_its_broker_was_lost_ends_in_broker_lost(
    context: LeakCheckingContext,
) -> None:
    port, nobody = free_port(), free_port()
    async with majordomo_client(context, [port, nobody]) as client:
        parts = await stream_past_its_lost_broker(context, client, port, _PARTIAL)
        with pytest.raises(BrokerLost):
            await anext(parts)
        await parts.aclose()


async def test_a_majordomo_stream_read_after_its_client_closed_ends_in_closed_error(
    context: LeakCheckingContext,
) -> None:
    """This process closed the socket: ClosedError, not BrokenError."""
    port = free_port()
    client = AsyncClient(f"tcp://127.0.0.1:{port}", protocol="mdp-0.2", context=context, timeout=5)
    async with hand_broker(context, port) as router, anyio.create_task_group() as tg:
        await tg.start(client.run)
        tg.start_soon(answer_one, router, _PARTIAL)
        parts = client.stream("echo", b"one")
        assert await anext(parts) == b"one"
        await client.aclose()
        with pytest.raises(ClosedError, match="closed before the reply"):
            await anext(parts)
        await parts.aclose()
