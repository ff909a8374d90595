"""zmqrelay.testing: the harness and its fault injection, through the plugin's fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import zmq

import zmqrelay
from peers import eventually
from zmqrelay import AsyncClient, RequestTimeout
from zmqrelay.pytest_plugin import WorkerFactory
from zmqrelay.testing import (
    BrokerHarness,
    LeakCheckingContext,
    SocketLeakError,
    relay_harness,
    running,
)

pytestmark = pytest.mark.asyncio


async def echo(request: bytes) -> bytes:
    return request


async def test_fixtures_give_a_broker_a_worker_and_a_client(
    relay_broker: BrokerHarness, relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    assert relay_broker.endpoints.frontend.startswith("inproc://")
    worker = await relay_worker(echo, concurrency=4)
    assert await relay_client.request(b"ping") == b"ping"
    # The default engine counts frames: client id, request tag, delimiter, body.
    stats = relay_broker.statistics()
    assert stats.mode == "relay"
    assert stats.reply_frames == 4
    assert worker.statistics().replies_sent == 1
    assert "endpoints=" in repr(relay_broker)


async def test_a_slowed_worker_makes_requests_time_out(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    worker = await relay_worker(echo)
    worker.slow_down(10)
    with pytest.raises(RequestTimeout):
        await relay_client.request(b"slow", timeout=0.05)
    worker.slow_down(0)
    worker.resume()


async def test_a_paused_worker_is_silent_until_resumed(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    worker = await relay_worker(echo)
    worker.pause()
    assert worker.paused
    replies: list[bytes] = []
    async with anyio.create_task_group() as tg:

        async def ask() -> None:
            replies.append(await relay_client.request(b"held"))

        tg.start_soon(ask)
        await eventually(lambda: worker.statistics().in_flight == 1)
        assert replies == []
        worker.resume()
    assert replies == [b"held"]


async def test_a_killed_worker_answers_nothing(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    worker = await relay_worker(echo)
    worker.pause()
    async with anyio.create_task_group() as tg:
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await relay_client.request(b"doomed", timeout=0.3)
            except RequestTimeout as exc:
                outcome.append(exc)

        tg.start_soon(ask)
        await eventually(lambda: worker.statistics().in_flight == 1)
        await worker.kill()
    assert len(outcome) == 1  # a timeout, not a WorkerStopped reply: it died mid-request
    assert worker.statistics().replies_sent == 0
    assert "closed" in repr(worker.worker)


@pytest.mark.zmqrelay(transport="tcp")
async def test_restarting_the_broker_on_the_same_endpoints(
    relay_broker: BrokerHarness, relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(echo)
    assert await relay_client.request(b"before") == b"before"
    endpoints = relay_broker.endpoints
    first = relay_broker.broker
    await relay_broker.restart_broker()
    assert relay_broker.endpoints == endpoints
    assert relay_broker.broker is not first
    # Worker and client reconnect by themselves; a request sent meanwhile may be lost.
    with anyio.fail_after(10):
        while True:
            try:
                assert await relay_client.request(b"after", timeout=0.5) == b"after"
                break
            except RequestTimeout:
                continue


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
async def test_the_factory_starts_brokers_on_any_transport(
    relay_broker_factory: object, transport: str
) -> None:
    start = relay_broker_factory
    assert callable(start)
    harness: BrokerHarness = await start(transport=transport, drain_timeout=0)
    assert harness.endpoints.frontend.startswith(f"{transport}://")
    await harness.start_worker(echo)
    client = await harness.connect_client()
    assert await client.request(b"x") == b"x"


async def test_the_harness_works_without_pytest_fixtures() -> None:
    context = LeakCheckingContext()
    async with relay_harness(context=context) as harness:
        await harness.start_worker(echo)
        client = await harness.connect_client()
        assert await client.request(b"script") == b"script"
    context.check_closed()


async def test_an_external_harness_has_no_broker_of_its_own(
    relay_broker: BrokerHarness, context: LeakCheckingContext
) -> None:
    async with relay_harness(context=context, external=relay_broker.endpoints) as harness:
        assert harness.external
        with pytest.raises(RuntimeError, match="external broker"):
            harness.statistics()
        with pytest.raises(RuntimeError, match="external broker"):
            await harness.restart_broker()
        await harness.start_worker(echo)
        client = await harness.connect_client()
        assert await client.request(b"via external") == b"via external"


async def test_leak_checks_name_the_socket_and_where_it_was_opened() -> None:
    context = LeakCheckingContext()
    async with running(AsyncClient("inproc://nowhere", context=context)):
        pass
    forgotten = context.socket(zmq.PUB)
    forgotten.bind("inproc://forgotten")
    with pytest.raises(SocketLeakError) as caught:
        context.check_closed()
    message = str(caught.value)
    assert "1 zmq socket(s) left open: PUB socket" in message
    assert "inproc://forgotten" in message
    assert "test_testing.py" in message


async def test_a_context_held_by_a_lingering_socket_names_it(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path / 'late'}"
    context = LeakCheckingContext()
    quick = context.socket(zmq.DEALER)
    quick.connect(endpoint)
    quick.send(b"dropped at once", zmq.NOBLOCK)
    quick.close(linger=0)
    held = context.socket(zmq.DEALER)
    held.connect(endpoint)
    held.send(b"queued, nobody to take it", zmq.NOBLOCK)
    held.close()  # libzmq's default linger: wait for ever to deliver it
    with pytest.raises(SocketLeakError) as caught:
        context.check_closed(deadline=0.1)
    message = str(caught.value)
    assert message.startswith(
        "the zmq context did not terminate within 0.1 s: 1 socket(s) closed with a linger "
    )
    assert f"DEALER socket last bound/connected at {endpoint}, opened at " in message
    assert "test_testing.py" in message
    assert "closed with linger=-1 (for ever)" in message
    assert "close it with linger=0, or read or deliver its queued messages" in message
    # Deliver the message: the context terminates (and the test leaves nothing behind).
    with zmq.Context() as other, other.socket(zmq.ROUTER) as late:
        late.linger, late.rcvtimeo = 0, 5000
        late.bind(endpoint)
        assert late.recv_multipart()[1] == b"queued, nobody to take it"
        await eventually(lambda: context.closed)


async def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        async with relay_harness(transport="udp"):
            pass


async def test_an_inproc_broker_cannot_be_restarted(relay_broker: BrokerHarness) -> None:
    with pytest.raises(RuntimeError, match="inproc broker cannot be restarted"):
        await relay_broker.restart_broker()


async def test_running_stops_the_service_when_the_block_raises() -> None:
    context = LeakCheckingContext()
    client = AsyncClient("inproc://nowhere", context=context)
    with pytest.raises(KeyError):
        async with running(client):
            raise KeyError("boom")
    assert "closed" in repr(client)
    context.check_closed()


async def count(request: bytes) -> AsyncIterator[bytes]:
    for number in range(int(request)):
        yield b"%d" % number


@pytest.mark.zmqrelay(mode="load-balancing")
async def test_fixtures_serve_named_services_and_streams_and_inject_faults_into_them(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    worker = await relay_worker(count, service="count")
    assert [part async for part in relay_client.stream("count", b"3")] == [b"0", b"1", b"2"]
    worker.slow_down(10)  # the harness's fault injection wraps streaming handlers too
    with pytest.raises(RequestTimeout):
        await relay_client.request_frames("count", [b"2"], timeout=0.05)
    assert worker.statistics().requests_received == 2


class Counter:
    """A streaming handler that is an object, not an async-generator function."""

    def __call__(self, request: bytes) -> AsyncIterator[bytes]:
        return count(request)


@pytest.mark.zmqrelay(mode="load-balancing")
async def test_any_callable_that_returns_an_async_generator_streams_through_the_fixtures(
    relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(Counter(), service="count")
    assert [part async for part in relay_client.stream("count", b"2")] == [b"0", b"1"]


@pytest.mark.zmqrelay(mode="load-balancing")
async def test_workers_follow_a_load_balancing_broker(
    relay_broker: BrokerHarness, relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    assert relay_broker.mode == "load-balancing"
    await relay_worker(echo)  # no mode given: the broker's
    assert await relay_client.request(b"registered", timeout=2) == b"registered"
    stats = relay_broker.statistics()
    assert stats.mode == "load-balancing"
    assert stats.scheduler.workers == 1


@pytest.mark.zmqrelay(mode="load-balancing", heartbeat_interval=0.1, liveness=3)
async def test_workers_heartbeat_as_often_as_the_broker_expects(
    relay_broker: BrokerHarness, relay_worker: WorkerFactory, relay_client: AsyncClient
) -> None:
    await relay_worker(echo)
    assert await relay_client.request(b"first", timeout=1) == b"first"
    # The broker judges a worker silent for 0.3 s dead; one heartbeating every 2.5 s (a
    # worker's own default) would be. Silence is what this test is about, so it waits.
    await anyio.sleep(1.0)
    assert await relay_client.request(b"still there", timeout=1) == b"still there"
    stats = relay_broker.statistics()
    assert stats.mode == "load-balancing"
    assert stats.scheduler.dead_workers == 0


async def test_a_relay_broker_refuses_workers_that_need_load_balancing(
    relay_broker: BrokerHarness, relay_worker: WorkerFactory
) -> None:
    assert relay_broker.mode == "relay"
    with pytest.raises(ValueError, match=r'zmqrelay\(mode="load-balancing"\)'):
        await relay_worker(echo, service="echo")
    with pytest.raises(ValueError, match="relay mode"):
        await relay_worker(echo, service="echo", protocol="mdp-0.1")
    with pytest.raises(ValueError, match="relay mode"):
        await relay_broker.connect_client(protocol="mdp-0.2")
    # An explicit mode is the test's own choice: the harness lets it be.
    await relay_worker(echo, service="echo", mode="load-balancing")


@pytest.mark.zmqrelay(mode="load-balancing")
async def test_an_external_harness_takes_the_mode_and_no_other_broker_option(
    relay_broker: BrokerHarness, context: LeakCheckingContext
) -> None:
    with pytest.raises(ValueError, match="drain_timeout: options of an in-process broker"):
        async with relay_harness(
            context=context, external=relay_broker.endpoints, drain_timeout=0
        ):
            pass
    async with relay_harness(context=context, external=relay_broker.endpoints) as unknown:
        assert unknown.mode is None
    async with relay_harness(
        context=context, external=relay_broker.endpoints, mode="load-balancing"
    ) as harness:
        assert harness.mode == "load-balancing"
        await harness.start_worker(echo)  # follows the mode it was told
        client = await harness.connect_client()
        assert await client.request(b"told", timeout=2) == b"told"


@pytest.mark.parametrize("mode", ["relay", "load-balancing"])
async def test_a_curve_harness_serves_its_own_peers_and_refuses_strangers(
    context: LeakCheckingContext, mode: str
) -> None:
    async with relay_harness(context=context, curve=True, mode=mode) as harness:
        assert harness.curve is not None
        assert harness.endpoints.frontend.startswith("tcp://")  # inproc is never secured
        await harness.start_worker(echo)
        client = await harness.connect_client()
        assert await client.request(b"sealed") == b"sealed"
        stranger = await harness.connect_client(
            curve_keys=harness.curve.stranger("mallory"), timeout=0.3
        )
        with pytest.raises(RequestTimeout):
            await stranger.request(b"let me in")
        security = harness.statistics().security
        assert security is not None
        assert security.clients_refused >= 1


async def test_a_key_allowed_while_running_is_served(context: LeakCheckingContext) -> None:
    async with relay_harness(context=context, curve=True, transport="ipc") as harness:
        await harness.start_worker(echo)
        bob = await harness.connect_client(curve_keys=harness.allow_key("client", "bob"))
        assert await bob.request(b"new here") == b"new here"
        with pytest.raises(zmqrelay.KeyFileError, match="never overwritten"):
            harness.allow_key("client", "bob")


async def test_curve_harness_mistakes_are_usage_errors(
    context: LeakCheckingContext, relay_broker: BrokerHarness, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="does not secure inproc"):
        async with relay_harness(context=context, curve=True, transport="inproc"):
            pass
    with pytest.raises(ValueError, match="external broker"):
        async with relay_harness(context=context, curve=True, external=relay_broker.endpoints):
            pass
    with pytest.raises(ValueError, match="one too many"):
        async with relay_harness(context=context, curve=True, client_keys=tmp_path):
            pass
    with pytest.raises(RuntimeError, match="does not use CURVE"):
        relay_broker.allow_key("worker", "w2")
