"""zmqrelay's own request protocol on DEALER sockets: many requests in flight, matched by id.

The transport of an :class:`~zmqrelay.AsyncClient` with ``protocol="zmqrelay"``. A request
goes out as ``[tag, b"", body...]``, and the :class:`~zmqrelay._core.client.Correlator`
matches each tagged reply to the waiter of its request: one receive task per socket reads the
replies in batches, and one timer, armed for the earliest deadline, ends the requests whose
time is up. With one broker there is one socket; with several, a socket per broker
(:class:`~zmqrelay._aio.client_links.ClientLinks`), each request going out on the one the
core chooses. A request's path is the same either way but for how it goes out and how its
end is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import anyio
import zmq
import zmq.asyncio
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._aio.client_links import ClientLinks
from zmqrelay._aio.service import sole
from zmqrelay._aio.transport import closed_while_waiting, not_running
from zmqrelay._aio.waiters import Batch, Slot, Stream, Waiter, settled
from zmqrelay._core import tag
from zmqrelay._core.client import ClientStatistics, Correlator, Reply
from zmqrelay.errors import BrokenError, BrokerLost, ClosedError, RequestTimeout

__all__ = ["TaggedTransport"]

_READS = range(512)  # messages read per wake-up before the loop gets a turn


class TaggedTransport:
    """Tagged requests to one broker, or spread over several (``links``).

    Args:
        endpoints: the brokers' frontends (one, unless ``links`` are given).
        links: with several brokers, their links.
        context: the ``zmq.asyncio.Context``, or ``None`` for the process-wide one.
        routing_id: the sockets' identity on the wire, if not libzmq's choice.
        linger: seconds unsent requests may still go out after the sockets close.
        options: more socket options (CURVE's).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        links: ClientLinks | None,
        context: zmq.asyncio.Context | None,
        routing_id: bytes | None,
        linger: float,
        options: Sequence[tuple[int, int | bytes]],
    ) -> None:
        self._endpoint = endpoints[0]
        self._links = links
        self._context = context
        self._routing_id = routing_id
        self._linger = linger
        self._options = options
        self._correlator: Correlator[Waiter] = Correlator(secrets.randbits(64))
        self._pumps: list[sockets.Pump] = []  # a pump per broker, while open
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by open()
        # One timer for all requests, set for the earliest deadline (a heap in the core):
        # far cheaper than a timer or a cancel scope per request.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def statistics(self) -> ClientStatistics:
        """The correlator's counters, with each broker's link's when there are several."""
        counted = self._correlator.statistics()
        if self._links is not None:
            counted = counted._replace(links=self._links.core.statistics())
        return counted

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Connect, and match replies to requests while the block runs.

        On leaving, requests still waiting fail with :class:`~zmqrelay.ClosedError`.

        Raises:
            EndpointError: an endpoint is invalid.
        """
        context = sockets.get_context(self._context)
        with contextlib.ExitStack() as stack:
            links = self._links
            if links is None:
                sock = sockets.open_socket(
                    context, zmq.DEALER, routing_id=self._routing_id, options=self._options
                )
                stack.callback(sockets.close, sock, self._linger)
                sockets.connect(sock, self._endpoint)
                socks = [sock]
            else:
                socks = links.open(
                    stack,
                    context,
                    options=self._options,
                    routing_id=self._routing_id,
                    linger=self._linger,
                )
            pumps = [
                stack.enter_context(sockets.Pump(sock, "the client's socket")) for sock in socks
            ]
            self._loop = asyncio.get_running_loop()
            try:
                async with anyio.create_task_group() as task_group:
                    for index, pump in enumerate(pumps):
                        task_group.start_soon(self._receive, pump, index)
                    if links is not None:
                        task_group.start_soon(links.watch, self._lose)
                    self._pumps = pumps
                    try:
                        yield
                    finally:
                        task_group.cancel_scope.cancel()
            finally:
                self._pumps = []
                if self._timer is not None:
                    self._timer.cancel()
                for waiter in self._correlator.waiters():
                    if not waiter.done():
                        waiter.set_exception(closed_while_waiting())

    async def exchange(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> list[bytes]:
        """One request: send it, and return its reply's frames within ``limit`` seconds.

        ``context``: the trace context frame to send with it.
        """
        pumps = self._pumps
        if not pumps:
            raise not_running()
        links = self._links
        loop = self._loop
        waiter: asyncio.Future[Reply] = loop.create_future()
        request_id, message = self._open(
            waiter, frames, loop.time(), limit, redeliveries, service, False, context
        )
        try:
            if links is not None or not pumps[0].try_send(message):
                await self._send(request_id, message, waiter)
            reply = await waiter
        except BaseException:
            self._correlator.close(request_id)
            failure = None
            if waiter.done() and not waiter.cancelled():
                failure = waiter.exception()  # retrieved, whoever ended the call
            if links is not None:
                links.release(request_id, failure)
            raise
        # A reply takes its request off the correlator's table: there is nothing to close.
        if links is not None:
            links.release(request_id, None)
        return reply.result()

    async def stream(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> AsyncGenerator[list[bytes], None]:
        """One request whose reply's parts are yielded as they come (see :meth:`exchange`).

        Sent once: on a link that is up, with several brokers, and never again.
        """
        pumps = self._pumps
        if not pumps:
            raise not_running()
        links = self._links
        loop = self._loop
        waiter = Stream()
        request_id, message = self._open(
            waiter, frames, loop.time(), limit, redeliveries, service, True, context
        )
        try:
            if links is not None or not pumps[0].try_send(message):
                await self._send(request_id, message, waiter.ended())
            while True:
                reply = await waiter.next()
                yield reply.result()
                if reply.status is not tag.Status.PARTIAL:
                    return
        finally:
            self._correlator.close(request_id)
            if links is not None:
                links.release(request_id, waiter.failure)

    def batch(
        self,
        service: bytes,
        bodies: Iterable[bytes],
        limit: float | None,
        redeliveries: int,
        window: int,
    ) -> AsyncGenerator[tuple[int, bytes | Exception], None] | None:
        """Many single-frame requests on the one socket, or ``None`` with several brokers.

        Yields ``(index, reply or error)`` as :meth:`~zmqrelay.AsyncClient.replies` does. With
        several brokers each request must go out as :meth:`exchange` sends it.
        """
        if self._links is not None:
            return None
        return self._batch(service, bodies, limit, redeliveries, window)

    async def _batch(
        self,
        service: bytes,
        bodies: Iterable[bytes],
        limit: float | None,
        redeliveries: int,
        window: int,
    ) -> AsyncGenerator[tuple[int, bytes | Exception], None]:
        """A slot each in the correlator, no future: the consumer reads replies itself."""
        if not self._pumps:
            raise not_running()
        pump = self._pumps[0]
        loop = self._loop
        correlator = self._correlator
        batch = Batch()
        ready = batch.ready
        in_flight: dict[int, int] = {}  # index: request id
        bodies_left = iter(bodies)
        index = 0
        receive, match = pump.try_recv, correlator.receive
        unyielded = 0  # replies handed over since the event loop last ran
        try:
            while True:
                now = loop.time()  # once per refill: a deadline a little early, never late
                while len(in_flight) < window:
                    try:
                        body = next(bodies_left)
                    except StopIteration:
                        break
                    request_id, message = self._open(
                        Slot(batch, index), [body], now, limit, redeliveries, service
                    )
                    in_flight[index] = request_id
                    index += 1
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
                    _hand_over(receive, match)
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
                    assert outcome is not None  # only requests run as tasks leave None
                    yield done, settled(outcome)
        finally:
            for request_id in in_flight.values():
                correlator.close(request_id)

    async def _send(
        self, request_id: int, message: list[bytes], ended: asyncio.Future[Any]
    ) -> None:
        """Send a request that did not go out at once, on the socket or link it goes out on.

        With one broker, once its socket has room; with several, on the link the core chooses
        once one is up (and has room). Returns early, without sending, once ``ended`` is done
        (the request's timer fired, its broker was lost, or the client closed): the caller
        sees that in its waiter.
        """
        links = self._links
        index = 0 if links is None else await links.assign(request_id, ended=ended)
        if index is None:
            return
        pump = self._pumps[index]
        if pump.try_send(message):
            return
        try:
            async with anyio.create_task_group() as task_group:

                async def send() -> None:
                    # A closing client fails the waiter with ClosedError: the caller sees that.
                    with contextlib.suppress(ClosedError):
                        await pump.send(message)
                    task_group.cancel_scope.cancel()

                task_group.start_soon(send)
                await asyncio.wait([ended])
                task_group.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the socket broke: a BrokenError, not a group
            lone = sole(group)
            if isinstance(lone, BrokenError):
                raise lone from None
            raise

    def _lose(self, index: int, request_ids: list[int]) -> None:
        """End the requests of link ``index``, whose broker was lost."""
        assert self._links is not None
        endpoint = self._links.endpoints[index]
        for request_id in request_ids:
            waiter = self._correlator.lose(request_id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(BrokerLost(f"lost broker {endpoint} before the reply"))

    def _open(
        self,
        waiter: Waiter,
        frames: Sequence[bytes],
        now: float,
        limit: float | None,
        redeliveries: int,
        service: bytes,
        stream: bool = False,
        context: bytes | None = None,
    ) -> tuple[int, list[bytes]]:
        """Open a request in the correlator at ``now``: its id and the message to send.

        The timer is armed for its deadline if that comes before any other.
        """
        opened = self._correlator.open(
            waiter,
            frames,
            now=now,
            timeout=limit,
            redeliveries=redeliveries,
            service=service,
            stream=stream,
            context=context,
        )
        if limit is not None and now + limit < self._timer_at:
            self._arm_timer(now + limit)
        return opened

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

    async def _receive(self, pump: sockets.Pump, index: int) -> None:
        """Hand each reply that comes on ``pump`` (link ``index``'s) to its waiter."""
        # With several brokers, whatever comes tells that the link's broker lives.
        heard = None if self._links is None else self._links.core.heard
        receive = pump.try_recv
        match = self._correlator.receive
        while True:
            await pump.readable()
            if heard is not None:
                heard(index)
            if _hand_over(receive, match):
                await checkpoint()  # a whole batch: there may be more, after the others ran


def _hand_over(
    receive: Callable[[], list[bytes] | None],
    match: Callable[[list[bytes]], tuple[Waiter, Reply] | None],
) -> bool:
    """Hand each reply waiting in a socket to its waiter, a batch at most.

    Returns true if a whole batch came (there may be more).
    """
    for _ in _READS:
        frames = receive()
        if frames is None:
            return False
        matched = match(frames)
        if matched is not None and not matched[0].done():
            matched[0].set_result(matched[1])
    return True
