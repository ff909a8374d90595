"""Majordomo requests from an :class:`~zmqrelay.AsyncClient` to any Majordomo broker.

Majordomo replies carry no request id, so a socket can have only one request in flight, and a
reply that comes after its request gave up would be taken for the next one's. Each request
therefore borrows a socket of its own from a small pool: one whose request ended cleanly goes
back to the pool, one whose request timed out or was cancelled is closed (the guide's Lazy
Pirate), so no late reply can ever be misread. Requests in flight at once use as many sockets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Protocol

import anyio
import zmq
import zmq.asyncio

from zmqrelay._aio import sockets
from zmqrelay._aio.zmqerrors import broken
from zmqrelay._core import mdp
from zmqrelay._core.client import error_from_plain
from zmqrelay.errors import BrokerLost, ClosedError, RemoteProtocolError, RequestTimeout


class Counts(Protocol):
    """Where the counters of :class:`~zmqrelay.ClientStatistics` are kept.

    The client's correlator: Majordomo requests never enter its table (no id to match).
    """

    requests_sent: int
    replies_received: int
    timeouts: int
    malformed_replies: int


_POOL_SIZE = 16  # idle sockets kept; more may be open while that many requests are in flight


class Sessions:
    """A pool of DEALER sockets speaking one Majordomo ``variant`` to ``endpoint``."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        variant: mdp.Variant,
        linger: float,
        counts: Counts,
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
            raise ClosedError("the client is closed")
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
        self._busy.discard(sock)
        self._lost.discard(sock)
        if clean and not self._closed and len(self._idle) < _POOL_SIZE:
            self._idle.append(sock)
        else:
            sockets.close(sock, 0 if not clean else self._linger)

    async def exchange(
        self, service: bytes, body: Sequence[bytes], limit: float | None
    ) -> AsyncGenerator[tuple[list[bytes], bool], None]:
        """Send one request; yield each part of its reply with whether it is the final one.

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
                yield reply.body, reply.final
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
        """Wait until ``deadline`` at most; a socket error means the client closed.

        A wait on ``sock`` that :meth:`lose` ended raises :class:`~zmqrelay.BrokerLost`.
        """
        try:
            with anyio.fail_after(None if deadline is None else deadline - anyio.current_time()):
                yield
        except TimeoutError:
            self._counts.timeouts += 1
            raise RequestTimeout(f"no reply within {limit} s") from None
        except zmq.ZMQError as exc:
            raise broken(exc, "the client's socket") from exc
        except anyio.get_cancelled_exc_class():
            # Closing the client closes the sockets of requests in flight, which cancels
            # what they await: the caller learns that the client closed, not that it was
            # cancelled (it was not). Losing the broker does the same to its requests.
            if sock is not None and sock in self._lost and not sockets.being_cancelled():
                raise BrokerLost(f"lost broker {self._endpoint} before the reply") from None
            if self._closed and not sockets.being_cancelled():
                raise ClosedError("the client closed before the reply came") from None
            raise

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
