"""The broker: a ROUTER frontend for clients, a backend for workers, frames shuttled between."""

from __future__ import annotations

import logging
from typing import NamedTuple

import anyio
import anyio.abc
import zmq
import zmq.asyncio
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._aio.service import Service, boundary_errors
from zmqrelay._core.endpoints import connectable
from zmqrelay._core.envelope import is_routable
from zmqrelay._core.relay import BrokerStatistics, RelayCounters
from zmqrelay.errors import ClosedError

logger = logging.getLogger("zmqrelay.broker")


class Endpoints(NamedTuple):
    """Where peers connect to a running broker.

    Wildcard binds are given as loopback addresses with the port really bound, so
    ``Broker(frontend="tcp://*:0", ...)`` reports something like ``tcp://127.0.0.1:41235``.
    """

    frontend: str
    """The address clients connect to."""
    backend: str
    """The address workers connect to."""


class Broker(Service):
    """A request-reply broker: clients connect to ``frontend``, workers to ``backend``.

    In relay mode (the only mode so far) the frontend is a ROUTER and the backend a DEALER;
    every well-formed multipart message passes through unchanged, requests handed to connected
    workers in turn and replies routed back by the client's routing id. Plain REQ and DEALER
    clients and plain REP and DEALER workers in any language work against it.

    Args:
        frontend: endpoint to bind for clients, e.g. ``"tcp://*:5559"`` or ``"inproc://front"``.
        backend: endpoint to bind for workers.
        context: the ``zmq.asyncio.Context`` to open sockets in; ``inproc://`` peers must share
            it. Defaults to ``zmq.asyncio.Context.instance()``. The broker never terminates it.
        batch_size: how many messages one direction forwards before letting other tasks run.
        drain_timeout: how long :meth:`aclose` keeps passing replies of requests already
            forwarded, after it has stopped taking new ones.
        linger: seconds queued messages may still go out once the sockets close.
        max_message_size: if set, a client sending a frame larger than this many bytes is
            disconnected by libzmq before the message is read. It bounds each frame, not the
            number of frames in a message.
        high_water_mark: per-peer queue limit in messages (libzmq's default is 1000).

    Example::

        async with Broker(frontend="tcp://*:5559", backend="tcp://*:5560") as broker:
            print(broker.endpoints.frontend)
            ...

    or, to serve until cancelled: ``await Broker(frontend=..., backend=...).run()``.

    """

    _kind = "broker"

    def __init__(
        self,
        *,
        frontend: str,
        backend: str,
        context: zmq.asyncio.Context | None = None,
        batch_size: int = 512,
        drain_timeout: float = 5.0,
        linger: float = 0.1,
        max_message_size: int | None = None,
        high_water_mark: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        super().__init__()
        self._frontend = frontend
        self._backend = backend
        self._context = context
        self._batch_size = batch_size
        self._drain_timeout = drain_timeout
        self._linger = linger
        self._max_message_size = max_message_size
        self._high_water_mark = high_water_mark
        self._counters = RelayCounters()
        self._endpoints: Endpoints | None = None

    def __repr__(self) -> str:
        where = (
            f"frontend={self._endpoints.frontend!r} backend={self._endpoints.backend!r}"
            if self._endpoints
            else f"frontend={self._frontend!r} backend={self._backend!r}"
        )
        return f"<Broker relay {self._state} {where}>"

    @property
    def endpoints(self) -> Endpoints:
        """The addresses peers connect to, known once the broker is ready.

        Raises:
            ClosedError: the broker has not bound its sockets yet.

        """
        if self._endpoints is None:
            raise ClosedError(f"the broker is {self._state}: it has not bound its endpoints")
        return self._endpoints

    def statistics(self) -> BrokerStatistics:
        """A snapshot of the broker's counters."""
        return self._counters.snapshot("relay")

    async def wait_ready(self) -> Endpoints:  # type: ignore[override]
        """Wait until the broker has bound both sockets and forwards messages.

        Raises:
            ClosedError: the broker closed without ever becoming ready.
        """
        await super().wait_ready()
        return self.endpoints

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Endpoints] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind both sockets and relay messages until cancelled or closed.

        Reports :class:`Endpoints` through ``task_status`` once both sockets are bound, so
        ``endpoints = await task_group.start(broker.run)`` never races the broker. On
        cancellation it stops at once; after :meth:`aclose` it first drains. Either way it
        closes both sockets before returning. A broker runs once.

        Raises:
            EndpointError: an endpoint could not be bound.
            ClosedError: the broker already ran, or its context was terminated.

        """
        self._claim()
        context = sockets.get_context(self._context)
        opened: list[sockets.AsyncSocket] = []
        try:
            frontend = sockets.open_socket(
                context,
                zmq.ROUTER,
                router_mandatory=True,
                max_message_size=self._max_message_size,
                high_water_mark=self._high_water_mark,
            )
            opened.append(frontend)
            backend = sockets.open_socket(
                context, zmq.DEALER, high_water_mark=self._high_water_mark
            )
            opened.append(backend)
            self._endpoints = Endpoints(
                frontend=connectable(sockets.bind(frontend, self._frontend)),
                backend=connectable(sockets.bind(backend, self._backend)),
            )
            logger.info(
                "broker (relay) bound frontend %s, backend %s",
                self._endpoints.frontend,
                self._endpoints.backend,
            )
            with boundary_errors("broker"):
                await self._serve(frontend, backend, task_status)
        finally:
            for sock in opened:
                sockets.close(sock, self._linger)
            self._finish()
            if self._endpoints is not None:
                logger.info("broker stopped: %s", self.statistics())

    async def _serve(
        self,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        task_status: anyio.abc.TaskStatus[Endpoints],
    ) -> None:
        relay = _Relay(frontend, backend, self._counters, self._batch_size)
        try:
            async with anyio.create_task_group() as phase:
                phase.start_soon(relay.run, True)
                assert self._endpoints is not None
                self._report_ready(task_status, self._endpoints)
                await self._close_requested.wait()
                phase.cancel_scope.cancel()
            self._state = "draining"
            with anyio.move_on_after(self._drain_timeout):
                async with anyio.create_task_group() as phase:
                    phase.start_soon(relay.run, False)
                    await relay.drained.wait()
                    phase.cancel_scope.cancel()
        finally:
            self._counters.undelivered_requests += self._counters.requests_held
            self._counters.requests_held = 0

    async def aclose(self) -> None:
        """Stop gracefully and wait until the broker has closed.

        Stops taking requests, keeps relaying replies for up to ``drain_timeout`` seconds (or
        until every forwarded request has been answered), then closes both sockets. Safe to
        call more than once, and before the broker started (it then never starts).
        """
        await super().aclose()


class _Relay:
    """Both directions of relay mode in one task.

    One task owns both sockets, so every send is followed by a fresh look at both sockets'
    events before the next wait: libzmq signals readiness on an edge-triggered descriptor, and
    a send made while another task waited could swallow that edge. Each wake-up drains up to a
    batch per direction without awaiting; a full batch yields before looking again, so neither
    direction starves the other or the event loop.
    """

    def __init__(
        self,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        counters: RelayCounters,
        batch_size: int,
    ) -> None:
        self.frontend = frontend
        self.backend = backend
        self.counters = counters
        self.batch = range(batch_size)
        self.held: list[bytes] | None = None
        self.drained = anyio.Event()

    async def run(self, intake: bool) -> None:
        """Relay until cancelled; with ``intake`` false, only replies (and a held request)."""
        front, back = sockets.shadow(self.frontend), sockets.shadow(self.backend)
        poller = zmq.asyncio.Poller()
        while True:
            busy = self._replies(back, front)
            busy = self._requests(front, back, intake) or busy
            if not intake and not self.counters.outstanding:
                self.drained.set()
            if busy:
                await checkpoint()
                continue
            held = self.held is not None
            poller.register(self.frontend, sockets.POLLIN if intake and not held else 0)
            poller.register(self.backend, sockets.POLLIN | (sockets.POLLOUT if held else 0))
            await poller.poll()

    def _requests(self, front: sockets.SyncSocket, back: sockets.SyncSocket, intake: bool) -> bool:
        """Forward requests; true when a full batch went through (there may be more)."""
        counters = self.counters
        if self.held is not None:
            if not self._send_request(back, self.held):
                return False
            self.held = None
            counters.requests_held = 0
        if not intake:
            return False
        for _ in self.batch:
            try:
                frames = front.recv_multipart(sockets.NOBLOCK)
            except zmq.Again:
                return False
            if not is_routable(frames):
                counters.malformed_requests += 1
            elif not self._send_request(back, frames):
                # No worker can take it yet: hold it and stop reading clients (backpressure).
                self.held = frames
                counters.requests_held = 1
                return False
        return True

    def _send_request(self, back: sockets.SyncSocket, frames: list[bytes]) -> bool:
        try:
            back.send_multipart(frames, sockets.NOBLOCK)
        except zmq.Again:
            return False
        self.counters.requests_forwarded += 1
        return True

    def _replies(self, back: sockets.SyncSocket, front: sockets.SyncSocket) -> bool:
        """Forward replies; true when a full batch went through (there may be more)."""
        counters = self.counters
        for _ in self.batch:
            try:
                frames = back.recv_multipart(sockets.NOBLOCK)
            except zmq.Again:
                return False
            if not is_routable(frames):
                counters.malformed_replies += 1
                continue
            try:
                front.send_multipart(frames, sockets.NOBLOCK)
            except zmq.Again:
                counters.congested_replies += 1
            except zmq.ZMQError as exc:
                if exc.errno != sockets.EHOSTUNREACH:
                    raise
                counters.unroutable_replies += 1
            else:
                counters.replies_forwarded += 1
        return True
