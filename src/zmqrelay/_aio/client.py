"""The client's public face: requests, streams and batches, with retries and tracing.

:class:`AsyncClient` checks its arguments, retries failed attempts under a
:class:`RetryPolicy`, opens a span per request when tracing, and counts; the protocol itself
is its transport's (:mod:`zmqrelay._aio.transport`), chosen once, from ``protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
import anyio.abc
import tenacity
import zmq.asyncio

from zmqrelay._aio.client_links import ClientLinks
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.mdpclient import MajordomoTransport
from zmqrelay._aio.service import (
    ProtocolName,
    Service,
    boundary_errors,
    chosen_provider,
    curve_options,
    endpoint_list,
    majordomo_variant,
    require_tracing,
    tracing_wanted,
)
from zmqrelay._aio.tagged import TaggedTransport
from zmqrelay._aio.transport import Transport, not_running
from zmqrelay._aio.waiters import Batch, settled
from zmqrelay._core.client import ClientStatistics, single_frame
from zmqrelay.errors import (
    BrokerBusy,
    BrokerLost,
    NoWorkers,
    RemoteProtocolError,
    RequestTimeout,
    WorkerDied,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from zmqrelay._aio.tracing import ClientTracing


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
        protocol: ProtocolName = "zmqrelay",
        max_sockets: int = 64,
        curve_keys: CurveKeyPair | str | Path | None = None,
        curve_server_key: CurveKeyPair | bytes | str | Path | None = None,
        tracing: bool | TracerProvider | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        suspend_after: int = 3,
        suspend_time: float = 5.0,
    ) -> None:
        endpoints = endpoint_list(endpoint, self._kind)
        if heartbeat_interval <= 0 or heartbeat_timeout <= 0:
            raise ValueError("heartbeat_interval and heartbeat_timeout must be positive")
        variant = majordomo_variant(protocol)
        if max_sockets < 1:
            raise ValueError("max_sockets must be at least 1")
        socket_options = curve_options(curve_keys, curve_server_key)
        require_tracing(tracing)
        super().__init__()
        self._endpoints = endpoints
        self._tracing_setting = tracing
        self._tracing: ClientTracing | None = None
        self._retry = retry
        self._timeout = timeout
        self._retries = 0
        # Several brokers: one link each (a socket, its monitor, its state in the core).
        links = (
            ClientLinks(
                endpoints,
                heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout,
                suspend_after=suspend_after,
                suspend_time=suspend_time,
            )
            if len(endpoints) > 1
            else None
        )
        # The one place the protocol is looked at: the rest goes through the transport.
        self._transport: Transport
        if variant is None:
            self._transport = TaggedTransport(
                endpoints,
                links=links,
                context=context,
                routing_id=routing_id,
                linger=linger,
                options=socket_options,
            )
        else:
            self._transport = MajordomoTransport(
                endpoints,
                variant,
                links=links,
                context=context,
                routing_id=routing_id,
                linger=linger,
                max_sockets=max_sockets,
                options=socket_options,
            )

    def __repr__(self) -> str:
        endpoints = self._endpoints
        where = f"endpoint={endpoints[0]!r}" if len(endpoints) == 1 else f"endpoints={endpoints!r}"
        return f"<AsyncClient {self._state} {where} in_flight={self.statistics().in_flight}>"

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters (with several endpoints, each broker's too)."""
        return self._transport.statistics()._replace(retries=self._retries)

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
        return single_frame(reply)

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
        if self._state == "running" and self._tracing is None and policy is None:
            batch = self._transport.batch(name, bodies, limit, redeliveries, window)
            if batch is not None:
                return batch
        # Retries, tracing, and transports without a batch path of their own take a request
        # at a time: run those requests side by side, still waking the consumer once per batch.
        return self._replies_side_by_side(name, bodies, timeout, redeliveries, retry, window)

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
            raise not_running(self._state)
        loop = asyncio.get_running_loop()
        batch = Batch()
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
                    yield done, settled(task if outcome is None else outcome)
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
        if self._state != "running":
            return self._refuse()
        limit = self._timeout if timeout is ... else timeout
        policy = self._retry if retry is ... else retry
        attempt = self._transport.exchange if self._tracing is None else self._traced_exchange
        if policy is None:
            return attempt(service, frames, limit, redeliveries)
        attempts = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.backoff, max=policy.max_backoff)
            + tenacity.wait_random(0, policy.backoff),
            retry=tenacity.retry_if_exception_type(policy.on),
            before_sleep=self._count_retry,
            reraise=True,
        )
        return attempts(attempt, service, frames, limit, redeliveries)

    async def _refuse(self) -> list[bytes]:
        raise not_running(self._state)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self._retries += 1

    async def _traced_exchange(
        self, service: bytes, frames: Sequence[bytes], limit: float | None, redeliveries: int
    ) -> list[bytes]:
        """One attempt in a span of its own, whose context travels with the request."""
        tracing = self._tracing
        assert tracing is not None
        span, context = tracing.start(service)
        try:
            reply = await self._transport.exchange(service, frames, limit, redeliveries, context)
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span, None)
        return reply

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
        if self._state != "running":
            raise not_running(self._state)
        limit = self._timeout if timeout is ... else timeout
        if self._tracing is None:
            return self._transport.stream(service, frames, limit, redeliveries)
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
                self._transport.stream(service, frames, limit, redeliveries, context)
            ) as parts:
                async for part in parts:
                    yield part
        except BaseException as exc:
            failure = exc
            raise
        finally:
            tracing.end(span, failure)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and match replies to requests until cancelled or closed.

        Reports readiness through ``task_status`` once requests can be sent. When it stops,
        requests still waiting fail with :class:`ClosedError`. A client runs once.

        Raises:
            EndpointError: ``endpoint`` is not a valid address.

        """
        self._claim()
        try:
            if tracing_wanted(self._tracing_setting):
                from zmqrelay._aio.tracing import ClientTracing

                provider = chosen_provider(self._tracing_setting)
                self._tracing = ClientTracing(provider, self._endpoints[0])
            with boundary_errors(self._kind):
                async with self._transport.open():
                    try:
                        self._report_ready(task_status, None)
                        await self._close_requested.wait()
                    finally:
                        self._state = "closing"
        finally:
            self._finish()

    async def aclose(self) -> None:
        """Close the client; requests still waiting fail with :class:`ClosedError`."""
        await super().aclose()
