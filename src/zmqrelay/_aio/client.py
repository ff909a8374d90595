"""The client: awaitable requests, many in flight on one socket, matched to replies by id."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
import anyio.abc
import tenacity
import zmq
import zmq.asyncio
from anyio.lowlevel import checkpoint
from zmq.utils.monitor import parse_monitor_message

from zmqrelay._aio import sockets
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.mdpclient import Sessions
from zmqrelay._aio.service import (
    Service,
    boundary_errors,
    chosen_provider,
    curve_options,
    require_tracing,
    tracing_wanted,
)
from zmqrelay._aio.zmqerrors import broken
from zmqrelay._core import mdp, tag
from zmqrelay._core.client import ClientStatistics, Correlator, Reply
from zmqrelay._core.client_links import Links
from zmqrelay._core.worker import check_body
from zmqrelay.errors import (
    BrokerBusy,
    BrokerLost,
    ClosedError,
    NoWorkers,
    RemoteProtocolError,
    RequestTimeout,
    WorkerDied,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from zmqrelay._aio.tracing import ClientTracing

logger = logging.getLogger("zmqrelay.client")

Protocol = Literal["zmqrelay", "mdp-0.1", "mdp-0.2", "majortomo"]
"""How a client speaks to its broker: zmqrelay's own protocol, or a Majordomo variant."""


class _Stream:
    """The waiter of a streamed request: the parts of its reply queue up for the caller."""

    __slots__ = ("_ended", "_finished", "_items", "_wake", "failure")

    def __init__(self) -> None:
        self._items: deque[Reply | BaseException] = deque()
        self._wake = asyncio.Event()
        self._finished = False
        self._ended: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def done(self) -> bool:
        return self._finished

    def ended(self) -> asyncio.Future[None]:
        """A future done once the stream has ended (its last part, or a failure, came)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self._finished:
                self._ended.set_result(None)
        return self._ended

    def set_result(self, reply: Reply) -> None:
        self._items.append(reply)
        self._finished = reply.status is not tag.Status.PARTIAL
        self._wake.set()
        if self._finished and self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def set_exception(self, exc: BaseException) -> None:
        self._items.append(exc)
        self._finished = True
        self.failure = exc
        self._wake.set()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def next(self) -> Reply:
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


class _Batch:
    """What the requests of one batch have come to, queued for its single consumer.

    The receive task records each reply (or failure) here and wakes the consumer only when
    it waits: once per receive batch, never a task per reply.
    """

    __slots__ = ("_wake", "ready")

    def __init__(self) -> None:
        # A reply, a failure, or None: a request of its own ended (see its task).
        self.ready: deque[tuple[int, Reply | BaseException | None]] = deque()
        self._wake: asyncio.Future[None] | None = None

    def put(self, index: int, outcome: Reply | BaseException | None) -> None:
        self.ready.append((index, outcome))
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return once something is ready (at once if something is)."""
        if not self.ready:
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None


class _Slot:
    """A batch's request as the correlator sees it: a waiter that feeds its batch."""

    __slots__ = ("_batch", "_done", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._batch = batch
        self.index = index
        self._done = False

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def set_result(self, reply: Reply) -> None:
        self._done = True
        self._batch.put(self.index, reply)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._batch.put(self.index, exc)


_Waiter = asyncio.Future[Reply] | _Stream | _Slot


def _single(reply: list[bytes]) -> bytes:
    if len(reply) != 1:
        raise RemoteProtocolError(
            f"expected a single-frame reply, got {len(reply)} frames; use request_frames()"
        )
    return reply[0]


def _service_name(service: str | bytes) -> bytes:
    if isinstance(service, str):
        return service.encode()
    if isinstance(service, bytes):
        return service
    raise TypeError(f"a service name is a str or bytes, not {type(service).__name__}")


def _split_single(service_or_body: str | bytes, body: bytes | None) -> tuple[bytes, bytes]:
    """``(service, body)`` of a ``request(body)`` or ``request(service, body)`` call."""
    if body is None:
        if not isinstance(service_or_body, bytes):
            raise TypeError("a request's body is bytes")
        return b"", service_or_body
    return _service_name(service_or_body), body


def _split_frames(
    service_or_frames: str | bytes | Sequence[bytes], frames: Sequence[bytes] | None
) -> tuple[bytes, Sequence[bytes]]:
    """``(service, frames)`` of a ``request_frames(frames)`` or ``(service, frames)`` call."""
    if frames is None:
        if isinstance(service_or_frames, str | bytes):
            raise TypeError("a request's frames are a sequence of bytes")
        return b"", service_or_frames
    if not isinstance(service_or_frames, str | bytes):
        raise TypeError("a service name is a str or bytes")
    return _service_name(service_or_frames), frames


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how an :class:`AsyncClient` sends a failed request again (Lazy Pirate).

    Each attempt is a new request with its own id and the full timeout; a reply that comes
    late for an earlier attempt is dropped (counted as late), so the caller gets exactly one
    reply. Retrying makes delivery at least once: a worker may handle a request whose reply
    was lost, and then the attempt after it.
    """

    attempts: int = 3
    """Attempts in all, the first included."""
    backoff: float = 0.1
    """Seconds to wait before the second attempt; the wait doubles (with jitter) after that."""
    max_backoff: float = 5.0
    """The longest wait between attempts."""
    on: tuple[type[BaseException], ...] = (
        RequestTimeout,
        BrokerBusy,
        NoWorkers,
        WorkerDied,
        BrokerLost,
    )
    """The failures worth another attempt; any other reaches the caller at once."""


class AsyncClient(Service):
    """Send requests to a broker's frontend and await their replies.

    One DEALER socket carries any number of requests at once. Each request goes out as
    ``[tag, b"", body...]``, where the tag frame carries a request id (as libzmq's
    ``ZMQ_REQ_CORRELATE`` does); stock REP workers echo it back untouched, and replies are
    matched by id in whatever order they come. The client is safe to share between the tasks
    of one event loop.

    Use it as an async context manager (or run :meth:`run` in a task group)::

        async with AsyncClient("tcp://localhost:5559") as client:
            reply = await client.request(b"Hello", timeout=2.5)

    Given several brokers' frontends, the client keeps a socket connected to each, and sends
    each request to the broker that is up with the fewest requests in flight (in turn among
    equals)::

        async with AsyncClient(["tcp://host-a:5559", "tcp://host-b:5559"]) as client:
            reply = await client.request(b"Hello")

    It notices a broker that is lost: its connection closed (a killed broker, at once), or
    silent for ``heartbeat_timeout`` seconds (ZeroMQ's heartbeats: a stopped or cut-off broker).
    It stops sending to it, ends the requests that broker held in :class:`~zmqrelay.BrokerLost`
    (which a retry policy sends again, to another broker; without one the caller sees it), and
    takes the broker back once it answers again. A broker whose requests keep ending in the
    client's timeout (``suspend_after`` in a row, nothing heard from it meanwhile) gets no
    requests for ``suspend_time`` seconds, then one at a time until it answers. Streams, and
    requests that no retry policy covers, are never sent twice. With one endpoint the client
    behaves as it always did: one socket, no heartbeats.

    Args:
        endpoint: the broker's frontend, e.g. ``"tcp://localhost:5559"``, or a list of
            several brokers' frontends.
        context: the ``zmq.asyncio.Context``; defaults to the process-wide instance.
        timeout: the default timeout of a request in seconds. It is finite by default so that
            a request whose worker died ends in :class:`~zmqrelay.RequestTimeout`, never in a
            hang; ``None`` waits forever.
        routing_id: this client's identity on the wire (by default libzmq picks one).
        linger: seconds unsent requests may still go out after the socket closes.
        retry: send failed requests again (the guide's Lazy Pirate); none by default, when a
            failure reaches the caller as it is.
        protocol: ``"zmqrelay"`` (the default) for zmqrelay brokers and any broker that
            routes ``[envelope..., b"", body...]``: many requests in flight on one socket,
            timeouts and errors that travel with them. ``"mdp-0.1"``, ``"mdp-0.2"`` or
            ``"majortomo"`` speak Majordomo to any Majordomo broker; requests must name a
            service, and each request in flight uses a socket of its own (Majordomo replies
            carry no request id).
        max_sockets: with a Majordomo ``protocol``, the most requests in flight at once (so
            sockets open); more wait their turn, within their timeout.
        curve_keys: this client's CURVE key pair (a :class:`~zmqrelay.CurveKeyPair`, or the
            path of its ``.key_secret`` file), for a broker that takes CURVE peers only.
        curve_server_key: the broker's public key (Z85 bytes, a key pair, or the path of its
            ``.key`` file); given with ``curve_keys``.
        tracing: OpenTelemetry spans (needs ``zmqrelay[tracing]``): a span of kind CLIENT
            per request, whose trace context travels with the request to zmqrelay workers
            (not to Majordomo brokers: their framing has no room). ``None`` (the default):
            on when the application has set a tracer provider by the time the client
            starts; ``True``: on, with the global provider; a ``TracerProvider``: on, with
            that one; ``False``: off. See ``docs/observability.md``.
        heartbeat_interval: with several endpoints, seconds between ZeroMQ heartbeats on each
            broker's connection (``ZMQ_HEARTBEAT_IVL``).
        heartbeat_timeout: with several endpoints, seconds without a sign of life after which
            a broker's connection is dropped and the broker counted as lost
            (``ZMQ_HEARTBEAT_TIMEOUT``; also its ``ZMQ_HEARTBEAT_TTL``).
        suspend_after: with several endpoints, requests in a row that end in the client's
            timeout on one broker, with nothing heard from it meanwhile, before it is suspended.
        suspend_time: with several endpoints, seconds a suspended broker gets no requests
            while another can take them.

    Raises:
        ImportError: ``tracing`` is asked for without ``opentelemetry-api`` installed.
        ValueError: no endpoint, or an endpoint given twice.

    Requests name a service with ``request(service, body)``; ``request(body)`` asks the
    broker's default service (the only one a relay-mode broker has).

    """

    _kind = "client"

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        context: zmq.asyncio.Context | None = None,
        timeout: float | None = 30.0,
        routing_id: bytes | None = None,
        linger: float = 0.0,
        retry: RetryPolicy | None = None,
        protocol: Protocol = "zmqrelay",
        max_sockets: int = 64,
        curve_keys: CurveKeyPair | str | Path | None = None,
        curve_server_key: CurveKeyPair | bytes | str | Path | None = None,
        tracing: bool | TracerProvider | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        suspend_after: int = 3,
        suspend_time: float = 5.0,
    ) -> None:
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints:
            raise ValueError("a client needs at least one endpoint")
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"an endpoint is given twice: {endpoints!r}")
        if heartbeat_interval <= 0 or heartbeat_timeout <= 0:
            raise ValueError("heartbeat_interval and heartbeat_timeout must be positive")
        # Several brokers: one link each (a socket, its monitor, its state in the core).
        self._links = (
            Links(endpoints, suspend_after=suspend_after, suspend_time=suspend_time)
            if len(endpoints) > 1
            else None
        )
        self._endpoints = endpoints
        self._heartbeat = (heartbeat_interval, heartbeat_timeout)
        self._pumps: list[sockets.Pump] = []
        self._link_sessions: list[Sessions] = []
        self._up_waiters: list[asyncio.Future[None]] = []
        self._majordomo_ids = itertools.count()
        self._socket_options = curve_options(curve_keys, curve_server_key)
        require_tracing(tracing)
        self._tracing_setting = tracing
        self._tracing: ClientTracing | None = None
        variant = mdp.as_variant(protocol)
        if variant is None and protocol != "zmqrelay":
            raise ValueError(f"unknown protocol {protocol!r}")
        if max_sockets < 1:
            raise ValueError("max_sockets must be at least 1")
        self._max_sockets = max_sockets
        super().__init__()
        self._variant = variant
        self._sessions: Sessions | None = None
        self._retry = retry
        self._endpoint = endpoints[0]
        self._context = context
        self._timeout = timeout
        self._routing_id = routing_id
        self._linger = linger
        self._correlator: Correlator[_Waiter] = Correlator(secrets.randbits(64))
        self._pump: sockets.Pump | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by run()
        # One timer for all requests, set for the earliest deadline (a heap in the core):
        # far cheaper than a timer or a cancel scope per request.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __repr__(self) -> str:
        where = (
            f"endpoint={self._endpoint!r}"
            if self._links is None
            else f"endpoints={self._endpoints!r}"
        )
        return f"<AsyncClient {self._state} {where} in_flight={self.statistics().in_flight}>"

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters (with several endpoints, each broker's too)."""
        counted = self._correlator.statistics()
        if self._links is not None:
            counted = counted._replace(links=self._links.statistics())
            if self._variant is not None:
                counted = counted._replace(in_flight=self._links.in_flight)
        if self._sessions is not None:
            return counted._replace(in_flight=self._sessions.in_flight)
        return counted

    @overload
    async def request(
        self,
        body: bytes,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> bytes: ...

    @overload
    async def request(
        self,
        service: str | bytes,
        body: bytes,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> bytes: ...

    async def request(
        self,
        service_or_body: str | bytes,
        body: bytes | None = None,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> bytes:
        """Send a single-frame request and return the single-frame reply.

        ``request(body)`` asks the default service; ``request(service, body)`` a named one
        (a load-balancing broker's, or any Majordomo broker's).

        Args:
            service_or_body: the service's name, when a ``body`` follows; else the request.
            body: the request, when a service is named.
            timeout: seconds to wait for the reply; ``None`` waits forever; by default the
                client's ``timeout``. It travels with the request: a load-balancing broker
                refuses the request once it has passed, and a zmqrelay worker cancels its
                handler then.
            redeliveries: how many times a load-balancing broker may send the request again if
                its worker dies (at least once delivery); 0, the default, is at most once.
            retry: send the request again, as a new request, when it fails in a way a later
                attempt may not (see :class:`RetryPolicy`); by default the client's ``retry``.

        Raises:
            RequestTimeout: no reply in time (also a :class:`TimeoutError`).
            RequestRefused: the broker ended the request (:class:`~zmqrelay.NoWorkers` for a
                service no live worker offered in time, and the others it names).
            RemoteError: the worker's handler raised.
            RemoteProtocolError: the reply has more than one frame (use :meth:`request_frames`).
            ClosedError: the client is not running.

        """
        if body is None and type(service_or_body) is bytes:
            service, single = b"", service_or_body  # the common call, checked inline
        else:
            service, single = _split_single(service_or_body, body)
        reply = await self._request(
            service, [single], timeout=timeout, redeliveries=redeliveries, retry=retry
        )
        if len(reply) != 1:
            raise RemoteProtocolError(
                f"expected a single-frame reply, got {len(reply)} frames; use request_frames()"
            )
        return reply[0]

    @overload
    async def request_frames(
        self,
        frames: Sequence[bytes],
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> list[bytes]: ...

    @overload
    async def request_frames(
        self,
        service: str | bytes,
        frames: Sequence[bytes],
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> list[bytes]: ...

    async def request_frames(
        self,
        service_or_frames: str | bytes | Sequence[bytes],
        frames: Sequence[bytes] | None = None,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> list[bytes]:
        """Send a multipart request and return the reply's frames.

        ``request_frames(frames)`` asks the default service, ``request_frames(service,
        frames)`` a named one. A streamed reply comes back with its parts' frames joined.

        Args:
            service_or_frames: the service's name, when ``frames`` follow; else the request's
                body frames.
            frames: the request's body frames (at least one; empty frames are fine).
            timeout: seconds to wait for the reply; ``None`` waits forever; by default the
                client's ``timeout``. It travels with the request: a load-balancing broker
                refuses the request once it has passed, and a zmqrelay worker cancels its
                handler then.
            redeliveries: how many times a load-balancing broker may send the request again if
                its worker dies (at least once delivery); 0, the default, is at most once.
            retry: send the request again, as a new request, when it fails in a way a later
                attempt may not (see :class:`RetryPolicy`); by default the client's ``retry``.

        Raises:
            RequestTimeout: no reply in time (also a :class:`TimeoutError`).
            RequestRefused: the broker ended the request (a subclass says why).
            RemoteError: the worker's handler raised.
            LocalProtocolError: ``frames`` is empty, or holds something other than bytes.
            ClosedError: the client is not running.
        """
        service, body = _split_frames(service_or_frames, frames)
        return await self._request(
            service, body, timeout=timeout, redeliveries=redeliveries, retry=retry
        )

    @overload
    async def request_many(
        self,
        bodies: Iterable[bytes],
        /,
        *,
        service: str | bytes = b"",
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
        window: int = 1000,
        return_exceptions: Literal[False] = False,
    ) -> list[bytes]: ...

    @overload
    async def request_many(
        self,
        bodies: Iterable[bytes],
        /,
        *,
        service: str | bytes = b"",
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
        window: int = 1000,
        return_exceptions: Literal[True],
    ) -> list[bytes | Exception]: ...

    async def request_many(
        self,
        bodies: Iterable[bytes],
        /,
        *,
        service: str | bytes = b"",
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
        window: int = 1000,
        return_exceptions: bool = False,
    ) -> list[bytes] | list[bytes | Exception]:
        """Send many single-frame requests and return their replies, in the order of ``bodies``.

        Each body is a request of its own, as :meth:`request` sends it (same ``service``,
        ``timeout``, ``redeliveries`` and ``retry``), with at most ``window`` of them in
        flight at once. The replies are gathered without waking a task per reply: the client's
        receive task wakes this call once per batch of replies it reads.

        Args:
            bodies: the requests' bodies; any iterable, read as room opens in the window.
            service: the service all of them ask; by default the broker's default service.
            timeout: seconds each request may wait for its reply (from when it is sent), as
                :meth:`request`'s.
            redeliveries: as :meth:`request`'s.
            retry: as :meth:`request`'s.
            window: the most requests in flight at once (at least 1).
            return_exceptions: ``False`` (the default): the first request to fail ends the
                call at once with its error, as :func:`asyncio.gather` does; the requests
                still in flight are forgotten (their replies are dropped when they come) and
                the bodies not yet sent are not sent. ``True``: every request runs to its
                end, and a failed one's error takes its place in the list.

        Raises:
            RequestTimeout, RequestRefused, RemoteError, RemoteProtocolError, ClosedError: as
                :meth:`request`, for the first request that failed (unless
                ``return_exceptions``).
        """
        replies: list[bytes | Exception] = []
        async with contextlib.aclosing(
            self.replies(
                bodies,
                service=service,
                timeout=timeout,
                redeliveries=redeliveries,
                retry=retry,
                window=window,
            )
        ) as outcomes:
            async for index, outcome in outcomes:
                if isinstance(outcome, Exception) and not return_exceptions:
                    raise outcome
                if index >= len(replies):
                    replies.extend([b""] * (index + 1 - len(replies)))
                replies[index] = outcome
        return replies

    def replies(
        self,
        bodies: Iterable[bytes],
        /,
        *,
        service: str | bytes = b"",
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
        window: int = 1000,
    ) -> AsyncGenerator[tuple[int, bytes | Exception], None]:
        """Send many single-frame requests and yield ``(index, reply)`` as the replies come.

        ``async for index, reply in client.replies(bodies)``: ``index`` is the body's place in
        ``bodies``; ``reply`` its reply, or the error :meth:`request` would have raised for
        it (yielded in place, never raised). Arguments are as :meth:`request_many`'s. Leaving
        the loop early forgets the requests still in flight and sends no more
        (``contextlib.aclosing()`` does so on leaving, rather than when the event loop
        finalizes the generator).

        Raises:
            ValueError: ``window`` is less than 1.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        name = _service_name(service)
        limit = self._timeout if timeout is ... else timeout
        policy = self._retry if retry is ... else retry
        if (
            self._variant is None
            and self._links is None
            and self._tracing is None
            and policy is None
        ):
            return self._replies_tagged(name, bodies, limit, redeliveries, window)
        # Retries, tracing, several brokers and Majordomo take a request at a time: run those
        # requests side by side, still waking the consumer once per batch.
        return self._replies_side_by_side(name, bodies, timeout, redeliveries, retry, window)

    async def _replies_tagged(
        self,
        service: bytes,
        bodies: Iterable[bytes],
        limit: float | None,
        redeliveries: int,
        window: int,
    ) -> AsyncGenerator[tuple[int, bytes | Exception], None]:
        """Many requests on the one tagged socket: a slot each in the correlator, no future."""
        pump = self._running_pump()
        loop = self._loop
        correlator = self._correlator
        batch = _Batch()
        ready = batch.ready
        in_flight: dict[int, int] = {}  # index: request id
        bodies_left = iter(bodies)
        index = 0
        receive, match, reads = pump.try_recv, correlator.receive, range(512)
        unyielded = 0  # replies handed over since the event loop last ran
        try:
            while True:
                now = loop.time()  # once per refill: a deadline a little early, never late
                while len(in_flight) < window:
                    try:
                        body = next(bodies_left)
                    except StopIteration:
                        break
                    slot = _Slot(batch, index)
                    request_id, message = correlator.open(
                        slot,
                        [body],
                        now=now,
                        timeout=limit,
                        redeliveries=redeliveries,
                        service=service,
                    )
                    in_flight[index] = request_id
                    index += 1
                    if limit is not None and now + limit < self._timer_at:
                        self._arm_timer(now + limit)
                    if not pump.try_send(message):
                        # A timeout while waiting for room shows as the request's outcome.
                        with anyio.move_on_after(math.inf if limit is None else limit):
                            await pump.send(message)
                        now = loop.time()
                if not in_flight:
                    return
                if not ready:
                    # Read what came here, rather than wait for the receive task to read it
                    # and wake this one: a task switch less per read.
                    for _ in reads:
                        frames = receive()
                        if frames is None:
                            break
                        matched = match(frames)
                        if matched is not None and not matched[0].done():
                            matched[0].set_result(matched[1])
                if ready and unyielded < 512:
                    unyielded += len(ready)
                else:
                    unyielded = 0  # let the loop run: timers, the receive task, other tasks
                    if ready:
                        await checkpoint()
                    else:
                        await batch.wait(loop)
                while ready:
                    done, outcome = ready.popleft()
                    del in_flight[done]
                    assert outcome is not None  # only requests of their own leave None
                    if isinstance(outcome, BaseException):
                        if not isinstance(outcome, Exception):
                            raise outcome
                        yield done, outcome
                        continue
                    try:
                        reply: bytes | Exception = _single(outcome.result())
                    except Exception as exc:  # yielded in place
                        reply = exc
                    yield done, reply
        except zmq.ZMQError as exc:
            raise broken(exc, "the client's socket") from exc
        finally:
            for request_id in in_flight.values():
                correlator.close(request_id)

    async def _replies_side_by_side(
        self,
        service: bytes,
        bodies: Iterable[bytes],
        timeout: float | EllipsisType | None,
        redeliveries: int,
        retry: RetryPolicy | EllipsisType | None,
        window: int,
    ) -> AsyncGenerator[tuple[int, bytes | Exception], None]:
        """Many requests as :meth:`request` makes them, each in a task, ``window`` at once."""
        if self._state != "running":
            raise ClosedError(f"the client is {self._state}; use it inside 'async with'")
        loop = asyncio.get_running_loop()  # with Majordomo, self._loop is not set
        batch = _Batch()
        ready = batch.ready
        tasks: dict[int, asyncio.Task[list[bytes]]] = {}
        bodies_left = iter(bodies)
        index = 0

        def ended(done: int, task: asyncio.Task[list[bytes]]) -> None:
            if task.cancelled():
                return
            batch.put(done, task.exception())

        try:
            while True:
                while len(tasks) < window:
                    try:
                        body = next(bodies_left)
                    except StopIteration:
                        break
                    task = loop.create_task(
                        self._request(
                            service,
                            [body],
                            timeout=timeout,
                            redeliveries=redeliveries,
                            retry=retry,
                        )
                    )
                    task.add_done_callback(functools.partial(ended, index))
                    tasks[index] = task
                    index += 1
                if not tasks:
                    return
                await batch.wait(loop)
                while ready:
                    done, outcome = ready.popleft()
                    task = tasks.pop(done)
                    if isinstance(outcome, BaseException):
                        if not isinstance(outcome, Exception):
                            raise outcome
                        yield done, outcome
                        continue
                    try:
                        reply: bytes | Exception = _single(task.result())
                    except Exception as exc:  # yielded in place
                        reply = exc
                    yield done, reply
        finally:
            for task in tasks.values():
                task.cancel()

    def _request(
        self,
        service: bytes,
        frames: Sequence[bytes],
        *,
        timeout: float | EllipsisType | None,
        redeliveries: int,
        retry: RetryPolicy | EllipsisType | None,
    ) -> Coroutine[Any, Any, list[bytes]]:
        """The coroutine that makes the request: its attempts, each traced if tracing is on.

        A plain function, so that the caller awaits the attempt itself: one coroutine frame
        fewer to pass through at every suspension and wake-up of every request.
        """
        limit = self._timeout if timeout is ... else timeout
        policy = self._retry if retry is ... else retry
        if policy is None:
            if self._tracing is not None:
                return self._traced_exchange(service, frames, limit, redeliveries)
            return self._exchange(service, frames, limit, redeliveries)
        attempts = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.backoff, max=policy.max_backoff)
            + tenacity.wait_random(0, policy.backoff),
            retry=tenacity.retry_if_exception_type(policy.on),
            before_sleep=self._count_retry,
            reraise=True,
        )
        attempt = self._exchange if self._tracing is None else self._traced_exchange
        return attempts(attempt, service, frames, limit, redeliveries)

    @overload
    def stream(
        self,
        body: bytes,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
    ) -> AsyncGenerator[bytes, None]: ...

    @overload
    def stream(
        self,
        service: str | bytes,
        body: bytes,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
    ) -> AsyncGenerator[bytes, None]: ...

    async def stream(
        self,
        service_or_body: str | bytes,
        body: bytes | None = None,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
    ) -> AsyncGenerator[bytes, None]:
        """Send a single-frame request and yield the parts of its reply as they come.

        ``async for part in client.stream("search", b"query")``: a worker whose handler is an
        async generator sends each part as it is ready (Majordomo 0.2's PARTIAL, then FINAL);
        any other reply is one part. ``timeout`` bounds the whole stream. Leaving the loop
        early drops the parts still to come (``contextlib.aclosing()`` forgets the request
        on leaving, rather than when the event loop finalizes the generator); the worker is
        not told, and produces its parts to the end.

        Raises:
            RequestTimeout, RequestRefused, RemoteError, ClosedError: as :meth:`request`,
                after the parts that came before.
            RemoteProtocolError: a part has more than one frame (use :meth:`stream_frames`).
        """
        service, single = _split_single(service_or_body, body)
        async with contextlib.aclosing(
            self._stream(service, [single], timeout, redeliveries)
        ) as parts:
            async for part in parts:
                if len(part) != 1:
                    raise RemoteProtocolError(
                        f"expected single-frame parts, got {len(part)} frames; use stream_frames()"
                    )
                yield part[0]

    @overload
    def stream_frames(
        self,
        frames: Sequence[bytes],
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
    ) -> AsyncGenerator[list[bytes], None]: ...

    @overload
    def stream_frames(
        self,
        service: str | bytes,
        frames: Sequence[bytes],
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
    ) -> AsyncGenerator[list[bytes], None]: ...

    async def stream_frames(
        self,
        service_or_frames: str | bytes | Sequence[bytes],
        frames: Sequence[bytes] | None = None,
        /,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
    ) -> AsyncGenerator[list[bytes], None]:
        """As :meth:`stream`, for multipart requests: yields each part's frames."""
        service, body = _split_frames(service_or_frames, frames)
        async with contextlib.aclosing(
            self._stream(service, body, timeout, redeliveries)
        ) as parts:
            async for part in parts:
                yield part

    def _stream(
        self,
        service: bytes,
        frames: Sequence[bytes],
        timeout: float | EllipsisType | None,
        redeliveries: int,
    ) -> AsyncGenerator[list[bytes], None]:
        limit = self._timeout if timeout is ... else timeout
        if self._tracing is None:
            return self._stream_once(service, frames, limit, redeliveries, None)
        return self._traced_stream(service, frames, limit, redeliveries)

    async def _traced_stream(
        self, service: bytes, frames: Sequence[bytes], limit: float | None, redeliveries: int
    ) -> AsyncGenerator[list[bytes], None]:
        """A stream in a span of its own, whose context travels with the request."""
        tracing = self._tracing
        assert tracing is not None
        span, context = tracing.start(service)
        failure: BaseException | None = None
        try:
            async with contextlib.aclosing(
                self._stream_once(service, frames, limit, redeliveries, context)
            ) as parts:
                async for part in parts:
                    yield part
        except BaseException as exc:
            failure = exc
            raise
        finally:
            tracing.end(span, failure)

    async def _stream_once(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None,
    ) -> AsyncGenerator[list[bytes], None]:
        if self._variant is not None:
            async with contextlib.aclosing(
                self._majordomo(service, frames, limit, redeliveries)
            ) as parts:
                async for part, _ in parts:
                    yield part
            return
        # One broker: sent through its socket. Several: on a link that is up, and never sent
        # again once it went out.
        pump = self._running_pump()
        spread = self._links is not None
        loop = self._loop
        waiter = _Stream()
        now = loop.time()
        request_id, message = self._correlator.open(
            waiter,
            frames,
            now=now,
            timeout=limit,
            redeliveries=redeliveries,
            service=service,
            stream=True,
            context=context,
        )
        if limit is not None and now + limit < self._timer_at:
            self._arm_timer(now + limit)
        try:
            if spread:
                await self._send_on_a_link(request_id, message, waiter.ended())
            elif not pump.try_send(message):
                with anyio.move_on_after(math.inf if limit is None else limit):
                    await pump.send(message)  # a timeout shows as the stream's next item
            while True:
                reply = await waiter.next()
                yield reply.result()
                if reply.status is not tag.Status.PARTIAL:
                    return
        except zmq.ZMQError as exc:
            raise broken(exc, "the client's socket") from exc
        finally:
            self._correlator.close(request_id)
            if spread:
                self._end_on_link(request_id, waiter.failure)

    def _majordomo(
        self, service: bytes, frames: Sequence[bytes], limit: float | None, redeliveries: int
    ) -> AsyncGenerator[tuple[list[bytes], bool], None]:
        sessions = self._sessions
        if (sessions is None and not self._link_sessions) or self._state != "running":
            raise ClosedError(f"the client is {self._state}; use it inside 'async with'")
        if not service:
            raise ValueError("a Majordomo request names a service: request(service, body)")
        if redeliveries:
            raise ValueError("Majordomo carries no redelivery budget: redeliveries=0")
        check_body(frames, "request")
        if sessions is None:
            return self._majordomo_spread(service, frames, limit)
        return sessions.exchange(service, frames, limit)

    async def _majordomo_spread(
        self, service: bytes, frames: Sequence[bytes], limit: float | None
    ) -> AsyncGenerator[tuple[list[bytes], bool], None]:
        """A Majordomo request on one of several brokers, through that broker's sessions."""
        links = self._links
        assert links is not None
        loop = self._loop
        request_id = next(self._majordomo_ids)  # the links' name for it; never sent
        deadline = None if limit is None else loop.time() + limit
        failure: BaseException | None = None
        try:
            index = links.assign(request_id, loop.time())
            while index is None:
                with anyio.move_on_after(math.inf if deadline is None else deadline - loop.time()):
                    await self._link_up(None)
                if deadline is not None and loop.time() >= deadline:
                    self._correlator.timeouts += 1
                    raise RequestTimeout(f"no reply within {limit} s (no broker was up)")  # noqa: TRY301
                index = links.assign(request_id, loop.time())
            left = None if deadline is None else max(0.0, deadline - loop.time())
            async with contextlib.aclosing(
                self._link_sessions[index].exchange(service, frames, left)
            ) as parts:
                async for part in parts:
                    links.heard(index)
                    yield part
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._end_on_link(request_id, failure)

    async def _send_on_a_link(
        self, request_id: int, message: list[bytes], ended: asyncio.Future[Any]
    ) -> None:
        """Send a request on the link its core chooses, waiting for one to come up if none is.

        Returns early, without sending, once ``ended`` is done (the request's timer fired, its
        broker was lost, or the client closed).
        """
        links = self._links
        assert links is not None
        loop = self._loop
        index = links.assign(request_id, loop.time())
        while index is None:
            await self._link_up(ended)
            if ended.done():
                return
            index = links.assign(request_id, loop.time())
        pump = self._pumps[index]
        if not pump.try_send(message):
            await _send_before(pump, message, ended)

    async def _link_up(self, ended: asyncio.Future[Any] | None) -> None:
        """Wait until some link comes up, or ``ended`` is done."""
        up: asyncio.Future[None] = self._loop.create_future()
        self._up_waiters.append(up)
        try:
            waits = [up] if ended is None else [up, ended]
            await asyncio.wait(waits, return_when="FIRST_COMPLETED")
        finally:
            if not up.done():
                up.cancel()
                self._up_waiters.remove(up)

    def _end_on_link(self, request_id: int, failure: BaseException | None) -> None:
        links = self._links
        assert links is not None
        # Only the client's own timeout counts against a broker (a refusal is an answer).
        links.ended(request_id, self._loop.time(), timed_out=type(failure) is RequestTimeout)

    def _running_pump(self) -> sockets.Pump:
        pump = self._pump
        if (pump is None and not self._pumps) or self._state != "running":
            raise ClosedError(f"the client is {self._state}; use it inside 'async with'")
        return pump  # type: ignore[return-value]  # None with several links: not used then

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self._correlator.retries += 1

    async def _traced_exchange(
        self, service: bytes, frames: Sequence[bytes], limit: float | None, redeliveries: int
    ) -> list[bytes]:
        """One attempt in a span of its own, whose context travels with the request."""
        tracing = self._tracing
        assert tracing is not None
        span, context = tracing.start(service)
        try:
            reply = await self._exchange(service, frames, limit, redeliveries, context)
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span, None)
        return reply

    async def _exchange(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> list[bytes]:
        """One attempt: send, and wait for the reply within ``limit`` seconds.

        ``context``: the trace context frame to send with it (not to Majordomo brokers).
        """
        if self._variant is not None:
            joined: list[bytes] = []
            async with contextlib.aclosing(
                self._majordomo(service, frames, limit, redeliveries)
            ) as parts:
                async for part, _ in parts:
                    joined.extend(part)
            return joined
        if self._links is not None:
            return await self._exchange_spread(service, frames, limit, redeliveries, context)
        pump = self._pump
        if pump is None or self._state != "running":
            raise ClosedError(f"the client is {self._state}; use it inside 'async with'")
        loop = self._loop
        waiter: asyncio.Future[Reply] = loop.create_future()
        now = loop.time()
        correlator = self._correlator
        request_id, message = correlator.open(
            waiter,
            frames,
            now=now,
            timeout=limit,
            redeliveries=redeliveries,
            service=service,
            context=context,
        )
        if limit is not None and now + limit < self._timer_at:
            self._arm_timer(now + limit)
        try:
            if not pump.try_send(message):
                await _send_before(pump, message, waiter)
            reply = await waiter
        except BaseException as exc:
            correlator.close(request_id)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved here if the send, not the wait, ended the call
            if isinstance(exc, zmq.ZMQError):
                raise broken(exc, "the client's socket") from exc
            raise
        # A reply takes its request off the correlator's table: there is nothing to close.
        return reply.result()

    async def _exchange_spread(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None,
    ) -> list[bytes]:
        """One attempt on one of several brokers (see :meth:`_exchange`)."""
        self._running_pump()
        loop = self._loop
        waiter: asyncio.Future[Reply] = loop.create_future()
        now = loop.time()
        request_id, message = self._correlator.open(
            waiter,
            frames,
            now=now,
            timeout=limit,
            redeliveries=redeliveries,
            service=service,
            context=context,
        )
        if limit is not None and now + limit < self._timer_at:
            self._arm_timer(now + limit)
        try:
            await self._send_on_a_link(request_id, message, waiter)
            reply = await waiter
        except zmq.ZMQError as exc:
            raise broken(exc, "the client's socket") from exc
        finally:
            self._correlator.close(request_id)
            failure = None
            if waiter.done() and not waiter.cancelled():
                failure = waiter.exception()  # retrieved, whoever ended the call
            self._end_on_link(request_id, failure)
        return reply.result()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and match replies to requests until cancelled or closed.

        Reports readiness through ``task_status`` once requests can be sent. When it stops,
        requests still waiting fail with :class:`ClosedError`. A client runs once.

        Raises:
            EndpointError: ``endpoint`` is not a valid address.

        """
        if tracing_wanted(self._tracing_setting):
            from zmqrelay._aio.tracing import ClientTracing

            self._tracing = ClientTracing(chosen_provider(self._tracing_setting), self._endpoint)
        if self._links is not None:
            await self._run_links(self._links, task_status)
            return
        if self._variant is not None:
            await self._run_majordomo(self._variant, task_status)
            return
        with (
            self._connected_dealer(self._context, self._endpoint, self._routing_id) as sock,
            sockets.Pump(sock, f"the {self._kind}'s socket") as pump,
        ):
            try:
                self._pump, self._loop = pump, asyncio.get_running_loop()
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._receive, pump)
                    self._report_ready(task_status, None)
                    await self._close_requested.wait()
                    task_group.cancel_scope.cancel()
            finally:
                self._state = "closing"
                self._pump = None
                if self._timer is not None:
                    self._timer.cancel()
                for waiter in self._correlator.waiters():
                    if not waiter.done():
                        waiter.set_exception(
                            ClosedError("the client closed before the reply came")
                        )

    async def _run_links(self, links: Links, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Serve requests over several brokers: a link (socket and monitor) to each."""
        self._claim()
        try:
            with boundary_errors(self._kind), contextlib.ExitStack() as stack:
                context = sockets.get_context(self._context)
                interval, timeout = self._heartbeat
                options = [
                    *self._socket_options,
                    (zmq.HEARTBEAT_IVL, round(interval * 1000)),
                    (zmq.HEARTBEAT_TIMEOUT, round(timeout * 1000)),
                    (zmq.HEARTBEAT_TTL, round(timeout * 1000)),
                    # Queue only to a connection that completed its handshake, and drop what
                    # is queued when it is lost: a request ended as lost never goes out later.
                    (zmq.IMMEDIATE, 1),
                ]
                watches = []
                for endpoint in self._endpoints:
                    sock = sockets.open_socket(
                        context, zmq.DEALER, routing_id=self._routing_id, options=options
                    )
                    stack.callback(self._close_link, sock)
                    watch = sockets.monitor(sock, _LINK_EVENTS)
                    stack.callback(_stop_monitor, sock, watch)
                    watches.append(watch)
                    sockets.connect(sock, endpoint)
                    if self._variant is None:
                        pump = sockets.Pump(sock, f"the {self._kind}'s socket")
                        self._pumps.append(stack.enter_context(pump))
                    else:
                        # The socket only watches the broker: each request borrows its own.
                        sessions = Sessions(
                            context,
                            endpoint,
                            self._variant,
                            self._linger,
                            self._correlator,
                            self._max_sockets,
                            self._socket_options,
                        )
                        stack.callback(sessions.close)
                        sessions.prepare()
                        self._link_sessions.append(sessions)
                self._loop = asyncio.get_running_loop()
                try:
                    async with anyio.create_task_group() as task_group:
                        for index, pump in enumerate(self._pumps):
                            task_group.start_soon(self._receive_link, links, index, pump)
                        for index, watch in enumerate(watches):
                            task_group.start_soon(self._watch_link, links, index, watch)
                        self._report_ready(task_status, None)
                        await self._close_requested.wait()
                        task_group.cancel_scope.cancel()
                finally:
                    self._state = "closing"
                    self._pumps = []
                    self._link_sessions = []
                    if self._timer is not None:
                        self._timer.cancel()
                    for up in self._up_waiters:
                        up.cancel()
                    for waiter in self._correlator.waiters():
                        if not waiter.done():
                            waiter.set_exception(
                                ClosedError("the client closed before the reply came")
                            )
        finally:
            self._finish()

    def _close_link(self, sock: sockets.AsyncSocket) -> None:
        sockets.close(sock, self._linger)  # the linger set by the time it closes

    async def _watch_link(self, links: Links, index: int, watch: sockets.AsyncSocket) -> None:
        """Tell the core when link ``index`` comes up or is lost, and do what it answers."""
        while True:
            event = parse_monitor_message(await watch.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                links.connected(index)
                logger.info("broker %s is up", self._endpoints[index])
                for up in self._up_waiters:
                    if not up.done():
                        up.set_result(None)
                self._up_waiters.clear()
            elif event == zmq.EVENT_DISCONNECTED:
                lost = links.disconnected(index)
                logger.warning(
                    "lost broker %s with %d requests in flight", self._endpoints[index], len(lost)
                )
                for request_id in lost:
                    waiter = self._correlator.lose(request_id)
                    if waiter is not None and not waiter.done():
                        waiter.set_exception(
                            BrokerLost(f"lost broker {self._endpoints[index]} before the reply")
                        )
                if self._link_sessions:
                    self._link_sessions[index].lose()

    async def _receive_link(self, links: Links, index: int, pump: sockets.Pump) -> None:
        """As :meth:`_receive`, for one of several links; what comes tells that it lives."""
        receive = pump.try_recv
        match = self._correlator.receive
        batch = range(512)
        while True:
            await pump.readable()
            links.heard(index)
            for _ in batch:
                frames = receive()
                if frames is None:
                    break
                matched = match(frames)
                if matched is not None:
                    waiter, reply = matched
                    if not waiter.done():
                        waiter.set_result(reply)
            else:
                await checkpoint()

    async def _run_majordomo(
        self, variant: mdp.Variant, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Serve Majordomo requests: each opens (or reuses) a socket of its own."""
        self._claim()
        try:
            with boundary_errors(self._kind):
                sessions = Sessions(
                    sockets.get_context(self._context),
                    self._endpoint,
                    variant,
                    self._linger,
                    self._correlator,  # keeps the counters
                    self._max_sockets,
                    self._socket_options,
                )
                try:
                    sessions.prepare()  # connects one socket: a bad endpoint fails here
                    self._sessions = sessions
                    self._report_ready(task_status, None)
                    await self._close_requested.wait()
                finally:
                    self._state = "closing"
                    self._sessions = None
                    sessions.close()
        finally:
            self._finish()

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        for waiter, limit in self._correlator.expire(self._loop.time()):
            if not waiter.done():
                waiter.set_exception(RequestTimeout(f"no reply within {limit} s"))
        upcoming = self._correlator.next_deadline()
        if upcoming is not None:
            self._arm_timer(upcoming)

    async def _receive(self, pump: sockets.Pump) -> None:
        receive = pump.try_recv
        match = self._correlator.receive
        batch = range(512)
        while True:
            await pump.readable()
            for _ in batch:
                frames = receive()
                if frames is None:
                    break
                matched = match(frames)
                if matched is not None:
                    waiter, reply = matched
                    if not waiter.done():
                        waiter.set_result(reply)
            else:
                await checkpoint()

    async def aclose(self) -> None:
        """Close the client; requests still waiting fail with :class:`ClosedError`."""
        await super().aclose()


_LINK_EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED) | int(zmq.EVENT_DISCONNECTED)


def _stop_monitor(sock: sockets.AsyncSocket, watch: sockets.AsyncSocket) -> None:
    if not sock.closed:
        sock.disable_monitor()
    watch.close(linger=0)


async def _send_before(
    pump: sockets.Pump, message: list[bytes], waiter: asyncio.Future[Any]
) -> None:
    """Wait for room to send ``message``, unless ``waiter`` ends first (its timer fired)."""
    async with anyio.create_task_group() as task_group:

        async def send() -> None:
            # A closing client fails the waiter with ClosedError: the caller sees that.
            with contextlib.suppress(ClosedError):
                await pump.send(message)
            task_group.cancel_scope.cancel()

        task_group.start_soon(send)
        await asyncio.wait([waiter])
        task_group.cancel_scope.cancel()
