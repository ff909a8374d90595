"""Majordomo through the load-balancing broker, over tcp on the loopback.

Two kinds of peers: majortomo 0.2.0's own blocking Client and Worker (run in threads), and plain
sockets written here from the specs (7/MDP for 0.1, 18/MDP for 0.2, 8/MMI), frame by frame, so
that the broker is checked against the documents rather than against its own codecs.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import majortomo.error
import pytest
import zmq
import zmq.asyncio
from majortomo import Client, Worker, WorkerRequestsIterator

import peers
from peers import balancer_statistics, eventually, raw_socket
from zmqrelay import AsyncWorker, Broker
from zmqrelay._core import lbwire
from zmqrelay._core.scheduler import SchedulerStatistics
from zmqrelay._core.tag import Status
from zmqrelay.testing import LeakCheckingContext, running

pytestmark = pytest.mark.asyncio

BlockingContext = zmq.Context[zmq.Socket[bytes]]
STOP = b"\x00stop"  # asks a majortomo worker thread of these tests to stop
NO_WORKERS = b"zmqrelay-error: NoWorkers: the broker refused the request: no workers"
WORKER_DIED = b"zmqrelay-error: WorkerDied: the broker refused the request: worker died"


def lb_broker(context: LeakCheckingContext, **options: object) -> Broker:
    return peers.lb_broker(
        context, frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0", **options
    )


def scheduler_of(broker: Broker) -> SchedulerStatistics:
    return balancer_statistics(broker).scheduler


@pytest.fixture
def blocking_context() -> Iterator[BlockingContext]:
    """A context for majortomo's blocking peers; it must terminate once the test is over."""
    context: BlockingContext = zmq.Context()
    yield context
    terminating = threading.Thread(target=context.term, name="majortomo-term", daemon=True)
    terminating.start()
    terminating.join(5)
    if terminating.is_alive():
        pytest.fail("a majortomo peer left a socket open: its context did not terminate")


# -- majortomo's peers, in threads -------------------------------------------------------------

Handler = Callable[[list[bytes]], list[list[bytes]]]
"""A majortomo worker's handler: a request's body in, the reply's parts out (the last FINAL)."""


def ask_majortomo(
    context: BlockingContext, frontend: str, service: bytes, body: list[bytes]
) -> list[list[bytes]]:
    """What a majortomo client gets for one request: every part, the FINAL one last."""
    with Client(frontend, zmq_context=context, zmq_linger=0) as client:
        client.send(service, *body)
        return list(client.recv_all(timeout=3))


def _serve(
    context: BlockingContext,
    backend: str,
    service: bytes,
    handle: Handler,
    failures: list[BaseException],
) -> None:
    # The worker beats often; the broker's default liveness (3 x 2.5 s) never runs out.
    worker = Worker(
        backend, service, heartbeat_interval=0.2, heartbeat_timeout=30,
        zmq_context=context, zmq_linger=500,
    )  # fmt: skip
    requests: Any = WorkerRequestsIterator(worker)  # majortomo leaves its methods untyped
    try:
        for request in requests:
            if request == [STOP]:
                requests.send_reply_final([b"stopped"])
                requests.stop()
                continue
            *parts, final = handle(request)
            for part in parts:
                requests.send_reply_partial(part)
            requests.send_reply_final(final)
    except BaseException as exc:  # the test reports it; a thread's exception would be lost
        failures.append(exc)
        requests.stop()


@asynccontextmanager
async def majortomo_worker(
    context: BlockingContext, broker: Broker, service: bytes, handle: Handler
) -> AsyncIterator[None]:
    """A majortomo worker serving ``service`` in a thread, registered when the block starts."""
    failures: list[BaseException] = []
    before = scheduler_of(broker).workers
    thread = threading.Thread(
        target=_serve, args=(context, broker.endpoints.backend, service, handle, failures)
    )
    thread.start()
    try:
        await eventually(
            lambda: scheduler_of(broker).workers == before + 1 or not thread.is_alive()
        )
        yield
    finally:
        with anyio.fail_after(5):
            while thread.is_alive():
                await anyio.to_thread.run_sync(
                    _ask_to_stop, context, broker.endpoints.frontend, service
                )
                await anyio.to_thread.run_sync(thread.join, 1)
    assert failures == []


def _ask_to_stop(context: BlockingContext, frontend: str, service: bytes) -> None:
    with suppress(majortomo.error.Timeout):  # it may have stopped meanwhile: ask again
        ask_majortomo(context, frontend, service, [STOP])


def echo(request: list[bytes]) -> list[list[bytes]]:
    return [request]


async def test_a_majortomo_client_and_worker_through_the_broker(
    context: LeakCheckingContext, blocking_context: BlockingContext
) -> None:
    async with running(lb_broker(context)) as broker:
        async with majortomo_worker(blocking_context, broker, b"echo", echo):
            frontend = broker.endpoints.frontend
            reply = await anyio.to_thread.run_sync(
                ask_majortomo, blocking_context, frontend, b"echo", [b"hello"]
            )
            assert reply == [[b"hello"]]
            stats = scheduler_of(broker)
            assert (stats.services, stats.workers, stats.delivered) == (1, 1, 1)
        await eventually(lambda: scheduler_of(broker).workers == 0)  # it said DISCONNECT


async def test_a_majortomo_worker_streams_parts_then_the_final_reply(
    context: LeakCheckingContext, blocking_context: BlockingContext
) -> None:
    def stream(request: list[bytes]) -> list[list[bytes]]:
        return [[b"part", *request], [b""], [b"\x00\xff", b"", b"\x80"], [b"final", *request]]

    body = [b"", b"\x00binary\xff", b"", b"text"]
    async with (
        running(lb_broker(context)) as broker,
        majortomo_worker(blocking_context, broker, b"stream", stream),
    ):
        parts = await anyio.to_thread.run_sync(
            ask_majortomo, blocking_context, broker.endpoints.frontend, b"stream", body
        )
        assert parts == stream(body)
        assert scheduler_of(broker).delivered == 1


async def test_two_majortomo_services_side_by_side(
    context: LeakCheckingContext, blocking_context: BlockingContext
) -> None:
    def upper(request: list[bytes]) -> list[list[bytes]]:
        return [[b"upper", *(frame.upper() for frame in request)]]

    def lower(request: list[bytes]) -> list[list[bytes]]:
        return [[b"lower", *(frame.lower() for frame in request)]]

    async with (
        running(lb_broker(context)) as broker,
        majortomo_worker(blocking_context, broker, b"upper", upper),
        majortomo_worker(blocking_context, broker, b"lower", lower),
    ):
        frontend = broker.endpoints.frontend
        replies: dict[bytes, list[list[list[bytes]]]] = {b"upper": [], b"lower": []}

        async def client(service: bytes) -> None:
            for n in range(5):
                body = [b"MiXeD %d" % n, b""]
                reply = await anyio.to_thread.run_sync(
                    ask_majortomo, blocking_context, frontend, service, body
                )
                replies[service].append(reply)

        async with anyio.create_task_group() as clients:
            clients.start_soon(client, b"upper")
            clients.start_soon(client, b"lower")
        assert replies[b"upper"] == [[[b"upper", b"MIXED %d" % n, b""]] for n in range(5)]
        assert replies[b"lower"] == [[[b"lower", b"mixed %d" % n, b""]] for n in range(5)]
        assert scheduler_of(broker).services == 2


async def test_mmi_through_a_majortomo_client(
    context: LeakCheckingContext, blocking_context: BlockingContext
) -> None:
    async def mmi(service: bytes, asked: bytes) -> list[list[bytes]]:
        return await anyio.to_thread.run_sync(
            ask_majortomo, blocking_context, broker.endpoints.frontend, service, [asked]
        )

    async with running(lb_broker(context)) as broker:
        assert await mmi(b"mmi.service", b"echo") == [[b"404"]]
        async with majortomo_worker(blocking_context, broker, b"echo", echo):
            assert await mmi(b"mmi.service", b"echo") == [[b"200"]]
            assert await mmi(b"mmi.service", b"other") == [[b"404"]]
            assert await mmi(b"mmi.workers", b"echo") == [[b"501"]]
        await eventually(lambda: scheduler_of(broker).workers == 0)
        assert await mmi(b"mmi.service", b"echo") == [[b"404"]]
        assert scheduler_of(broker).services == 0  # the broker answers MMI without queueing


# -- peers written from the specs --------------------------------------------------------------


class WorkerSpec(NamedTuple):
    """A worker protocol's frames, as its spec writes them."""

    header: list[bytes]
    ready: bytes
    request: bytes
    partial: bytes | None
    final: bytes
    heartbeat: bytes
    disconnect: bytes

    def command(self, command: bytes, *frames: bytes) -> list[bytes]:
        return [*self.header, command, *frames]


SPECS = {
    # 7/MDP: frame 0 empty, "MDPW01"; READY 1, REQUEST 2, REPLY 3, HEARTBEAT 4, DISCONNECT 5.
    "mdp-0.1": WorkerSpec([b"", b"MDPW01"], b"\x01", b"\x02", None, b"\x03", b"\x04", b"\x05"),
    # 18/MDP: no empty frame; READY 1, REQUEST 2, PARTIAL 3, FINAL 4, HEARTBEAT 5, DISCONNECT 6.
    "mdp-0.2": WorkerSpec([b"MDPW02"], b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x06"),
    # majortomo 0.2.0: 18/MDP's commands after an empty frame.
    "majortomo": WorkerSpec(
        [b"", b"MDPW02"], b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x06"
    ),
}
VARIANTS = list(SPECS)


async def spec_worker(
    context: LeakCheckingContext, broker: Broker, variant: str, service: bytes | None
) -> zmq.asyncio.Socket:
    """A DEALER worker of ``variant``; it says READY for ``service`` unless that is None."""
    sock = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
    if service is not None:
        before = scheduler_of(broker).workers
        await sock.send_multipart(SPECS[variant].command(SPECS[variant].ready, service))
        await eventually(lambda: scheduler_of(broker).workers == before + 1)
    return sock


async def next_command(sock: zmq.asyncio.Socket, variant: str) -> tuple[bytes, list[bytes]]:
    """The next command a worker reads other than HEARTBEAT, and the frames after it."""
    spec = SPECS[variant]
    with anyio.fail_after(3):
        while True:
            frames = await sock.recv_multipart()
            assert frames[: len(spec.header)] == spec.header, frames
            command, rest = frames[len(spec.header)], frames[len(spec.header) + 1 :]
            if command != spec.heartbeat:
                return command, rest
            assert rest == []


async def take_request(sock: zmq.asyncio.Socket, variant: str) -> tuple[bytes, list[bytes]]:
    """A REQUEST's client address and body."""
    command, rest = await next_command(sock, variant)
    assert command == SPECS[variant].request
    address, empty, *body = rest
    assert empty == b""
    return address, body


async def receive(sock: zmq.asyncio.Socket) -> list[bytes]:
    with anyio.fail_after(3):
        return await sock.recv_multipart()


def client_request(variant: str, service: bytes, body: list[bytes]) -> list[bytes]:
    """What a client sends: a 0.1 client's REQ socket adds the empty frame itself."""
    if variant == "mdp-0.1":
        return [b"MDPC01", service, *body]
    if variant == "mdp-0.2":
        return [b"MDPC02", b"\x01", service, *body]
    return [b"", b"MDPC02", b"\x02", service, *body]


def client_socket(
    context: LeakCheckingContext, broker: Broker, variant: str
) -> zmq.asyncio.Socket:
    kind = zmq.REQ if variant == "mdp-0.1" else zmq.DEALER
    return raw_socket(context, kind, broker.endpoints.frontend)


def final_reply(variant: str, service: bytes, body: list[bytes]) -> list[bytes]:
    """A client's view of the one reply (or the FINAL part) the broker sends it."""
    if variant == "mdp-0.1":
        return [b"MDPC01", service, *body]
    if variant == "mdp-0.2":
        return [b"MDPC02", b"\x03", service, *body]
    return [b"", b"MDPC02", b"\x04", *body]


async def test_mdp01_req_client_and_dealer_worker(context: LeakCheckingContext) -> None:
    spec = SPECS["mdp-0.1"]
    async with running(lb_broker(context, heartbeat_interval=0.1, liveness=20)) as broker:
        worker = await spec_worker(context, broker, "mdp-0.1", b"echo")
        client = client_socket(context, broker, "mdp-0.1")
        try:
            # The broker beats while the worker is idle; the worker beats back.
            assert await receive(worker) == spec.command(spec.heartbeat)
            await worker.send_multipart(spec.command(spec.heartbeat))
            body = [b"hello", b"", b"\x00\xff"]
            await client.send_multipart([b"MDPC01", b"echo", *body])
            address, received = await take_request(worker, "mdp-0.1")
            assert received == body
            await worker.send_multipart(spec.command(spec.final, address, b"", b"re", *body))
            assert await receive(client) == [b"MDPC01", b"echo", b"re", *body]
            # DISCONNECT: the broker forgets the worker, and sends it nothing more (spec 7).
            await worker.send_multipart(spec.command(spec.disconnect))
            await eventually(lambda: scheduler_of(broker).workers == 0)
            assert scheduler_of(broker).dead_workers == 0
            # Prove that silence: register again; the first thing to come is a HEARTBEAT.
            await worker.send_multipart(spec.command(spec.ready, b"echo"))
            assert await receive(worker) == spec.command(spec.heartbeat)
        finally:
            client.close()
            worker.close()


async def test_mdp02_client_and_worker_speak_without_empty_frames(
    context: LeakCheckingContext,
) -> None:
    spec = SPECS["mdp-0.2"]
    async with running(lb_broker(context)) as broker:
        worker = await spec_worker(context, broker, "mdp-0.2", b"stream")
        client = client_socket(context, broker, "mdp-0.2")
        try:
            await client.send_multipart([b"MDPC02", b"\x01", b"stream", b"q", b""])
            address, body = await take_request(worker, "mdp-0.2")
            assert body == [b"q", b""]
            assert spec.partial is not None
            await worker.send_multipart(spec.command(spec.partial, address, b"", b"p1", b""))
            assert await receive(client) == [b"MDPC02", b"\x02", b"stream", b"p1", b""]
            await worker.send_multipart(spec.command(spec.partial, address, b"", b"\x00\xff"))
            assert await receive(client) == [b"MDPC02", b"\x02", b"stream", b"\x00\xff"]
            await worker.send_multipart(spec.command(spec.final, address, b"", b"end"))
            assert await receive(client) == [b"MDPC02", b"\x03", b"stream", b"end"]
            stats = scheduler_of(broker)
            assert (stats.delivered, stats.in_flight, stats.free_credits) == (1, 0, 1)
        finally:
            client.close()
            worker.close()


@pytest.mark.parametrize("client_variant", ["mdp-0.1", "majortomo"])
async def test_parts_of_a_streamed_reply_are_joined_for_a_client_that_takes_one_reply(
    context: LeakCheckingContext, client_variant: str
) -> None:
    """An 0.1 client served by a 0.2 worker; majortomo's client streams, and gets the parts."""
    spec = SPECS["mdp-0.2"]
    assert spec.partial is not None
    async with running(lb_broker(context)) as broker:
        worker = await spec_worker(context, broker, "mdp-0.2", b"stream")
        client = client_socket(context, broker, client_variant)
        try:
            await client.send_multipart(client_request(client_variant, b"stream", [b"q"]))
            address, _ = await take_request(worker, "mdp-0.2")
            await worker.send_multipart(spec.command(spec.partial, address, b"", b"p1", b""))
            await worker.send_multipart(spec.command(spec.partial, address, b"", b"\x00\xff"))
            await worker.send_multipart(spec.command(spec.final, address, b"", b"end"))
            if client_variant == "mdp-0.1":
                joined = [b"MDPC01", b"stream", b"p1", b"", b"\x00\xff", b"end"]
                assert await receive(client) == joined
            else:
                assert await receive(client) == [b"", b"MDPC02", b"\x03", b"p1", b""]
                assert await receive(client) == [b"", b"MDPC02", b"\x03", b"\x00\xff"]
                assert await receive(client) == [b"", b"MDPC02", b"\x04", b"end"]
        finally:
            client.close()
            worker.close()


@pytest.mark.parametrize("client_variant", ["mdp-0.2", "majortomo"])
async def test_a_02_client_served_by_a_01_worker(
    context: LeakCheckingContext, client_variant: str
) -> None:
    spec = SPECS["mdp-0.1"]
    async with running(lb_broker(context)) as broker:
        worker = await spec_worker(context, broker, "mdp-0.1", b"old")
        client = client_socket(context, broker, client_variant)
        try:
            await client.send_multipart(client_request(client_variant, b"old", [b"q", b""]))
            address, body = await take_request(worker, "mdp-0.1")
            assert body == [b"q", b""]
            await worker.send_multipart(spec.command(spec.final, address, b"", b"r", b""))
            assert await receive(client) == final_reply(client_variant, b"old", [b"r", b""])
        finally:
            client.close()
            worker.close()


VIOLATIONS = [
    "reply before READY",
    "READY for mmi.service",  # spec 8/MMI: the broker disconnects such a worker
    "second READY",
    "unknown command",
    "malformed reply",
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("violation", VIOLATIONS)
async def test_a_protocol_violation_disconnects_the_offender_and_nobody_else(
    context: LeakCheckingContext, variant: str, violation: str
) -> None:
    spec = SPECS[variant]
    async with running(lb_broker(context)) as broker:
        registers = violation not in ("reply before READY", "READY for mmi.service")
        offender = await spec_worker(context, broker, variant, b"svc" if registers else None)
        victim = client_socket(context, broker, "mdp-0.1")
        client = client_socket(context, broker, "mdp-0.2")
        healthy: zmq.asyncio.Socket | None = None
        try:
            token = bytes(8)
            if registers:  # it holds a request when it breaks the protocol
                await victim.send_multipart(client_request("mdp-0.1", b"svc", [b"q"]))
                token, _ = await take_request(offender, variant)
            message = {
                "reply before READY": spec.command(spec.final, token, b"", b"r"),
                "second READY": spec.command(spec.ready, b"svc"),
                "unknown command": spec.command(b"\x09"),
                "malformed reply": spec.command(spec.final, token, b"no delimiter", b"r"),
                "READY for mmi.service": spec.command(spec.ready, b"mmi.service"),
            }[violation]
            await offender.send_multipart(message)
            assert await receive(offender) == spec.command(spec.disconnect)
            if registers:  # what it held ends in the documented error frame
                (error,) = (await receive(victim))[2:]
                assert error.startswith(WORKER_DIED)
            stats = broker.statistics()
            assert stats.malformed_replies == 1
            assert scheduler_of(broker).workers == 0
            # The broker goes on serving everyone else.
            healthy = await spec_worker(context, broker, "mdp-0.2", b"svc")
            await client.send_multipart(client_request("mdp-0.2", b"svc", [b"still"]))
            address, body = await take_request(healthy, "mdp-0.2")
            await healthy.send_multipart(
                SPECS["mdp-0.2"].command(SPECS["mdp-0.2"].final, address, b"", *body)
            )
            assert await receive(client) == final_reply("mdp-0.2", b"svc", [b"still"])
        finally:
            for sock in (offender, victim, client, healthy):
                if sock is not None:
                    sock.close()


@asynccontextmanager
async def lively_worker(
    broker: Broker, context: LeakCheckingContext, interval: float = 0.05
) -> AsyncIterator[None]:
    """A worker of another service that beats every ``interval`` (and so stays alive)."""
    lively = await spec_worker(context, broker, "mdp-0.2", b"other")

    async def beat() -> None:
        while True:
            await lively.send_multipart(SPECS["mdp-0.2"].command(SPECS["mdp-0.2"].heartbeat))
            await anyio.sleep(interval)

    try:
        async with anyio.create_task_group() as beating:
            beating.start_soon(beat)
            yield
            beating.cancel_scope.cancel()
    finally:
        lively.close()


async def test_a_silent_idle_mdp_worker_is_dead_after_liveness_heartbeat_intervals(
    context: LeakCheckingContext,
) -> None:
    spec = SPECS["mdp-0.1"]
    interval, liveness = 0.1, 3
    options = {"heartbeat_interval": interval, "liveness": liveness, "queue_timeout": 0.1}
    async with running(lb_broker(context, **options)) as broker, lively_worker(broker, context):
        silent = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
        client = client_socket(context, broker, "mdp-0.1")
        try:
            registered = anyio.current_time()
            await silent.send_multipart(spec.command(spec.ready, b"echo"))
            # It hears heartbeats, says nothing, and is forgotten (and told so).
            assert await next_command(silent, "mdp-0.1") == (spec.disconnect, [])
            waited = anyio.current_time() - registered
            assert interval * liveness <= waited < interval * liveness + 2
            stats = scheduler_of(broker)
            assert (stats.dead_workers, stats.workers) == (1, 1)
            await client.send_multipart(client_request("mdp-0.1", b"echo", [b"anyone?"]))
            reply = await receive(client)
            assert reply == [b"MDPC01", b"echo", NO_WORKERS + b" (service 'echo')"]
        finally:
            silent.close()
            client.close()


async def test_a_silent_mdp_worker_holding_a_request_is_judged_once_the_request_ends(
    context: LeakCheckingContext,
) -> None:
    """Majordomo workers say nothing while their handler runs: the deadline ends the request."""
    spec = SPECS["mdp-0.1"]
    interval, liveness, request_timeout = 0.1, 3, 0.5
    options = {"heartbeat_interval": interval, "liveness": liveness}
    broker = lb_broker(context, request_timeout=request_timeout, **options)
    async with running(broker), lively_worker(broker, context):
        silent = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
        client = client_socket(context, broker, "mdp-0.1")
        try:
            await silent.send_multipart(spec.command(spec.ready, b"echo"))
            sent = anyio.current_time()
            await client.send_multipart(client_request("mdp-0.1", b"echo", [b"hello?"]))
            await take_request(silent, "mdp-0.1")  # it takes the request, then says nothing
            reply = await receive(client)
            # Not WORKER_DIED after liveness x interval: the request's own deadline ended it.
            assert anyio.current_time() - sent >= request_timeout
            assert reply[:2] == [b"MDPC01", b"echo"]
            (error,) = reply[2:]
            assert error.startswith(b"zmqrelay-error: DeadlineExceeded: ")
            # Then its silence counts: it is forgotten, and told so.
            assert await next_command(silent, "mdp-0.1") == (spec.disconnect, [])
            stats = scheduler_of(broker)
            assert (stats.dead_workers, stats.workers, stats.refused) == (1, 1, 1)
        finally:
            silent.close()
            client.close()


@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_request_for_a_service_nobody_offers_ends_in_the_plain_error_frame(
    context: LeakCheckingContext, variant: str
) -> None:
    queue_timeout = 0.2
    async with running(lb_broker(context, queue_timeout=queue_timeout)) as broker:
        client = client_socket(context, broker, variant)
        try:
            sent = anyio.current_time()
            await client.send_multipart(client_request(variant, b"nobody", [b"anyone?"]))
            reply = await receive(client)
            assert anyio.current_time() - sent >= queue_timeout
            assert reply == final_reply(variant, b"nobody", [NO_WORKERS + b" (service 'nobody')"])
            stats = scheduler_of(broker)
            assert (stats.refused, stats.services, stats.queued) == (1, 0, 0)
        finally:
            client.close()


async def test_a_majortomo_client_gets_the_plain_error_frame_too(
    context: LeakCheckingContext, blocking_context: BlockingContext
) -> None:
    async with running(lb_broker(context, queue_timeout=0.1)) as broker:
        reply = await anyio.to_thread.run_sync(
            ask_majortomo, blocking_context, broker.endpoints.frontend, b"nobody", [b"x"]
        )
        assert reply == [[NO_WORKERS + b" (service 'nobody')"]]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_an_unknown_mdp_worker_is_told_to_disconnect_in_its_own_variant(
    context: LeakCheckingContext, variant: str
) -> None:
    """As when the broker restarted: a worker it never met beats; it is told to register."""
    spec = SPECS[variant]
    async with running(lb_broker(context)) as broker:
        stranger = await spec_worker(context, broker, variant, None)
        try:
            await stranger.send_multipart(spec.command(spec.heartbeat))
            assert await receive(stranger) == spec.command(spec.disconnect)
            await stranger.send_multipart(spec.command(spec.final, bytes(8), b"", b"late"))
            assert await receive(stranger) == spec.command(spec.disconnect)
            assert broker.statistics().malformed_replies == 1  # the reply nobody asked for
        finally:
            stranger.close()


async def test_a_worker_may_register_for_another_service(context: LeakCheckingContext) -> None:
    """A zmqrelay worker may say READY again, for another service: it then serves that one."""
    async with running(lb_broker(context)) as broker:
        worker = raw_socket(context, zmq.DEALER, broker.endpoints.backend)
        client = client_socket(context, broker, "mdp-0.2")
        try:
            for service in (b"first", b"second"):
                await worker.send_multipart(lbwire.encode_ready(1, service))
                assert await receive(worker) == [
                    lbwire.PROTOCOL + lbwire.HEARTBEAT
                ]  # acknowledged
            await eventually(lambda: scheduler_of(broker).services == 1)
            await client.send_multipart(client_request("mdp-0.2", b"second", [b"q"]))
            assignment = lbwire.decode_from_broker(await receive(worker))
            assert isinstance(assignment, lbwire.Assignment)
            await worker.send_multipart(
                lbwire.encode_reply(assignment.reply_to, Status.OK, [b"from second"])
            )
            assert await receive(client) == final_reply("mdp-0.2", b"second", [b"from second"])
            assert broker.statistics().malformed_replies == 0
        finally:
            client.close()
            worker.close()


@pytest.mark.parametrize("redeliveries", [0, 1])
async def test_a_worker_that_disconnects_mid_request(
    context: LeakCheckingContext, redeliveries: int
) -> None:
    """Its request ends in the error frame, or goes to another worker if the broker allows."""
    spec = SPECS["mdp-0.1"]
    async with running(lb_broker(context, redeliveries=redeliveries)) as broker:
        leaving = await spec_worker(context, broker, "mdp-0.1", b"svc")
        client = client_socket(context, broker, "mdp-0.1")
        other: zmq.asyncio.Socket | None = None
        try:
            await client.send_multipart(client_request("mdp-0.1", b"svc", [b"q"]))
            await take_request(leaving, "mdp-0.1")
            other = await spec_worker(context, broker, "mdp-0.2", b"svc")
            await leaving.send_multipart(spec.command(spec.disconnect))
            if redeliveries:
                address, body = await take_request(other, "mdp-0.2")
                assert body == [b"q"]
                final = SPECS["mdp-0.2"].final
                await other.send_multipart(SPECS["mdp-0.2"].command(final, address, b"", b"r"))
                assert await receive(client) == [b"MDPC01", b"svc", b"r"]
                assert scheduler_of(broker).redelivered == 1
            else:
                (error,) = (await receive(client))[2:]
                assert error.startswith(WORKER_DIED)
            assert scheduler_of(broker).workers == 1
        finally:
            for sock in (leaving, client, other):
                if sock is not None:
                    sock.close()


@pytest.mark.parametrize(
    "garbage",
    [
        [b"MDPC02", b"\x02", b"svc", b"x"],  # 0.2: PARTIAL is the broker's command
        [b"MDPC02", b"\x01", b"svc"],  # 0.2: a REQUEST without a body
        [b"", b"MDPC02", b"\x01", b"svc", b"x"],  # majortomo's REQUEST is 0x02
        [b"", b"MDPC01", b"svc"],  # 0.1: no body
    ],
)
async def test_a_malformed_client_request_is_counted_and_dropped(
    context: LeakCheckingContext, garbage: list[bytes]
) -> None:
    async with running(lb_broker(context)) as broker:
        worker = await spec_worker(context, broker, "mdp-0.2", b"svc")
        client = client_socket(context, broker, "mdp-0.2")
        try:
            await client.send_multipart(garbage)
            await client.send_multipart(client_request("mdp-0.2", b"svc", [b"good"]))
            address, body = await take_request(worker, "mdp-0.2")
            assert body == [b"good"]  # the first request the worker sees is the good one
            final = SPECS["mdp-0.2"].final
            await worker.send_multipart(SPECS["mdp-0.2"].command(final, address, b"", b"r"))
            # And the first reply the client sees answers it: nothing came for the garbage.
            assert await receive(client) == final_reply("mdp-0.2", b"svc", [b"r"])
            assert broker.statistics().malformed_requests == 1
        finally:
            client.close()
            worker.close()


STREAM_PARTS = 400


async def stream_to_a_late_reader(broker: Broker, context: LeakCheckingContext) -> list[bytes]:
    """A worker streams 400 parts of 1 KiB to an MDP/0.2 client whose queues hold 10
    messages and that reads only once the worker is done; the frames it reads, FINAL last."""

    async def flood(request: bytes) -> AsyncIterator[bytes]:
        for number in range(STREAM_PARTS):
            yield b"%08d" % number + bytes(1024)

    async with running(broker):
        worker = AsyncWorker(broker.endpoints.backend, flood, service="flood", context=context)
        client = raw_socket(context, zmq.DEALER, broker.endpoints.frontend)
        client.rcvhwm = 10
        try:
            async with running(worker):
                await client.send_multipart(client_request("mdp-0.2", b"flood", [b"go"]))
                await eventually(lambda: worker.statistics().replies_sent == 1)
                read: list[list[bytes]] = []
                while not read or read[-1][1] != b"\x03":  # until the FINAL
                    read.append(await receive(client))
        finally:
            client.close()
    return [frames[3] for frames in read]


async def test_a_slow_client_that_reads_gets_a_stream_larger_than_its_queues_whole(
    context: LeakCheckingContext,
) -> None:
    broker = lb_broker(context, high_water_mark=10)
    bodies = await stream_to_a_late_reader(broker, context)
    assert [int(body[:8]) for body in bodies] == list(range(STREAM_PARTS))
    assert broker.statistics().congested_replies == 0


async def test_a_stream_that_overflows_a_slow_client_ends_in_an_error_never_with_a_gap(
    context: LeakCheckingContext,
) -> None:
    # Small queues on both sides, and the broker keeps only 20 parts waiting (queue_limit).
    broker = lb_broker(context, high_water_mark=10, queue_limit=20)
    *parts, error = await stream_to_a_late_reader(broker, context)
    received = [int(body[:8]) for body in parts]
    # What came is a prefix of the stream, with no gap; the end says parts were lost.
    assert received == list(range(len(received)))
    assert len(received) < STREAM_PARTS - 1
    assert error.startswith(b"zmqrelay-error: BrokerBusy: ")
    assert b"lost" in error
    assert (broker.statistics().congested_replies or 0) > 0
