"""The worker: connects to the broker's backend and answers requests with an async handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import AsyncGeneratorType
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
import anyio.abc
import tenacity
import zmq
import zmq.asyncio
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.service import (
    Service,
    boundary_errors,
    chosen_provider,
    curve_options,
    require_tracing,
    tracing_wanted,
)
from zmqrelay._aio.zmqerrors import UNUSABLE
from zmqrelay._core import lbwire, mdp, tag
from zmqrelay._core.throttle import Report, Throttle
from zmqrelay._core.worker import Answerable, Request, WorkerStatistics, decode_request
from zmqrelay._core.worker_link import Link, Session
from zmqrelay.errors import LocalProtocolError, NoWorkers, RemoteProtocolError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from zmqrelay._aio.tracing import WorkerTracing

logger = logging.getLogger("zmqrelay.worker")
_MALFORMED_LOG_INTERVAL = 10.0
"""Seconds between two warnings about malformed requests (a flood of them logs one), and
between two errors about handlers that raised the same exception type."""
_MALFORMED = "malformed_requests"

Mode = Literal["relay", "load-balancing"]
Protocol = Literal["zmqrelay", "mdp-0.1", "mdp-0.2", "majortomo"]
"""How a worker speaks to its broker: zmqrelay's own dialects, or a Majordomo variant."""

_deadline: ContextVar[float | None] = ContextVar("zmqrelay_request_deadline", default=None)


_redelivery: ContextVar[bool] = ContextVar("zmqrelay_redelivery", default=False)


def is_redelivery() -> bool:
    """Whether the request being handled was sent before, to a worker that died.

    Call it from a worker's handler. Only a load-balancing broker sends a request again (when
    the broker or the request allows redeliveries), so a handler whose work has effects can
    check whether they may already have happened.
    """
    return _redelivery.get()


def time_left() -> float | None:
    """Seconds left before the request being handled passes its deadline.

    Call it from a worker's handler: ``None`` when the client set no timeout (a plain client,
    or ``timeout=None``). When it reaches 0 the handler is cancelled, and the worker answers
    with a ``DeadlineExceeded`` error (the client has stopped waiting by then).
    """
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - anyio.current_time())


Handler = Callable[[bytes], Awaitable[bytes]] | Callable[[bytes], AsyncIterator[bytes]]
"""A handler of single-frame requests: ``async def handle(request: bytes) -> bytes``, or an
async generator ``async def handle(request: bytes)`` that yields the parts of a streamed reply."""
FramesHandler = (
    Callable[[list[bytes]], Awaitable[Sequence[bytes]]]
    | Callable[[list[bytes]], AsyncIterator[Sequence[bytes]]]
)
"""A multipart handler: ``async def handle(frames: list[bytes]) -> Sequence[bytes]``, or an
async generator yielding the parts of a streamed reply, each a sequence of frames."""


class AsyncWorker(Service):
    """Serve requests from a broker's backend with an async handler.

    The worker connects (never binds) a DEALER socket to ``endpoint`` and hands each request's
    body to ``handler``, up to ``concurrency`` at once, sending every reply back with the
    request's own envelope. It speaks to any broker that forwards ``[envelope..., b"",
    body...]`` to its workers, such as zmqrelay's relay mode or the ZeroMQ guide's ``rrbroker``.

    A handler that raises does not stop the worker: a zmqrelay client receives a
    :class:`~zmqrelay.RemoteError` naming the exception, a plain REQ client a single frame
    ``b"zmqrelay-error: <type>: <message>"``; the exception is logged on the
    ``zmqrelay.worker`` logger. A request whose handler is cancelled because the worker stops
    is answered the same way, with the type ``"WorkerStopped"``.

    Args:
        endpoint: the broker's backend, e.g. ``"tcp://localhost:5560"``, or a list of
            several brokers' backends: the worker then keeps a socket per broker (in
            load-balancing mode registering, heartbeating and taking ``concurrency`` credits
            with each), answers each request through the socket it came from, and serves
            them all from one pool of ``concurrency`` handlers. A broker that dies costs only
            the requests it held. See "Several brokers" in ``docs/modes.md``.
        handler: ``async def handle(request: bytes) -> bytes``, or with ``frames=True``
            ``async def handle(frames: list[bytes]) -> Sequence[bytes]``.
        frames: pass the request's body frames as a list instead of a single ``bytes``. A
            single-frame handler answers a multipart request with an error reply.
        concurrency: how many requests are handled at once; the rest wait in the socket
            (with several load-balancing brokers, each may hand it this many: what the
            handlers cannot take at once waits in the worker).
        context: the ``zmq.asyncio.Context``; defaults to the process-wide instance.
        routing_id: this worker's identity on the wire (by default libzmq picks one).
        drain_timeout: on :meth:`aclose`, how long requests in hand may take to finish before
            their handlers are cancelled.
        linger: seconds unsent replies may still go out after the socket closes.
        mode: ``"relay"`` for a relay-mode broker or any broker that forwards
            ``[envelope..., b"", body...]``; ``"load-balancing"`` for a load-balancing broker:
            the worker registers with ``concurrency`` credits, heartbeats every
            ``heartbeat_interval`` seconds, and registers again when the broker tells it to or
            has been silent for ``liveness`` intervals (after a restart, say). The default is
            ``"relay"``, or ``"load-balancing"`` when a ``service`` or a Majordomo
            ``protocol`` is given.
        heartbeat_interval: seconds between heartbeats (load-balancing mode).
        liveness: heartbeat intervals of broker silence before registering again.
        service: the name of the service this worker offers (load-balancing mode; ``None``
            is the broker's default service, the one plain requests go to). Names starting
            with ``mmi.`` belong to the broker.
        protocol: ``"zmqrelay"`` (the default) speaks zmqrelay's worker protocol, with
            credits, deadlines and error replies; ``"mdp-0.1"``, ``"mdp-0.2"`` or
            ``"majortomo"`` speak Majordomo, for any Majordomo broker of that version (one
            request at a time: ``concurrency`` must be 1).
        tracing: OpenTelemetry spans (needs ``zmqrelay[tracing]``): a span of kind SERVER
            around each handler call, continuing the trace the request came with, so that
            the handler's own spans nest under it. ``None`` (the default): on when the
            application has set a tracer provider by the time the worker starts; ``True``:
            on, with the global provider; a ``TracerProvider``: on, with that one;
            ``False``: off. A tracing worker in load-balancing mode asks the broker for
            the requests' trace context (a broker older than this feature refuses to be
            asked: the worker then registers again without asking). See
            ``docs/observability.md``.

    Raises:
        ImportError: ``tracing`` is asked for without ``opentelemetry-api`` installed.

    A handler written as an async generator streams its reply: each part it yields reaches
    the client as it comes (:meth:`AsyncClient.stream <zmqrelay.AsyncClient.stream>`, or
    Majordomo 0.2's PARTIAL), the last one as the final reply; a part is sent once the next
    is ready, or the handler ends. Clients that take one reply get the parts joined.

    Example::

        async def handle(request: bytes) -> bytes:
            return request.upper()

        await AsyncWorker("tcp://localhost:5560", handle, concurrency=16).run()

    """

    _kind = "worker"

    @overload
    def __init__(
        self,
        endpoint: str | Sequence[str],
        handler: Handler,
        *,
        frames: Literal[False] = False,
        concurrency: int = 1,
        context: zmq.asyncio.Context | None = None,
        routing_id: bytes | None = None,
        drain_timeout: float = 5.0,
        linger: float = 1.0,
        mode: Mode | None = None,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        service: str | bytes | None = None,
        protocol: Protocol = "zmqrelay",
        curve_keys: CurveKeyPair | str | Path | None = None,
        curve_server_key: CurveKeyPair | bytes | str | Path | None = None,
        tracing: bool | TracerProvider | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        endpoint: str | Sequence[str],
        handler: FramesHandler,
        *,
        frames: Literal[True],
        concurrency: int = 1,
        context: zmq.asyncio.Context | None = None,
        routing_id: bytes | None = None,
        drain_timeout: float = 5.0,
        linger: float = 1.0,
        mode: Mode | None = None,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        service: str | bytes | None = None,
        protocol: Protocol = "zmqrelay",
        curve_keys: CurveKeyPair | str | Path | None = None,
        curve_server_key: CurveKeyPair | bytes | str | Path | None = None,
        tracing: bool | TracerProvider | None = None,
    ) -> None: ...

    def __init__(
        self,
        endpoint: str | Sequence[str],
        handler: Handler | FramesHandler,
        *,
        frames: bool = False,
        concurrency: int = 1,
        context: zmq.asyncio.Context | None = None,
        routing_id: bytes | None = None,
        drain_timeout: float = 5.0,
        linger: float = 1.0,
        mode: Mode | None = None,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        service: str | bytes | None = None,
        protocol: Protocol = "zmqrelay",
        curve_keys: CurveKeyPair | str | Path | None = None,
        curve_server_key: CurveKeyPair | bytes | str | Path | None = None,
        tracing: bool | TracerProvider | None = None,
    ) -> None:
        self._socket_options = curve_options(curve_keys, curve_server_key)
        require_tracing(tracing)
        self._tracing_setting = tracing
        self._tracing: WorkerTracing | None = None
        self._endpoints = _endpoints(endpoint)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        variant = mdp.as_variant(protocol)
        if variant is None and protocol != "zmqrelay":
            raise ValueError(f"unknown protocol {protocol!r}")
        if mode is None:
            mode = "relay" if service is None and variant is None else "load-balancing"
        if mode not in ("relay", "load-balancing"):
            raise ValueError(f"mode must be 'relay' or 'load-balancing', not {mode!r}")
        if mode == "relay" and (service is not None or variant is not None):
            raise ValueError("services and Majordomo need mode='load-balancing'")
        service_name = service.encode() if isinstance(service, str) else service or b""
        if mdp.is_mmi(service_name):
            raise ValueError("service names starting with 'mmi.' belong to the broker")
        if variant is not None and not service_name:
            raise ValueError("a Majordomo worker offers a named service: pass service=")
        if variant is not None and concurrency != 1:
            raise ValueError("a Majordomo worker takes one request at a time: concurrency=1")
        super().__init__()
        self._handler: Callable[[Any], Any] = handler
        self._frames = frames
        self._concurrency = concurrency
        self._context = context
        self._routing_id = routing_id
        self._drain_timeout = drain_timeout
        self._linger = linger
        self._in_flight = 0
        self._requests_received = 0
        self._replies_sent = 0
        self._handler_errors = 0
        self._malformed_requests = 0
        self._malformed_log = Throttle(_MALFORMED_LOG_INTERVAL)
        self._error_log = Throttle(_MALFORMED_LOG_INTERVAL)
        """Handlers that raised, by exception type: a client that makes the handler raise
        on every request fills no disk."""
        self._refused_requests = 0
        self._aborted = False
        self._run_scope: anyio.CancelScope | None = None
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        """Receiving tasks waiting for a free handler, woken one at a time, first come first
        served: with several brokers in relay mode, each gets its turn."""
        self._receivers_waiting = 0
        """Receiving tasks waiting for a free handler, or woken and not yet running."""
        self._idle = anyio.Event()
        self._queue: deque[_Held] = deque()
        self._mode: Mode = mode
        self._heartbeat_interval = heartbeat_interval
        self._liveness = liveness
        # One socket per broker, in every mode: a DEALER connected to several brokers deals
        # what it sends round-robin, replies included, whichever broker a request came from.
        self._links = [
            Link(
                endpoint,
                heartbeat_interval=heartbeat_interval,
                liveness=liveness,
                patient=variant is not None,
            )
            for endpoint in self._endpoints
        ]
        self._backends: list[_Backend] = []
        self._free: deque[asyncio.Future[None]] = deque()
        """Handler tasks waiting for a request."""
        self._spread_pending = False
        """Whether :meth:`_spread` is due to run: one free handler has been woken for the
        requests queued since, and the rest are woken only if that one cannot take them."""
        self._scope_type: type[anyio.CancelScope] = anyio.CancelScope
        self._slots: list[_Slot] = []
        """The handler tasks' slots, whose deadlines :meth:`_check_deadlines` checks."""
        self._watched = math.inf
        """When :meth:`_check_deadlines` is due (``inf``: not due)."""
        self._watch_handle: asyncio.TimerHandle | None = None
        """The event loop's own cancel scope class, made without asking which loop runs
        (anyio's ``CancelScope()`` looks that up each time: a quarter of a request's cost)."""
        self._service = service_name
        self._variant = variant
        self._said_goodbye = False

    def __repr__(self) -> str:
        endpoints = self._endpoints[0] if len(self._endpoints) == 1 else list(self._endpoints)
        return (
            f"<AsyncWorker {self._state} endpoint={endpoints!r} "
            f"in_flight={self._in_flight}/{self._concurrency}>"
        )

    def statistics(self) -> WorkerStatistics:
        """A snapshot of the worker's counters."""
        links = tuple(link.statistics() for link in self._links)
        return WorkerStatistics(
            requests_received=self._requests_received,
            replies_sent=self._replies_sent,
            handler_errors=self._handler_errors,
            malformed_requests=self._malformed_requests,
            refused_requests=self._refused_requests,
            in_flight=self._in_flight,
            concurrency=self._concurrency,
            requests_dropped=sum(link.requests_dropped for link in links),
            links=links,
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and serve requests until cancelled or closed.

        Reports readiness through ``task_status`` once the sockets are connecting (libzmq
        completes the connections in the background and keeps retrying while a broker is not
        up). On cancellation, handlers in progress are cancelled at once; after
        :meth:`aclose` they first get ``drain_timeout`` seconds to finish. The sockets are
        closed before this returns. A worker runs once.

        Raises:
            EndpointError: an endpoint is not a valid address.
            ClosedError: the worker already ran.
            BrokenError: a socket failed (its context was terminated, say).

        """
        if tracing_wanted(self._tracing_setting):
            from zmqrelay._aio.tracing import WorkerTracing

            self._tracing = WorkerTracing(chosen_provider(self._tracing_setting), self._service)
        self._claim()
        self._scope_type = type(anyio.CancelScope())
        try:
            with contextlib.ExitStack() as stack:
                context = sockets.get_context(self._context)
                for link in self._links:
                    self._backends.append(stack.enter_context(self._connected(context, link)))
                with boundary_errors(self._kind), anyio.CancelScope() as self._run_scope:
                    if self._aborted:
                        self._run_scope.cancel()
                    await self._serve_backends(task_status)
        finally:
            self._finish()

    @contextlib.contextmanager
    def _connected(self, context: zmq.asyncio.Context, link: Link) -> Iterator[_Backend]:
        """A DEALER connected to the link's broker, closed on the way out with the linger set."""
        sock = sockets.open_socket(
            context, zmq.DEALER, routing_id=self._routing_id, options=self._socket_options
        )
        try:
            sockets.connect(sock, link.endpoint)
            with sockets.Pump(sock, f"the {self._kind}'s socket") as pump:
                ask_context = self._tracing is not None and self._variant is None
                yield _Backend(link, pump, ask_context=ask_context)
        finally:
            sockets.close(sock, self._linger)

    async def _serve_backends(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        backends = self._backends
        balancing = self._mode == "load-balancing"
        try:
            async with anyio.create_task_group() as task_group:
                for _ in range(self._concurrency):
                    task_group.start_soon(self._handle_queued)
                intakes = [anyio.CancelScope() for _ in backends]
                for backend, intake in zip(backends, intakes, strict=True):
                    task_group.start_soon(self._receive, backend, intake)
                    if balancing:
                        task_group.start_soon(self._keep_registered, backend)
                self._report_ready(task_status, None)
                await self._close_requested.wait()
                self._state = "draining"
                for intake in intakes:
                    intake.cancel()
                for backend in backends:
                    if balancing and self._variant is None:
                        with contextlib.suppress(*UNUSABLE):
                            backend.pump.try_send(lbwire.encode_command_to_broker(lbwire.LEAVING))
                    # In relay mode the broker keeps handing this worker requests until it
                    # disconnects, which it cannot do while replies are still to be sent:
                    # answer them at once rather than let their clients time out.
                    task_group.start_soon(self._refuse_arriving, backend)
                if not self._in_flight:
                    self._goodbye()
                self._idle = anyio.Event()
                if self._in_flight:
                    with anyio.move_on_after(self._drain_timeout):
                        await self._idle.wait()
                task_group.cancel_scope.cancel()
        finally:
            if self._watch_handle is not None:
                self._watch_handle.cancel()
                self._watch_handle, self._watched = None, math.inf
            self._last_word()
            while self._queue:  # taken from the socket, never started
                held = self._queue.popleft()
                self._refuse_held(held)
                held.backend.link.release(held.session, dropped=held.session.forgotten)
                self._in_flight -= 1
            for backend in backends:
                self._refuse_waiting(backend)
            if self._variant is not None:
                self._goodbye()
            elif balancing and not self._aborted:
                for backend in backends:
                    with contextlib.suppress(*UNUSABLE):
                        backend.pump.try_send(self._command("disconnect"))

    async def _receive(self, backend: _Backend, intake: anyio.CancelScope) -> None:
        # Requests go to a queue served by `concurrency` long-lived tasks: far cheaper than
        # a task per request. The socket is read only while a task is free to take the next.
        batch = range(max(self._concurrency, 64))
        # In load-balancing mode the broker sends no more than the credits it was given, and
        # its heartbeats must be read however busy the worker is: no gate then.
        limit = self._concurrency if self._mode == "relay" else math.inf
        pump, link, queue, free = backend.pump, backend.link, self._queue, self._free
        loop = asyncio.get_running_loop()
        clock, slot_waiters = loop.time, self._slot_waiters
        turn_over = False
        with intake:
            while True:
                while self._in_flight >= limit or turn_over:
                    turn_over = False
                    waiter: asyncio.Future[None] = loop.create_future()
                    slot_waiters.append(waiter)
                    self._receivers_waiting += 1
                    try:
                        await waiter
                    finally:
                        self._receivers_waiting -= 1
                now = clock()
                for _ in batch:
                    if self._in_flight >= limit:
                        break
                    frames = pump.try_recv()
                    if frames is None:
                        if slot_waiters:
                            # Nothing here: another broker's socket may take the free handler.
                            self._wake_receiver()
                        await pump.readable()
                        break
                    try:
                        request = self._decode(backend, frames, now)
                    except RemoteProtocolError as exc:
                        self._malformed(f"dropped a malformed request: {exc}")
                        continue
                    if request is None:  # a command from a load-balancing broker
                        continue
                    if isinstance(request, Request) and mdp.named_service(request.body):
                        self._unrouted(pump, request)
                        continue
                    if not self._frames and len(request.body) != 1:
                        self._misfit(pump, request)
                        continue
                    self._requests_received += 1
                    self._in_flight += 1
                    queue.append(_Held(request, backend, link.take(), now))
                    if free and not self._spread_pending:
                        self._spread_pending = True
                        self._wake_handlers(1)
                        loop.call_soon(self._spread)
                    if self._receivers_waiting:
                        # Other brokers' sockets wait for a handler too: one request a turn.
                        self._wake_receiver()
                        turn_over = True
                        break
                else:
                    await checkpoint()

    def _wake_handlers(self, count: int) -> None:
        """Wake up to ``count`` free handler tasks."""
        free = self._free
        while count and free:
            waiter = free.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _spread(self) -> None:
        """Wake a free handler for each request still queued after the first woken one ran.

        A handler that answers without waiting serves the whole queue in its one turn: waking
        a task per request would only wake tasks that find the queue empty (most of the
        worker's cost per request). A handler that waits leaves the rest of the queue here,
        one loop iteration later.
        """
        self._spread_pending = False
        self._wake_handlers(len(self._queue))

    def _wake_receiver(self) -> None:
        """Let the receiving task that has waited longest for a free handler read on."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _command(self, which: Literal["heartbeat", "disconnect"]) -> list[bytes]:
        if self._variant is not None:
            return mdp.encode_to_broker(self._variant, which)
        command = lbwire.HEARTBEAT if which == "heartbeat" else lbwire.DISCONNECT
        return lbwire.encode_command_to_broker(command)

    def _decode(self, backend: _Backend, frames: list[bytes], now: float) -> Answerable | None:
        if self._mode == "relay":
            return decode_request(frames)
        message: Answerable | str
        if self._variant is not None:
            message = mdp.decode_from_broker(self._variant, frames)
        else:
            message = lbwire.decode_from_broker(frames)
        answered = backend.link.heard(now)
        if answered:
            backend.heard.set()
        if not isinstance(message, str):
            return message
        if message == "disconnect":  # the broker forgot this worker (it restarted, say)
            if answered and backend.ask_context:
                # The broker refused a READY that asks for trace context: it is older than
                # that feature. Registering without asking works with it.
                backend.ask_context = False
                logger.info(
                    "the broker at %s takes no trace context: registering without it",
                    backend.link.endpoint,
                )
            # Whatever it sent before, it has ended: the requests it held are dropped.
            backend.end_session(forgotten=True)
            backend.register_now.set()
        return None

    async def _keep_registered(self, backend: _Backend) -> None:
        """Register with one broker, heartbeat, and register again when it seems gone."""
        interval = self._heartbeat_interval
        # Registering again after the broker went away backs off exponentially, with jitter,
        # so that many workers do not all knock at once on a broker that is restarting.
        register = tenacity.AsyncRetrying(
            wait=tenacity.wait_exponential(multiplier=interval, max=min(30.0, 32 * interval))
            + tenacity.wait_random(0, interval),
            retry=tenacity.retry_if_result(lambda heard: not heard),
        )
        link, pump = backend.link, backend.pump
        while True:
            backend.register_now = anyio.Event()
            await register(self._register_once, backend)
            while True:
                with anyio.move_on_after(interval):
                    await backend.register_now.wait()
                if backend.register_now.is_set():
                    break  # the broker forgot this worker
                if link.gone(anyio.current_time()):
                    backend.end_session(forgotten=False)
                    break  # the broker is gone, restarting, or stalled
                pump.try_send(self._command("heartbeat"))

    async def _register_once(self, backend: _Backend) -> bool:
        """Say READY; true if the broker answered (it heartbeats at once) within an interval.

        A Majordomo broker does not answer READY: the worker assumes it is registered.
        """
        link, pump = backend.link, backend.pump
        backend.heard = anyio.Event()
        if self._variant is not None:
            if link.registrations:
                self._reconnect(backend)
            link.register(anyio.current_time())
            pump.try_send(mdp.encode_ready(self._variant, self._service))
            return True
        link.register(anyio.current_time())
        pump.try_send(
            lbwire.encode_ready(self._concurrency, self._service, context=backend.ask_context)
        )
        with anyio.move_on_after(self._heartbeat_interval):
            await backend.heard.wait()
        return backend.heard.is_set()

    def _reconnect(self, backend: _Backend) -> None:
        """Drop the connection to the broker and make a new one: a new session.

        Majordomo workers must do so before they register again (specs 7 and 18): the broker
        then sees a new peer, and nothing queued for the old session reaches the new one.
        """
        pump, endpoint = backend.pump, backend.link.endpoint
        try:
            pump.sync.disconnect(endpoint)
        except zmq.ZMQError as exc:  # the transport cannot disconnect: keep the connection
            logger.debug("could not drop the connection to %s: %s", endpoint, exc)
            return
        pump.sync.connect(endpoint)
        pump.kick()

    async def _handle_queued(self) -> None:
        queue, free = self._queue, self._free
        loop = asyncio.get_running_loop()
        slot = _Slot()
        self._slots.append(slot)
        try:
            while True:
                # One cancel scope for the requests this task handles, not one each (a
                # scope per request was a fifth of a request's cost): _expire cancels it
                # when a request's deadline passes, and the next request gets a new one.
                with self._scope_type() as slot.scope:
                    while not slot.expired:
                        while not queue:
                            waiter: asyncio.Future[None] = loop.create_future()
                            free.append(waiter)
                            await waiter
                        await self._serve(queue.popleft(), slot)
                slot.expired = False
                held, slot.held = slot.held, None
                assert held is not None
                await self._answer_expired(held)
        finally:
            if slot.held is not None:  # stopped before answering the request that expired
                self._done(slot.held, dropped=False)
            self._slots.remove(slot)

    async def _serve(self, held: _Held, slot: _Slot) -> None:
        backend, session = held.backend, held.session
        dropped = session.forgotten  # while it waited: nobody would get the reply
        slot.held = held
        try:
            if dropped:
                return
            request = held.request
            try:
                tracing = self._tracing
                if tracing is None:
                    reply = await self._answer(held, slot)
                else:
                    span, token = tracing.start(request.context, request.redelivery)
                    stopped = True  # unless the handler's answer comes
                    try:
                        reply = await self._answer(held, slot)
                        stopped = False
                    finally:
                        tracing.end(span, token, stopped)
            except anyio.get_cancelled_exc_class():
                if not slot.expired:
                    # The worker is stopping: tell the client now rather than let it time out.
                    self._refuse_held(held)
                raise
            if slot.expired:
                return  # the handler ignored being cancelled: its deadline has passed
            if await backend.send(reply, session):
                self._replies_sent += 1
            else:
                dropped = True
        finally:
            if not slot.expired:  # else done once its client is told (_answer_expired)
                slot.held = None
                self._done(held, dropped=dropped)

    async def _answer_expired(self, held: _Held) -> None:
        """Tell the client that the handler of ``held`` ran past the request's deadline."""
        dropped = True
        try:
            message = f"the handler ran past {held.request.timeout} s"
            error = held.request.error("DeadlineExceeded", message)
            if await held.backend.send(error, held.session):
                self._replies_sent += 1
                dropped = False
        finally:
            self._done(held, dropped=dropped)

    def _done(self, held: _Held, *, dropped: bool) -> None:
        """``held`` is answered, or ``dropped``: its handler is free."""
        held.backend.link.release(held.session, dropped=dropped)
        self._in_flight -= 1
        if self._slot_waiters:
            self._wake_receiver()
        if not self._in_flight:
            self._idle.set()
            if self._state == "draining":
                self._goodbye()

    async def _answer(self, held: _Held, slot: _Slot) -> list[bytes]:
        """The reply to ``held``: the handler's, or an error, within the client's timeout."""
        request = held.request
        _redelivery.set(request.redelivery)
        timeout = request.timeout
        if timeout is None:
            return await self._call(held)
        # The client's clock started when the request came (it may have waited in the queue
        # behind the requests of other brokers).
        deadline = held.arrived + timeout
        reset = _deadline.set(deadline)
        try:
            if self._tracing is None:
                slot.deadline = deadline
                if deadline < self._watched:
                    self._watch(deadline)
                try:
                    return await self._call(held)
                finally:
                    slot.deadline = math.inf
            # Tracing: the error is recorded in the handler's span, so the deadline is
            # enforced here, in the handler's task.
            with self._scope_type(deadline=deadline):
                return await self._call(held)
            # Reached only when the deadline cancelled the handler: the client has given up.
            self._handler_errors += 1
            message = f"the handler ran past {timeout} s"
            if self._tracing is not None:
                self._tracing.failed(None, "DeadlineExceeded", message)
            return request.error("DeadlineExceeded", message)
        finally:
            _deadline.reset(reset)

    def _watch(self, deadline: float) -> None:
        """Check the handlers' deadlines at ``deadline`` (and no later than it)."""
        if self._watch_handle is not None:
            self._watch_handle.cancel()
        self._watched = deadline
        self._watch_handle = asyncio.get_running_loop().call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Expire the handlers past their request's deadline; watch for the next one."""
        self._watch_handle, self._watched = None, math.inf
        now = asyncio.get_running_loop().time()
        nearest = math.inf
        for slot in self._slots:
            if slot.deadline <= now:
                self._expire(slot)
            elif slot.deadline < nearest:
                nearest = slot.deadline
        if nearest < math.inf:
            self._watch(nearest)

    def _expire(self, slot: _Slot) -> None:
        """A handler ran past its request's deadline: cancel it (its task then answers)."""
        slot.deadline = math.inf
        slot.expired = True
        self._handler_errors += 1
        slot.scope.cancel()

    async def _call(self, held: _Held) -> list[bytes]:
        request = held.request
        try:
            if self._frames:
                called = self._handler(request.body)
            else:
                called = self._handler(request.body[0])
            if isinstance(called, AsyncGeneratorType):
                return await self._stream(held, called)
            result = await called
            return request.reply(result if self._frames else [result])
        except Exception as exc:
            return self._handler_failed(request, exc)
        except anyio.get_cancelled_exc_class() as exc:
            if sockets.being_cancelled():
                raise
            # The handler raised CancelledError itself (it awaited something that was
            # cancelled): a handler error like any other, not the worker stopping.
            return self._handler_failed(request, exc)

    async def _stream(self, held: _Held, parts: AsyncGenerator[Any, Any]) -> list[bytes]:
        """Send each part the handler yields but the last, and return the last as the reply.

        A part goes once the next one is ready, since only then is it known not to be the
        last. Parts the client cannot take alone are joined into the reply instead. If the
        handler raises, the parts it yielded still go out, ahead of the error.
        """
        previous: list[bytes] | None = None
        joined: list[bytes] = []
        async with contextlib.aclosing(parts):
            try:
                async for part in parts:
                    if previous is not None:
                        ready, previous = previous, None
                        await self._send_part(held, ready, joined)
                    previous = list(part) if self._frames else [part]
            except Exception:
                # The handler failed after yielding its last part: that part goes out too,
                # then the error, so the client sees everything the handler produced.
                if previous is not None:
                    await self._send_part(held, previous, joined)
                raise
        if previous is None:
            raise LocalProtocolError("a streaming handler must yield at least one part")
        return held.request.reply([*joined, *previous])

    async def _send_part(self, held: _Held, part: list[bytes], joined: list[bytes]) -> None:
        """Send ``part`` of a streamed reply, or keep it in ``joined`` if it cannot go alone."""
        message = held.request.partial(part)
        if message is None:
            joined.extend(part)
        else:
            await held.backend.send(message, held.session)

    def _misfit(self, pump: sockets.Pump, request: Answerable) -> None:
        """Answer at once a request the handler cannot take (several frames for one).

        It is the peer's fault, not the handler's: counted as malformed, logged now and then
        without a traceback, and answered with an error if the socket takes it now.
        """
        reason = (
            f"this worker's handler takes a single-frame request, got {len(request.body)} frames"
        )
        self._malformed(f"refused a request: {reason}")
        with contextlib.suppress(*UNUSABLE):
            if pump.try_send(request.error(RemoteProtocolError.__name__, reason)):
                self._replies_sent += 1

    def _unrouted(self, pump: sockets.Pump, request: Request) -> None:
        """Refuse a request for a named service that a relay-mode broker passed on as is."""
        service = mdp.named_service(request.body)
        assert service is not None
        reason = (
            f"no worker serves {service.decode('utf-8', 'replace')!r}: the broker is in relay "
            "mode, which does not route services (start it with mode='load-balancing')"
        )
        self._malformed(f"refused a request: {reason}")
        with contextlib.suppress(*UNUSABLE):
            refusal = request.refuse(tag.Status.NO_WORKERS, NoWorkers.__name__, reason)
            if pump.try_send(refusal):
                self._replies_sent += 1

    def _malformed(self, what: str) -> None:
        """Count a malformed request; log one warning in a while, saying how many came."""
        self._malformed_requests += 1
        line = self._malformed_log.add(_MALFORMED, asyncio.get_running_loop().time())
        if line is not None:
            logger.warning(
                "%d malformed request(s) since the last report; the last: %s",
                line.occurrences,
                what,
                extra={
                    "kind": _MALFORMED,
                    "count": line.occurrences,
                    "total": self._malformed_requests,
                    "seconds": line.since,
                },
            )

    def _handler_failed(self, request: Answerable, exc: BaseException) -> list[bytes]:
        self._handler_errors += 1
        kind = type(exc).__qualname__
        line = self._error_log.add(kind, asyncio.get_running_loop().time())
        if line is not None:
            # With the traceback of the last one, at most once per interval per type.
            _log_handler_errors(line, exc)
        if self._tracing is not None:
            self._tracing.failed(exc)
        return request.error(type(exc).__name__, str(exc))

    def _last_word(self) -> None:
        """Log what the throttles still hold back, once, as the worker stops."""
        now = asyncio.get_running_loop().time()
        for line in self._error_log.flush(now):
            _log_handler_errors(line, None)
        for line in self._malformed_log.flush(now):
            logger.warning(
                "%d malformed request(s) since the last report",
                line.occurrences,
                extra={"kind": _MALFORMED, "count": line.occurrences, "seconds": line.since},
            )

    def _goodbye(self) -> None:
        """A stopping Majordomo worker says DISCONNECT once its last reply has gone.

        Majordomo has no LEAVING: the broker hands a worker that answered the next request at
        once. Saying DISCONNECT right after the last reply leaves it the least time to; a
        request it still sends is not answered (nothing may follow DISCONNECT): the broker
        ends it, or sends it to another worker.
        """
        if self._variant is None or self._said_goodbye or self._aborted:
            return
        self._said_goodbye = True
        for backend in self._backends:
            with contextlib.suppress(*UNUSABLE):
                backend.pump.try_send(self._command("disconnect"))

    def _refuse_held(self, held: _Held) -> None:
        """Refuse a request taken from the socket, unless its broker went away since."""
        if not held.session.forgotten:
            self._refuse(held.backend.pump, held.request)

    def _refuse(self, pump: sockets.Pump, request: Answerable) -> None:
        """Answer ``request`` with a ``WorkerStopped`` error, without waiting."""
        if self._aborted or self._said_goodbye:
            return
        with contextlib.suppress(*UNUSABLE):
            if pump.try_send(request.error("WorkerStopped", "the worker stopped")):
                self._refused_requests += 1

    async def _refuse_arriving(self, backend: _Backend) -> None:
        while True:
            await backend.pump.readable()
            if self._refuse_waiting(backend):
                await checkpoint()

    def _refuse_waiting(self, backend: _Backend) -> bool:
        """Refuse the requests waiting in the socket; true if a whole batch was refused."""
        if self._aborted:
            return False
        pump = backend.pump
        for _ in range(512):
            try:
                frames = pump.try_recv()
            except UNUSABLE:  # a socket gone with its context
                return False
            if frames is None:
                return False
            try:
                request = self._decode(backend, frames, anyio.current_time())
            except RemoteProtocolError as exc:
                self._malformed(f"dropped a malformed request: {exc}")
                continue
            if request is not None:
                self._refuse(pump, request)
        return True

    async def aclose(self) -> None:
        """Stop gracefully: take no more requests, let those in hand finish, then close.

        Requests the broker still hands this worker meanwhile are answered at once with a
        ``WorkerStopped`` error, so their clients need not wait for a timeout. Handlers still
        running after ``drain_timeout`` seconds are cancelled, and their clients get the same
        error. Safe to call more than once.
        """
        await super().aclose()

    async def abort(self) -> None:
        """Stop at once, as a crashed process would, and wait until closed.

        Handlers are cancelled, nothing more is sent (no replies, no ``WorkerStopped``
        errors), and messages not yet sent are dropped. Clients of the requests in hand learn
        of it only from their timeouts. Meant for fault-injection tests (see
        :mod:`zmqrelay.testing`); use :meth:`aclose` to stop a worker properly.
        """
        if self._state == "new":
            self._finish()
            return
        self._aborted = True
        self._linger = 0.0
        if self._run_scope is not None:
            self._run_scope.cancel()
        await self._closed.wait()


def _log_handler_errors(line: Report, exc: BaseException | None) -> None:
    """Handlers raised ``line.kind``: the first at once, then a line per interval at most."""
    if line.since is None:
        message = "handler raised while serving a request (then at most a line per %g s for %s)"
        args: tuple[object, ...] = (_MALFORMED_LOG_INTERVAL, line.kind)
    else:
        message = "handlers raised %s %d time(s) in %.1f s" + ("; the last:" if exc else "")
        args = (line.kind, line.occurrences, line.since)
    logger.error(
        message,
        *args,
        exc_info=exc,
        extra={
            "kind": "handler_errors",
            "error_type": line.kind,
            "count": line.occurrences,
            "seconds": line.since,
        },
    )


def _endpoints(endpoint: str | Sequence[str]) -> tuple[str, ...]:
    """``endpoint`` as a tuple of one or more distinct endpoints.

    Raises:
        ValueError: no endpoint, or one given twice.
    """
    endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
    if not endpoints:
        raise ValueError("a worker needs at least one endpoint")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"an endpoint is given twice in {list(endpoints)}")
    return endpoints


class _Backend:
    """One socket to one broker's backend, and its :class:`Link`.

    What the tasks serving it wait on lives here; what the link decides lives in the link.
    """

    __slots__ = ("_waiting", "ask_context", "heard", "link", "pump", "register_now")

    def __init__(self, link: Link, pump: sockets.Pump, *, ask_context: bool) -> None:
        self.link = link
        self.pump = pump
        self.ask_context = ask_context
        """Whether its READY asks the broker for trace context."""
        self.register_now = anyio.Event()
        """Set when the broker said DISCONNECT: register again at once."""
        self.heard = anyio.Event()
        """Set when the broker answered the last READY."""
        self._waiting: set[anyio.CancelScope] = set()
        """The sends waiting for room in the socket."""

    async def send(self, frames: list[bytes], session: Session) -> bool:
        """Send ``frames`` of a request of ``session``; false if they were dropped.

        A send waits only while the broker's queue in the socket is full (a broker that does
        not read), and never past the end of its session: a dead broker holds up no handler
        for longer than its silence takes to notice.
        """
        if session.forgotten:
            return False
        if self.pump.try_send(frames):
            return True
        if not session.open:
            return False
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                await self.pump.send(frames)
                return True
            finally:
                self._waiting.discard(scope)
        return False

    def end_session(self, *, forgotten: bool) -> None:
        """The broker said DISCONNECT (``forgotten``) or went silent: sends wait no more."""
        self.link.end(forgotten=forgotten)
        for scope in self._waiting:
            scope.cancel()


class _Slot:
    """What one handler task is doing: the request it handles, and until when."""

    __slots__ = ("deadline", "expired", "held", "scope")

    def __init__(self) -> None:
        self.held: _Held | None = None
        self.deadline = math.inf
        """When the client of :attr:`held` stops waiting (``inf``: never, or none held)."""
        self.scope = anyio.CancelScope()
        """The cancel scope the task handles requests in, cancelled on a deadline."""
        self.expired = False
        """Whether the deadline of :attr:`held` passed: the scope is cancelled, the client
        is told once the task has left it."""


class _Held:
    """A request taken from a broker, waiting for a handler or being handled."""

    __slots__ = ("arrived", "backend", "request", "session")

    def __init__(
        self, request: Answerable, backend: _Backend, session: Session, arrived: float
    ) -> None:
        self.request = request
        self.backend = backend
        self.session = session
        self.arrived = arrived
