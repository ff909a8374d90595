"""Random multipart messages thrown at live peers while good traffic flows.

Each example runs a real broker, worker and client on ``inproc://`` in a fresh context. The
rule (house style 4): garbage is dropped and counted, it never crashes anything, and it never
disturbs another peer's request.
"""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from peers import echo_handler, eventually, raw_socket
from strategies import messages
from zmqrelay import AsyncClient, AsyncWorker, Broker
from zmqrelay._aio.broker import Engine
from zmqrelay._core.envelope import is_routable
from zmqrelay.testing import LeakCheckingContext

GOOD_CLIENT = b"\xffgood client\xff" * 2
fuzz_settings = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
garbage = st.lists(messages.filter(bool), max_size=8)


@pytest.mark.parametrize("engine", ["python", "libzmq"])
@fuzz_settings
@given(front=garbage, back=garbage)
def test_broker_drops_garbage_on_both_sockets_and_serves_everyone_else(
    engine: Engine, front: list[list[bytes]], back: list[list[bytes]]
) -> None:
    assume(all(message[0] not in (GOOD_CLIENT, b"rogue") for message in back))
    anyio.run(_broker_scenario, engine, front, back)


async def _broker_scenario(
    engine: Engine, front: list[list[bytes]], back: list[list[bytes]]
) -> None:
    context = LeakCheckingContext()
    served: Counter[str] = Counter()
    try:
        async with (
            Broker(
                frontend="inproc://f",
                backend="inproc://b",
                context=context,
                drain_timeout=0,
                engine=engine,
            ) as broker,
            AsyncWorker("inproc://b", echo_handler("w", served), context=context, concurrency=4),
            AsyncClient(
                "inproc://f", context=context, routing_id=GOOD_CLIENT, timeout=10
            ) as client,
        ):
            rogue_client = raw_socket(context, zmq.DEALER, "inproc://f", routing_id=b"rogue")
            rogue_worker = raw_socket(context, zmq.DEALER, "inproc://b")
            replies: list[bytes] = []

            async def rogue_worker_answers() -> None:
                # Relay mode hands requests to every backend peer in turn: the rogue worker
                # must answer them, or it swallows the good client's requests (by design).
                while True:
                    request = await rogue_worker.recv_multipart()
                    await rogue_worker.send_multipart([*request[:-1], b"World " + request[-1]])

            try:
                async with anyio.create_task_group() as tg:

                    async def ask(n: int) -> None:
                        replies.append(await client.request(b"%d" % n))

                    tg.start_soon(rogue_worker_answers)
                    for n in range(10):
                        tg.start_soon(ask, n)
                    for message in front:
                        await rogue_client.send_multipart(message)
                    for message in back:
                        await rogue_worker.send_multipart(message)
                    routable = sum(is_routable([b"rogue", *message]) for message in front)
                    replied = sum(is_routable(message) for message in back)
                    await eventually(lambda: len(replies) == 10)
                    if engine == "python":  # the libzmq engine passes everything, counts frames
                        await eventually(
                            lambda: (
                                broker.statistics().malformed_requests == len(front) - routable
                                and broker.statistics().malformed_replies == len(back) - replied
                                and broker.statistics().unroutable_replies == replied
                            )
                        )
                    tg.cancel_scope.cancel()
            finally:
                rogue_client.close()
                rogue_worker.close()
        assert sorted(replies) == sorted(b"World %d" % n for n in range(10))
        if engine == "python":
            assert broker.statistics().requests_forwarded == 10 + routable
    finally:
        context.check_closed()


@fuzz_settings
@given(noise=st.lists(messages.filter(bool), min_size=1, max_size=6))
def test_client_drops_garbage_replies_and_still_matches_the_real_ones(
    noise: list[list[bytes]],
) -> None:
    anyio.run(_client_scenario, noise)


async def _client_scenario(noise: list[list[bytes]]) -> None:
    context = LeakCheckingContext()
    fake_broker = raw_socket(context, zmq.ROUTER, "inproc://fake", bind=True)
    try:
        async with AsyncClient(
            "inproc://fake", context=context, routing_id=b"c", timeout=10
        ) as client:
            replies: list[bytes] = []
            async with anyio.create_task_group() as tg:

                async def ask(n: int) -> None:
                    replies.append(await client.request(b"%d" % n))

                for n in range(3):
                    tg.start_soon(ask, n)
                for _ in range(3):
                    request = await fake_broker.recv_multipart()
                    for message in noise:
                        await fake_broker.send_multipart([b"c", *message])
                    await fake_broker.send_multipart([*request[:-1], b"re " + request[-1]])
            stats = client.statistics()
            dropped = stats.malformed_replies + stats.foreign_replies + stats.late_replies
            assert stats.replies_received == 3
            assert dropped == 3 * len(noise)
        assert sorted(replies) == [b"re 0", b"re 1", b"re 2"]
    finally:
        fake_broker.close()
        context.check_closed()


@fuzz_settings
@given(noise=st.lists(messages.filter(bool), min_size=1, max_size=6))
def test_worker_drops_garbage_requests_and_still_serves(noise: list[list[bytes]]) -> None:
    anyio.run(_worker_scenario, noise)


async def _worker_scenario(noise: list[list[bytes]]) -> None:
    context = LeakCheckingContext()
    served: Counter[str] = Counter()
    fake_broker = raw_socket(context, zmq.ROUTER, "inproc://fake", bind=True)
    try:
        worker = AsyncWorker(
            "inproc://fake", echo_handler("w", served), context=context, routing_id=b"w"
        )
        async with worker:
            for message in noise:
                await fake_broker.send_multipart([b"w", *message])
            await fake_broker.send_multipart([b"w", b"client", b"", b"real"])
            # Garbage that happens to be a request is answered too; the real one must be.
            with anyio.fail_after(10):
                while (reply := await fake_broker.recv_multipart()) != [
                    b"w",
                    b"client",
                    b"",
                    b"World real",
                ]:
                    assert reply[0] == b"w"
        stats = worker.statistics()
        assert stats.malformed_requests + stats.requests_received == len(noise) + 1
    finally:
        fake_broker.close()
        context.check_closed()
