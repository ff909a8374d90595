"""A client's watched connections to several brokers: the shell of ``_core.client_links``.

Each broker gets a DEALER of its own with ZeroMQ heartbeats, and a monitor on it. What the
monitors report (a handshake done, a connection lost) goes to the core's
:class:`~zmqrelay._core.client_links.Links`, which chooses the broker of each request; a
request that finds no broker up waits here for one. What a link's socket carries, and what
becomes of the requests a lost broker held, is the transport's: tagged requests on the socket
itself, or (Majordomo) nothing but heartbeats, beside a pool of sockets per broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from zmqrelay._aio import sockets
from zmqrelay._aio.zmqerrors import unbroken
from zmqrelay._core.client_links import Links
from zmqrelay.errors import ClosedError, RequestTimeout

__all__ = ["ClientLinks"]

logger = logging.getLogger("zmqrelay.client")

_LINK_EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED) | int(zmq.EVENT_DISCONNECTED)


class ClientLinks:
    """A link per broker: its socket, its monitor, and the core deciding where requests go.

    Args:
        endpoints: the brokers' frontends.
        heartbeat_interval: seconds between ZeroMQ heartbeats on each link.
        heartbeat_timeout: seconds without a sign of life after which a link is lost.
        suspend_after: as :class:`~zmqrelay._core.client_links.Links`'.
        suspend_time: as :class:`~zmqrelay._core.client_links.Links`'.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        suspend_after: int,
        suspend_time: float,
    ) -> None:
        self.core = Links(endpoints, suspend_after=suspend_after, suspend_time=suspend_time)
        self.endpoints = list(endpoints)
        self._heartbeat_options = [
            (zmq.HEARTBEAT_IVL, round(heartbeat_interval * 1000)),
            (zmq.HEARTBEAT_TIMEOUT, round(heartbeat_timeout * 1000)),
            (zmq.HEARTBEAT_TTL, round(heartbeat_timeout * 1000)),
            # Queue only to a connection that completed its handshake, and drop what is
            # queued when it is lost: a request ended as lost never goes out later.
            (zmq.IMMEDIATE, 1),
        ]
        self._watches: list[sockets.AsyncSocket] = []
        self._up_waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def open(
        self,
        stack: contextlib.ExitStack,
        context: zmq.asyncio.Context,
        *,
        options: Sequence[tuple[int, int | bytes]],
        routing_id: bytes | None,
        linger: float,
    ) -> list[sockets.AsyncSocket]:
        """Open a watched DEALER connected to each broker, in the endpoints' order.

        ``stack`` closes them (with ``linger``) and their monitors.

        Raises:
            EndpointError: an endpoint is invalid.
        """
        links = []
        for endpoint in self.endpoints:
            sock = sockets.open_socket(
                context,
                zmq.DEALER,
                routing_id=routing_id,
                options=[*options, *self._heartbeat_options],
            )
            stack.callback(sockets.close, sock, linger)
            watch = sockets.monitor(sock, _LINK_EVENTS)
            stack.callback(_stop_monitor, sock, watch)
            self._watches.append(watch)
            sockets.connect(sock, endpoint)
            links.append(sock)
        return links

    async def watch(self, lost: Callable[[int, list[int]], None]) -> None:
        """Follow the links' monitors until cancelled, telling the core what they report.

        ``lost(index, request_ids)`` ends the requests that link ``index`` held when its
        broker was lost. When this stops, requests waiting for a link to come up stop
        waiting.
        """
        try:
            async with anyio.create_task_group() as task_group:
                for index, watch in enumerate(self._watches):
                    task_group.start_soon(self._watch, index, watch, lost)
        finally:
            self._closed = True
            for up in self._up_waiters:
                up.cancel()

    async def _watch(
        self, index: int, watch: sockets.AsyncSocket, lost: Callable[[int, list[int]], None]
    ) -> None:
        endpoint = self.endpoints[index]
        with unbroken("the client's monitor"):
            while True:
                event = parse_monitor_message(await watch.recv_multipart())["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.core.connected(index)
                    logger.info("broker %s is up", endpoint)
                    for up in self._up_waiters:
                        if not up.done():
                            up.set_result(None)
                    self._up_waiters.clear()
                elif event == zmq.EVENT_DISCONNECTED:
                    request_ids = self.core.disconnected(index)
                    logger.warning(
                        "lost broker %s with %d requests in flight", endpoint, len(request_ids)
                    )
                    lost(index, request_ids)

    async def assign(
        self,
        request_id: int,
        *,
        ended: asyncio.Future[Any] | None = None,
        deadline: float | None = None,
    ) -> int | None:
        """The link chosen for a request, waiting for one to come up if none is.

        ``None`` once ``ended`` is done or the loop's time reaches ``deadline`` first.

        Raises:
            ClosedError: the client closed while the request waited.
        """
        loop = asyncio.get_running_loop()
        index = self.core.assign(request_id, loop.time())
        while index is None:
            if self._closed:
                raise ClosedError("the client closed before the request went out")
            up: asyncio.Future[None] = loop.create_future()
            self._up_waiters.append(up)
            try:
                await asyncio.wait(
                    [up] if ended is None else [up, ended],
                    timeout=None if deadline is None else deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if not up.done():
                    up.cancel()
                    self._up_waiters.remove(up)
            if ended is not None and ended.done():
                return None
            if deadline is not None and loop.time() >= deadline:
                return None
            index = self.core.assign(request_id, loop.time())
        return index

    def release(self, request_id: int, failure: BaseException | None) -> None:
        """A request ended, answered or in ``failure``: its link no longer holds it."""
        # Only the client's own timeout counts against a broker (a refusal is an answer).
        now = asyncio.get_running_loop().time()
        self.core.ended(request_id, now, timed_out=type(failure) is RequestTimeout)


def _stop_monitor(sock: sockets.AsyncSocket, watch: sockets.AsyncSocket) -> None:
    if not sock.closed:
        sock.disable_monitor()
    watch.close(linger=0)
