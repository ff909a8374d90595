"""The client: awaitable requests, many in flight on one socket, matched to replies by id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType

import anyio
import anyio.abc
import tenacity
import zmq
import zmq.asyncio
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._aio.service import Service
from zmqrelay._core.client import ClientStatistics, Correlator, Reply
from zmqrelay.errors import (
    BrokerBusy,
    ClosedError,
    NoWorkers,
    RemoteProtocolError,
    RequestTimeout,
    WorkerDied,
)

logger = logging.getLogger("zmqrelay.client")

_Waiter = asyncio.Future[Reply]


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
    on: tuple[type[BaseException], ...] = (RequestTimeout, BrokerBusy, NoWorkers, WorkerDied)
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

    Args:
        endpoint: the broker's frontend, e.g. ``"tcp://localhost:5559"``.
        context: the ``zmq.asyncio.Context``; defaults to the process-wide instance.
        timeout: the default timeout of a request in seconds. It is finite by default so that
            a request whose worker died ends in :class:`~zmqrelay.RequestTimeout`, never in a
            hang; ``None`` waits forever.
        routing_id: this client's identity on the wire (by default libzmq picks one).
        linger: seconds unsent requests may still go out after the socket closes.
        retry: send failed requests again (the guide's Lazy Pirate); none by default, when a
            failure reaches the caller as it is.

    """

    _kind = "client"

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.asyncio.Context | None = None,
        timeout: float | None = 30.0,
        routing_id: bytes | None = None,
        linger: float = 0.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self._retry = retry
        self._endpoint = endpoint
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
        return (
            f"<AsyncClient {self._state} endpoint={self._endpoint!r} "
            f"in_flight={self._correlator.in_flight}>"
        )

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters."""
        return self._correlator.statistics()

    async def request(
        self,
        body: bytes,
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> bytes:
        """Send a single-frame request and return the single-frame reply.

        Args:
            body: the request.
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
            RemoteError: the worker's handler raised.
            RemoteProtocolError: the reply has more than one frame (use :meth:`request_frames`).
            ClosedError: the client is not running.

        """
        reply = await self.request_frames(
            [body], timeout=timeout, redeliveries=redeliveries, retry=retry
        )
        if len(reply) != 1:
            raise RemoteProtocolError(
                f"expected a single-frame reply, got {len(reply)} frames; use request_frames()"
            )
        return reply[0]

    async def request_frames(
        self,
        frames: Sequence[bytes],
        *,
        timeout: float | EllipsisType | None = ...,
        redeliveries: int = 0,
        retry: RetryPolicy | EllipsisType | None = ...,
    ) -> list[bytes]:
        """Send a multipart request and return the reply's frames.

        Args:
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
            RemoteError: the worker's handler raised.
            LocalProtocolError: ``frames`` is empty.
            ClosedError: the client is not running.
        """
        limit = self._timeout if timeout is ... else timeout
        policy = self._retry if retry is ... else retry
        if policy is None:
            return await self._exchange(frames, limit, redeliveries)
        attempts = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.backoff, max=policy.max_backoff)
            + tenacity.wait_random(0, policy.backoff),
            retry=tenacity.retry_if_exception_type(policy.on),
            before_sleep=self._count_retry,
            reraise=True,
        )
        reply: list[bytes] = await attempts(self._exchange, frames, limit, redeliveries)
        return reply

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self._correlator.retries += 1

    async def _exchange(
        self, frames: Sequence[bytes], limit: float | None, redeliveries: int
    ) -> list[bytes]:
        """One attempt: send, and wait for the reply within ``limit`` seconds."""
        pump = self._pump
        if pump is None or self._state != "running":
            raise ClosedError(f"the client is {self._state}; use it inside 'async with'")
        loop = self._loop
        waiter: _Waiter = loop.create_future()
        now = loop.time()
        request_id, message = self._correlator.open(
            waiter, frames, now=now, timeout=limit, redeliveries=redeliveries
        )
        if limit is not None and now + limit < self._timer_at:
            self._arm_timer(now + limit)
        try:
            if not pump.try_send(message):
                await _send_before(pump, message, waiter)
            reply = await waiter
        except zmq.ZMQError as exc:
            raise ClosedError(f"the client's socket failed: {exc}") from exc
        finally:
            self._correlator.close(request_id)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved here if the send, not the wait, ended the call
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
        with (
            self._connected_dealer(self._context, self._endpoint, self._routing_id) as sock,
            sockets.Pump(sock) as pump,
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


async def _send_before(pump: sockets.Pump, message: list[bytes], waiter: _Waiter) -> None:
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
