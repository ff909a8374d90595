"""The worker's handler runner: takes requests from its brokers' sockets and answers them.

``concurrency`` long-lived tasks serve one queue, fed by one receiving task per broker's
socket; one timer watches the handlers' deadlines; streamed replies, error replies and the
refusals of a stopping worker are sent from here. Which protocol a socket speaks is the
:class:`~zmqrelay._aio.backends.Backend`'s business: the runner only asks it to read a message
(a request, or a signal it passes back) and to send an answer within the request's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from types import AsyncGeneratorType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._aio.zmqerrors import UNUSABLE
from zmqrelay._core.registration import Signal
from zmqrelay._core.throttle import Report, Throttle
from zmqrelay._core.worker import Answerable, Unanswerable
from zmqrelay._core.worker_link import Session
from zmqrelay.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from zmqrelay._aio.backends import Backend
    from zmqrelay._aio.tracing import WorkerTracing

logger = logging.getLogger("zmqrelay.worker")
_MALFORMED_LOG_INTERVAL = 10.0
"""Seconds between two warnings about malformed requests (a flood of them logs one), and
between two errors about handlers that raised the same exception type."""
_MALFORMED = "malformed_requests"

Handler = Callable[[bytes], Awaitable[bytes]] | Callable[[bytes], AsyncIterator[bytes]]
"""A handler of single-frame requests: ``async def handle(request: bytes) -> bytes``, or an
async generator ``async def handle(request: bytes)`` that yields the parts of a streamed reply."""
FramesHandler = (
    Callable[[list[bytes]], Awaitable[Sequence[bytes]]]
    | Callable[[list[bytes]], AsyncIterator[Sequence[bytes]]]
)
"""A multipart handler: ``async def handle(frames: list[bytes]) -> Sequence[bytes]``, or an
async generator yielding the parts of a streamed reply, each a sequence of frames."""

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


class HandlerRunner:
    """Runs a worker's handler on the requests its backends' receiving tasks take.

    The worker starts :meth:`serve` ``concurrency`` times and :meth:`receive` once per
    backend, and calls :meth:`stopped` once they have all ended.
    """

    def __init__(
        self,
        handler: Handler | FramesHandler,
        *,
        frames: bool,
        concurrency: int,
        gated: bool,
    ) -> None:
        """Run ``handler`` in ``concurrency`` tasks.

        ``gated``: read a socket only while a handler is free to take the next request (a
        broker that sends no more than the worker's credits needs no gate, and its
        heartbeats must be read however busy the worker is).
        """
        self._handler: Callable[[Any], Any] = handler
        self._frames = frames
        self.concurrency = concurrency
        self._limit = concurrency if gated else math.inf
        self.tracing: WorkerTracing | None = None
        """Spans around the handler calls, if on (set before the tasks start)."""
        self.aborted = False
        """Whether nothing more is sent: no replies, no refusals."""
        self.in_flight = 0
        self.requests_received = 0
        self.replies_sent = 0
        self.handler_errors = 0
        self.malformed_requests = 0
        self.refused_requests = 0
        self._malformed_log = Throttle(_MALFORMED_LOG_INTERVAL)
        self._error_log = Throttle(_MALFORMED_LOG_INTERVAL)
        """Handlers that raised, by exception type: a client that makes the handler raise
        on every request fills no disk."""
        self._when_idle: Callable[[], None] | None = None
        """While :meth:`drain` waits: called, once, when no request is in hand."""
        self._queue: deque[_Held] = deque()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        """Receiving tasks waiting for a free handler, woken one at a time, first come first
        served: with several brokers in relay mode, each gets its turn."""
        self._receivers_waiting = 0
        """Receiving tasks waiting for a free handler, or woken and not yet running."""
        self._free: deque[asyncio.Future[None]] = deque()
        """Handler tasks waiting for a request."""
        self._spread_pending = False
        """Whether :meth:`_spread` is due to run: one free handler has been woken for the
        requests queued since, and the rest are woken only if that one cannot take them."""
        self._scope_type: type[anyio.CancelScope] = anyio.CancelScope
        """The event loop's own cancel scope class, made without asking which loop runs
        (anyio's ``CancelScope()`` looks that up each time: a quarter of a request's cost)."""
        self._slots: list[_Slot] = []
        """The handler tasks' slots, whose deadlines :meth:`_check_deadlines` checks."""
        self._watched = math.inf
        """When :meth:`_check_deadlines` is due (``inf``: not due)."""
        self._watch_handle: asyncio.TimerHandle | None = None

    # -- taking requests -----------------------------------------------------------------------

    async def receive(self, backend: Backend, intake: anyio.CancelScope) -> None:
        """Take requests from ``backend`` until ``intake`` is cancelled."""
        # Requests go to a queue served by `concurrency` long-lived tasks: far cheaper than
        # a task per request. A gated socket is read only while a task is free for the next.
        batch = range(max(self.concurrency, 64))
        limit = self._limit
        pump, link, queue, free = backend.pump, backend.link, self._queue, self._free
        read, frames_handler = self._read, self._frames
        loop = asyncio.get_running_loop()
        clock, slot_waiters = loop.time, self._slot_waiters
        turn_over = False
        with intake:
            while True:
                while self.in_flight >= limit or turn_over:
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
                    if self.in_flight >= limit:
                        break
                    frames = pump.try_recv()
                    if frames is None:
                        if slot_waiters:
                            # Nothing here: another broker's socket may take the free handler.
                            self._wake_receiver()
                        await pump.readable()
                        break
                    request = read(backend, frames, now, False)
                    if request is None:
                        continue
                    if not frames_handler and len(request.body) != 1:
                        self._answer_at_once(backend, _misfit(request))
                        continue
                    self.requests_received += 1
                    self.in_flight += 1
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

    def _read(
        self, backend: Backend, frames: list[bytes], now: float, refusing: bool
    ) -> Answerable | None:
        """Sort a message from ``backend``'s broker, read at ``now``: a request, or ``None``.

        ``None``: there is nothing to handle. A signal is performed; a malformed message is
        counted and dropped; a request the handler cannot take (:class:`Unanswerable`) is
        answered at once, unless ``refusing``: then it is returned, to be refused as any other.
        """
        try:
            read = backend.received(frames, now)
        except Unanswerable as refused:
            if refusing:
                return refused.request
            self._answer_at_once(backend, refused)
            return None
        except RemoteProtocolError as exc:
            self._malformed(f"dropped a malformed request: {exc}")
            return None
        if isinstance(read, Signal):
            backend.signalled(read)
            return None
        return read

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

    # -- handling them -------------------------------------------------------------------------

    async def serve(self) -> None:
        """One handler task: handle queued requests, one at a time, until cancelled."""
        queue, free = self._queue, self._free
        loop = asyncio.get_running_loop()
        self._scope_type = type(anyio.CancelScope())
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
                tracing = self.tracing
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
                self.replies_sent += 1
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
                self.replies_sent += 1
                dropped = False
        finally:
            self._done(held, dropped=dropped)

    def _done(self, held: _Held, *, dropped: bool) -> None:
        """``held`` is answered, or ``dropped``: its handler is free."""
        held.backend.link.release(held.session, dropped=dropped)
        self.in_flight -= 1
        if self._slot_waiters:
            self._wake_receiver()
        if not self.in_flight and self._when_idle is not None:
            when_idle, self._when_idle = self._when_idle, None
            when_idle()  # in this turn, right after the last reply went

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
            if self.tracing is None:
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
            self.handler_errors += 1
            message = f"the handler ran past {timeout} s"
            if self.tracing is not None:
                self.tracing.failed(None, "DeadlineExceeded", message)
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
        self.handler_errors += 1
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

    def _handler_failed(self, request: Answerable, exc: BaseException) -> list[bytes]:
        self.handler_errors += 1
        kind = type(exc).__qualname__
        line = self._error_log.add(kind, asyncio.get_running_loop().time())
        if line is not None:
            # With the traceback of the last one, at most once per interval per type.
            _log_handler_errors(line, exc)
        if self.tracing is not None:
            self.tracing.failed(exc)
        return request.error(type(exc).__name__, str(exc))

    # -- what is not handled -------------------------------------------------------------------

    def _answer_at_once(self, backend: Backend, refused: Unanswerable) -> None:
        """Answer a request the handler does not take with the error it carries.

        It is the peer's fault, not the handler's: counted as malformed, logged now and then
        without a traceback, and answered if the socket takes it now.
        """
        self._malformed(f"refused a request: {refused}")
        with contextlib.suppress(*UNUSABLE):
            if backend.pump.try_send(refused.answer):
                self.replies_sent += 1

    def _malformed(self, what: str) -> None:
        """Count a malformed request; log one warning in a while, saying how many came."""
        self.malformed_requests += 1
        line = self._malformed_log.add(_MALFORMED, asyncio.get_running_loop().time())
        if line is not None:
            logger.warning(
                "%d malformed request(s) since the last report; the last: %s",
                line.occurrences,
                what,
                extra={
                    "kind": _MALFORMED,
                    "count": line.occurrences,
                    "total": self.malformed_requests,
                    "seconds": line.since,
                },
            )

    def _refuse_held(self, held: _Held) -> None:
        """Refuse a request taken from the socket, unless its broker went away since."""
        if not held.session.forgotten:
            self._refuse(held.backend, held.request)

    def _refuse(self, backend: Backend, request: Answerable) -> None:
        """Answer ``request`` with a ``WorkerStopped`` error, without waiting."""
        if self.aborted or backend.conversation.said_disconnect:
            return
        with contextlib.suppress(*UNUSABLE):
            if backend.pump.try_send(request.error("WorkerStopped", "the worker stopped")):
                self.refused_requests += 1

    async def refuse_arriving(self, backend: Backend) -> None:
        """Draining: answer what ``backend`` still hands this worker with ``WorkerStopped``.

        (A relay broker keeps handing a worker requests until it disconnects, which it cannot
        do while replies are still to be sent: their clients need not time out.)
        """
        while True:
            await backend.pump.readable()
            if self._refuse_waiting(backend):
                await checkpoint()

    def _refuse_waiting(self, backend: Backend) -> bool:
        """Refuse the requests waiting in the socket; true if a whole batch was refused."""
        if self.aborted:
            return False
        pump = backend.pump
        for _ in range(512):
            try:
                frames = pump.try_recv()
            except UNUSABLE:  # a socket gone with its context
                return False
            if frames is None:
                return False
            request = self._read(backend, frames, anyio.current_time(), True)
            if request is not None:
                self._refuse(backend, request)
        return True

    async def drain(self, timeout: float, when_idle: Callable[[], None]) -> None:
        """Wait up to ``timeout`` seconds for the requests in hand to be answered.

        ``when_idle`` is called once none is in hand (at once if none is now), in the same
        event-loop turn as the last reply is sent.
        """
        if not self.in_flight:
            when_idle()
            return
        idle = anyio.Event()

        def now_idle() -> None:
            when_idle()
            idle.set()

        self._when_idle = now_idle
        with anyio.move_on_after(timeout):
            await idle.wait()
        self._when_idle = None

    def stopped(self, backends: Sequence[Backend]) -> None:
        """The tasks have ended: refuse what is left, and log what the throttles hold back.

        What is left: the requests taken but never handled, and those waiting in the sockets.
        """
        if self._watch_handle is not None:
            self._watch_handle.cancel()
            self._watch_handle, self._watched = None, math.inf
        now = asyncio.get_running_loop().time()
        for line in self._error_log.flush(now):
            _log_handler_errors(line, None)
        for line in self._malformed_log.flush(now):
            logger.warning(
                "%d malformed request(s) since the last report",
                line.occurrences,
                extra={"kind": _MALFORMED, "count": line.occurrences, "seconds": line.since},
            )
        while self._queue:  # taken from the socket, never started
            held = self._queue.popleft()
            self._refuse_held(held)
            held.backend.link.release(held.session, dropped=held.session.forgotten)
            self.in_flight -= 1
        for backend in backends:
            self._refuse_waiting(backend)


def _misfit(request: Answerable) -> Unanswerable:
    """A request of several frames for a handler of one."""
    reason = f"this worker's handler takes a single-frame request, got {len(request.body)} frames"
    return Unanswerable(reason, request, request.error(RemoteProtocolError.__name__, reason))


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
        self, request: Answerable, backend: Backend, session: Session, arrived: float
    ) -> None:
        self.request = request
        self.backend = backend
        self.session = session
        self.arrived = arrived
