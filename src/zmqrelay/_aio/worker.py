"""The worker's facade: builds a handler runner and one socket per broker, and runs them.

Running handlers (and reading the brokers' messages) is :mod:`zmqrelay._aio.handlers`'s job;
registering and heartbeating with each broker is :mod:`zmqrelay._aio.backends`', over
:mod:`zmqrelay._core.registration`; the goodbyes (LEAVING, DISCONNECT) are said from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import anyio
import anyio.abc
import zmq
import zmq.asyncio

from zmqrelay._aio import sockets
from zmqrelay._aio.backends import Backend
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.handlers import FramesHandler, Handler, HandlerRunner
from zmqrelay._aio.service import (
    Mode,
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
from zmqrelay._core import mdp
from zmqrelay._core.registration import Conversation, Majordomo, Relayed, Zrw
from zmqrelay._core.worker import WorkerStatistics
from zmqrelay._core.worker_link import Link

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["AsyncWorker", "Mode"]


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
        protocol: ProtocolName = "zmqrelay",
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
        protocol: ProtocolName = "zmqrelay",
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
        protocol: ProtocolName = "zmqrelay",
        curve_keys: CurveKeyPair | str | Path | None = None,
        curve_server_key: CurveKeyPair | bytes | str | Path | None = None,
        tracing: bool | TracerProvider | None = None,
    ) -> None:
        self._socket_options = curve_options(curve_keys, curve_server_key)
        require_tracing(tracing)
        self._tracing_setting = tracing
        self._endpoints = endpoint_list(endpoint, self._kind)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        variant = majordomo_variant(protocol)
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
        self._runner = HandlerRunner(
            handler, frames=frames, concurrency=concurrency, gated=mode == "relay"
        )
        self._context = context
        self._routing_id = routing_id
        self._drain_timeout = drain_timeout
        self._linger = linger
        self._run_scope: anyio.CancelScope | None = None
        self._mode: Mode = mode
        self._heartbeat_interval = heartbeat_interval
        self._service = service_name
        self._variant = variant
        # One socket per broker, in every mode: a DEALER connected to several brokers deals
        # what it sends round-robin, replies included, whichever broker a request came from.
        self._links = [
            Link(endpoint, heartbeat_interval=heartbeat_interval, liveness=liveness)
            for endpoint in self._endpoints
        ]

    def __repr__(self) -> str:
        endpoints = self._endpoints[0] if len(self._endpoints) == 1 else self._endpoints
        return (
            f"<AsyncWorker {self._state} endpoint={endpoints!r} "
            f"in_flight={self._runner.in_flight}/{self._runner.concurrency}>"
        )

    def statistics(self) -> WorkerStatistics:
        """A snapshot of the worker's counters."""
        runner = self._runner
        links = tuple(link.statistics() for link in self._links)
        return WorkerStatistics(
            requests_received=runner.requests_received,
            replies_sent=runner.replies_sent,
            handler_errors=runner.handler_errors,
            malformed_requests=runner.malformed_requests,
            refused_requests=runner.refused_requests,
            in_flight=runner.in_flight,
            concurrency=runner.concurrency,
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

            provider = chosen_provider(self._tracing_setting)
            self._runner.tracing = WorkerTracing(provider, self._service)
        self._claim()
        try:
            with contextlib.ExitStack() as stack:
                context = sockets.get_context(self._context)
                backends = [
                    stack.enter_context(self._connected(context, link)) for link in self._links
                ]
                with boundary_errors(self._kind), anyio.CancelScope() as self._run_scope:
                    if self._runner.aborted:
                        self._run_scope.cancel()
                    await self._serve(backends, task_status)
        finally:
            self._finish()

    def _conversation(self, link: Link) -> Conversation:
        """What the worker says to the link's broker, in the protocol it was given."""
        if self._mode == "relay":
            return Relayed(link)
        if self._variant is not None:
            return Majordomo(
                link,
                variant=self._variant,
                service=self._service,
                heartbeat_interval=self._heartbeat_interval,
            )
        return Zrw(
            link,
            credits=self._runner.concurrency,
            service=self._service,
            heartbeat_interval=self._heartbeat_interval,
            ask_context=self._runner.tracing is not None,
        )

    @contextlib.contextmanager
    def _connected(self, context: zmq.asyncio.Context, link: Link) -> Iterator[Backend]:
        """A DEALER connected to the link's broker, closed on the way out with the linger set."""
        sock = sockets.open_socket(
            context, zmq.DEALER, routing_id=self._routing_id, options=self._socket_options
        )
        try:
            sockets.connect(sock, link.endpoint)
            with sockets.Pump(sock, f"the {self._kind}'s socket") as pump:
                yield Backend(self._conversation(link), pump)
        finally:
            sockets.close(sock, self._linger)

    async def _serve(
        self, backends: list[Backend], task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Serve until closed: then drain, say goodbye, and refuse what is left."""
        runner = self._runner
        try:
            async with anyio.create_task_group() as task_group:
                for _ in range(runner.concurrency):
                    task_group.start_soon(runner.serve)
                intakes = [anyio.CancelScope() for _ in backends]
                for backend, intake in zip(backends, intakes, strict=True):
                    task_group.start_soon(runner.receive, backend, intake)
                    if backend.conversation.registers:
                        task_group.start_soon(backend.keep_registered)
                self._report_ready(task_status, None)
                await self._close_requested.wait()
                self._state = "draining"
                for intake in intakes:
                    intake.cancel()
                for backend in backends:
                    backend.say(backend.conversation.draining())
                    task_group.start_soon(runner.refuse_arriving, backend)

                def say_idle() -> None:
                    if not runner.aborted:
                        for backend in backends:
                            backend.say(backend.conversation.idle())

                await runner.drain(self._drain_timeout, say_idle)
                task_group.cancel_scope.cancel()
        finally:
            runner.stopped(backends)
            if not runner.aborted:
                for backend in backends:
                    backend.say(backend.conversation.stopped())

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
        self._runner.aborted = True
        self._linger = 0.0
        if self._run_scope is not None:
            self._run_scope.cancel()
        await self._closed.wait()
