"""Majordomo requests from an :class:`~zmqrelay.AsyncClient` to any Majordomo broker.

The transport of an :class:`~zmqrelay.AsyncClient` with a Majordomo ``protocol``. Majordomo
replies carry no request id, so a socket can have only one request in flight, and a reply that
comes after its request gave up would be taken for the next one's. Each request therefore
borrows a socket of its own from a small pool per broker (:class:`Sessions`): one whose request
ended cleanly goes back to the pool, one whose request timed out or was cancelled is closed
(the guide's Lazy Pirate), so no late reply can ever be misread. Requests in flight at once use
as many sockets. With several brokers, each request goes to the one the links' core chooses
(:class:`~zmqrelay._aio.client_links.ClientLinks`, whose sockets only watch the brokers).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence

import anyio
import zmq
import zmq.asyncio

from zmqrelay._aio import sockets
from zmqrelay._aio.client_links import ClientLinks
from zmqrelay._aio.transport import closed_while_waiting, not_running
from zmqrelay._aio.zmqerrors import unbroken
from zmqrelay._core import mdp
from zmqrelay._core.client import ClientStatistics, error_from_plain
from zmqrelay._core.worker import check_body
from zmqrelay.errors import (
    BrokenError,
    BrokerLost,
    RemoteProtocolError,
    RequestTimeout,
)

__all__ = ["MajordomoTransport"]


_POOL_SIZE = 16  # idle sockets kept; more may be open while that many requests are in flight


class Sessions:
    """A pool of DEALER sockets speaking one Majordomo ``variant`` to ``endpoint``.

    It counts what it sends and receives in ``counts``, the transport the pools of all its
    brokers share.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        variant: mdp.Variant,
        linger: float,
        counts: MajordomoTransport,
        max_sockets: int,
        options: Sequence[tuple[int, int | bytes]] = (),
    ) -> None:
        self._counts = counts
        self._options = options
        # Not a CapacityLimiter: its tokens belong to a task, and an exchange (an async
        # generator) may be finished in another (a stream left early is closed by the loop).
        self._limiter = anyio.Semaphore(max_sockets)
        self._context = context
        self._endpoint = endpoint
        self._variant = variant
        self._linger = linger
        self._idle: list[sockets.AsyncSocket] = []
        self._busy: set[sockets.AsyncSocket] = set()
        self._lost: set[sockets.AsyncSocket] = set()
        self._closed = False

    def _borrow(self) -> sockets.AsyncSocket:
        if self._closed:
            raise not_running()
        if self._idle:
            sock = self._idle.pop()
        else:
            sock = sockets.open_socket(self._context, zmq.DEALER, options=self._options)
            try:
                sockets.connect(sock, self._endpoint)
            except BaseException:
                sockets.close(sock, 0)
                raise
        self._busy.add(sock)
        return sock

    def prepare(self) -> None:
        """Connect the first socket now.

        Raises:
            EndpointError: the endpoint is invalid.
        """
        self._give_back(self._borrow(), clean=True)

    def _give_back(self, sock: sockets.AsyncSocket, *, clean: bool) -> None:
        # A stream that read its final part may still hold its socket when the broker is lost
        # or the client closes: that socket is closed, and must not serve the next request.
        clean = clean and sock not in self._lost and not sock.closed
        self._busy.discard(sock)
        self._lost.discard(sock)
        if clean and not self._closed and len(self._idle) < _POOL_SIZE:
            self._idle.append(sock)
        else:
            sockets.close(sock, 0 if not clean else self._linger)

    async def exchange(
        self, service: bytes, body: Sequence[bytes], limit: float | None
    ) -> AsyncGenerator[list[bytes], None]:
        """Send one request; yield each part of its reply, the final one last.

        Raises:
            RequestTimeout: the reply (all of it) did not come within ``limit`` seconds.
            RequestRefused, RemoteError: a zmqrelay broker or worker said so (in the
                documented plain error frame).
            RemoteProtocolError: the broker answered in another protocol.
        """
        counts = self._counts
        clean = False
        deadline = None if limit is None else anyio.current_time() + limit
        with self._waiting(deadline, limit):  # a turn, when max_sockets are in use
            await self._limiter.acquire()
        try:
            sock = self._borrow()
        except BaseException:
            self._limiter.release()
            raise
        try:
            # Each wait has its own scope, up to the one deadline: no scope spans a yield.
            with self._waiting(deadline, limit, sock):
                await sock.send_multipart(mdp.encode_request(self._variant, service, body))
            counts.requests_sent += 1
            while True:
                with self._waiting(deadline, limit, sock):
                    frames = await sock.recv_multipart()
                try:
                    reply = mdp.decode_reply(self._variant, frames)
                except RemoteProtocolError:
                    counts.malformed_replies += 1
                    raise
                if reply.final:
                    clean = True
                    counts.replies_received += 1
                    failure = error_from_plain(reply.body)
                    if failure is not None:
                        raise failure
                yield reply.body
                if reply.final:
                    return
        finally:
            self._give_back(sock, clean=clean)
            self._limiter.release()

    @contextlib.contextmanager
    def _waiting(
        self,
        deadline: float | None,
        limit: float | None,
        sock: sockets.AsyncSocket | None = None,
    ) -> Iterator[None]:
        """Wait until ``deadline`` at most; a failed socket is a :class:`~zmqrelay.BrokenError`.

        A wait on ``sock`` that :meth:`lose` ended raises :class:`~zmqrelay.BrokerLost`.
        """
        try:
            with (
                unbroken("the client's socket"),
                anyio.fail_after(None if deadline is None else deadline - anyio.current_time()),
            ):
                yield
        except TimeoutError:
            self._counts.timeouts += 1
            raise RequestTimeout(f"no reply within {limit} s") from None
        except BrokenError:
            # A socket this client closed (a stream read between two parts) is not broken.
            self._raise_if_ended(sock)
            raise
        except anyio.get_cancelled_exc_class():
            # Closing the client closes the sockets of requests in flight, which cancels
            # what they await: the caller learns that the client closed, not that it was
            # cancelled (it was not). Losing the broker does the same to its requests.
            if not sockets.being_cancelled():
                self._raise_if_ended(sock)
            raise

    def _raise_if_ended(self, sock: sockets.AsyncSocket | None) -> None:
        """Raise what a wait on ``sock`` means if :meth:`lose` or :meth:`close` ended it."""
        if sock is not None and sock in self._lost:
            raise BrokerLost(f"lost broker {self._endpoint} before the reply") from None
        if self._closed:
            raise closed_while_waiting() from None

    @property
    def in_flight(self) -> int:
        """Requests waiting for (the rest of) their reply."""
        return len(self._busy)

    def lose(self) -> None:
        """The broker was lost: end the requests in flight in :class:`~zmqrelay.BrokerLost`.

        Their sockets are closed (no reply can come on them now); idle ones too, being
        connected to the broker's previous life.
        """
        for sock in self._busy:
            self._lost.add(sock)
            sockets.close(sock, 0)
        for sock in self._idle:
            sockets.close(sock, 0)
        self._idle.clear()

    def close(self) -> None:
        """Close every socket (those of requests still in flight too)."""
        self._closed = True
        for sock in [*self._idle, *self._busy]:
            sockets.close(sock, 0)
        self._idle.clear()
        self._busy.clear()


class MajordomoTransport:
    """Majordomo requests to one broker, or spread over several (``links``).

    It keeps the counters of :class:`~zmqrelay.ClientStatistics` for its pools.

    Args:
        endpoints: the brokers' frontends (one, unless ``links`` are given).
        variant: the Majordomo variant spoken.
        links: with several brokers, their links.
        context: the ``zmq.asyncio.Context``, or ``None`` for the process-wide one.
        routing_id: the identity of the links' sockets on the wire, if not libzmq's choice.
        linger: seconds a request may still go out after its socket closes.
        max_sockets: the most requests in flight at once to each broker.
        options: more socket options (CURVE's).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        variant: mdp.Variant,
        *,
        links: ClientLinks | None,
        context: zmq.asyncio.Context | None,
        routing_id: bytes | None,
        linger: float,
        max_sockets: int,
        options: Sequence[tuple[int, int | bytes]],
    ) -> None:
        self._endpoints = endpoints
        self._variant = variant
        self._links = links
        self._context = context
        self._routing_id = routing_id
        self._linger = linger
        self._max_sockets = max_sockets
        self._options = options
        self._sessions: list[Sessions] = []  # a pool per broker, while open
        self._request_ids = itertools.count()  # the links' names for requests; never sent
        self.requests_sent = 0
        self.replies_received = 0
        self.timeouts = 0
        self.malformed_replies = 0

    def statistics(self) -> ClientStatistics:
        """The counters; requests in flight are those holding a socket (a broker, with links)."""
        links = self._links
        if links is not None:
            in_flight = links.core.in_flight
        else:
            in_flight = sum(sessions.in_flight for sessions in self._sessions)
        return ClientStatistics(
            requests_sent=self.requests_sent,
            replies_received=self.replies_received,
            in_flight=in_flight,
            timeouts=self.timeouts,
            late_replies=0,
            foreign_replies=0,
            malformed_replies=self.malformed_replies,
            links=() if links is None else links.core.statistics(),
        )

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Connect a first socket to each broker, and serve requests while the block runs.

        On leaving, every socket closes: requests in flight fail with
        :class:`~zmqrelay.ClosedError`.

        Raises:
            EndpointError: an endpoint is invalid.
        """
        context = sockets.get_context(self._context)
        with contextlib.ExitStack() as stack:
            links = self._links
            if links is not None:
                links.open(
                    stack,
                    context,
                    options=self._options,
                    routing_id=self._routing_id,
                    linger=self._linger,
                )
            pools = []
            for endpoint in self._endpoints:
                sessions = Sessions(
                    context,
                    endpoint,
                    self._variant,
                    self._linger,
                    self,
                    self._max_sockets,
                    self._options,
                )
                stack.callback(sessions.close)
                sessions.prepare()  # connects one socket: a bad endpoint fails here
                pools.append(sessions)
            try:
                async with anyio.create_task_group() as task_group:
                    if links is not None:
                        task_group.start_soon(links.watch, self._lose)
                    self._sessions = pools
                    try:
                        yield
                    finally:
                        task_group.cancel_scope.cancel()
            finally:
                self._sessions = []

    async def exchange(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> list[bytes]:
        """One request: its reply's frames (a streamed reply's parts joined).

        ``context`` is not sent: Majordomo's framing has no room for it.
        """
        joined: list[bytes] = []
        async with contextlib.aclosing(
            self.stream(service, frames, limit, redeliveries, context)
        ) as parts:
            async for part in parts:
                joined.extend(part)
        return joined

    async def stream(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> AsyncGenerator[list[bytes], None]:
        """One request whose reply's parts are yielded as they come.

        Raises:
            ValueError: no service is named, or redeliveries are asked for.
            RequestTimeout: no broker was up, or the reply did not come, within ``limit``.
        """
        pools = self._sessions
        if not pools:
            raise not_running()
        if not service:
            raise ValueError("a Majordomo request names a service: request(service, body)")
        if redeliveries:
            raise ValueError("Majordomo carries no redelivery budget: redeliveries=0")
        check_body(frames, "request")
        links = self._links
        request_id = next(self._request_ids)
        failure: BaseException | None = None
        try:
            index, left = 0, limit
            if links is not None:
                index, left = await self._assign(links, request_id, limit)
            async with contextlib.aclosing(pools[index].exchange(service, frames, left)) as parts:
                async for part in parts:
                    if links is not None:
                        links.core.heard(index)
                    yield part
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if links is not None:
                links.release(request_id, failure)

    async def _assign(
        self, links: ClientLinks, request_id: int, limit: float | None
    ) -> tuple[int, float | None]:
        """The broker a request goes to, once one is up, and the time left of its ``limit``."""
        deadline = None if limit is None else anyio.current_time() + limit
        index = await links.assign(request_id, deadline=deadline)
        if index is None:
            self.timeouts += 1
            raise RequestTimeout(f"no reply within {limit} s (no broker was up)")
        return index, None if deadline is None else max(0.0, deadline - anyio.current_time())

    def batch(
        self,
        service: bytes,
        bodies: Iterable[bytes],
        limit: float | None,
        redeliveries: int,
        window: int,
    ) -> None:
        """``None``: each request of a batch needs a socket of its own, as :meth:`exchange`."""

    def _lose(self, index: int, request_ids: list[int]) -> None:
        """End the requests to broker ``index``, which was lost, and forget its sockets."""
        self._sessions[index].lose()
