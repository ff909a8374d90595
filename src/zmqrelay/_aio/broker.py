"""The broker: a ROUTER frontend for clients, a backend for workers, frames shuttled between."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import anyio
import anyio.abc
import zmq
import zmq.asyncio

from zmqrelay._aio import balancing, curve, droplog, sockets
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.proxy import ProxyEngine
from zmqrelay._aio.relay import PythonRelay
from zmqrelay._aio.service import (
    Mode,
    Service,
    boundary_errors,
    chosen_provider,
    require_tracing,
    tracing_wanted,
)
from zmqrelay._core import policy
from zmqrelay._core.balancer import Balancer, BalancerStatistics
from zmqrelay._core.endpoints import connectable
from zmqrelay._core.metrics import Address
from zmqrelay._core.policy import Policy
from zmqrelay._core.relay import BrokerStatistics, ProxyTraffic, RelayCounters
from zmqrelay.errors import ClosedError, PolicyError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from zmqrelay._aio.metrics import BrokerCollector

Engine = Literal["libzmq", "python"]

_QUIET_SPELL = 0.1
"""After the libzmq engine, how long a drain waits for one more reply once frames balance."""

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

    In relay mode (the default) the frontend is a ROUTER and the backend a DEALER; every
    multipart message passes through unchanged, requests handed to connected workers in turn
    and replies routed back by the client's routing id. Plain REQ and DEALER clients and plain
    REP and DEALER workers in any language work against it.

    In load-balancing mode the backend is a ROUTER too: workers announce themselves (the
    guide's REQ workers with READY, zmqrelay's with credits and heartbeats), each request goes
    to the least-recently-used worker with a free credit, waits in a bounded queue when none
    is free, and ends in a typed refusal when it cannot be served (see ``docs/modes.md``).
    Requests name a service and workers offer one (plain peers use the default service); the
    broker speaks Majordomo (MDP 0.1, MDP 0.2 and majortomo's variant, detected per message)
    to clients and workers alike, and answers ``mmi.service`` itself (see
    ``docs/services.md``).

    Two engines move the frames. ``"libzmq"`` (the default) runs libzmq's own proxy in a thread,
    at C speed, with the event loop left free; it passes every message through as it is and
    counts frames and bytes. ``"python"`` relays in the event loop at several times the CPU cost
    per message, but checks every message: those without an envelope are dropped, and every
    drop is counted by its cause (see :class:`BrokerStatistics`).

    Args:
        frontend: endpoint to bind for clients, e.g. ``"tcp://*:5559"`` or ``"inproc://front"``.
        backend: endpoint to bind for workers.
        context: the ``zmq.asyncio.Context`` to open sockets in; ``inproc://`` peers must share
            it. Defaults to ``zmq.asyncio.Context.instance()``. The broker never terminates it.
        batch_size: how many messages one direction forwards before letting other tasks run.
        drain_timeout: how long :meth:`aclose` keeps passing replies of requests already
            forwarded, after it has stopped taking new ones.
        linger: seconds queued messages may still go out once the sockets close.
        max_message_size: if set, a client or a worker sending a frame larger than this many
            bytes is disconnected by libzmq before the message is read. It bounds each frame,
            not the number of frames in a message.
        high_water_mark: per-peer queue limit in messages (libzmq's default is 1000).
        engine: ``"libzmq"`` or ``"python"``, as above (relay mode).
        mode: ``"relay"`` or ``"load-balancing"``.
        heartbeat_interval: load-balancing: seconds between heartbeats to and from workers.
        liveness: load-balancing: heartbeat intervals of silence after which a worker is dead.
        queue_limit: load-balancing: requests that may wait for a worker of a service; past
            it, ``BUSY``.
        queue_timeout: load-balancing: seconds a request may wait for a worker; a request for
            a service no live worker offers ends as ``NO_WORKERS`` after it.
        redeliveries: load-balancing: times a request whose worker died is sent again (at
            least once); 0, the default, is at most once. A request may ask for more.
        request_timeout: load-balancing: the deadline of a request whose client set none (a
            plain REQ client, say): past it, the request ends in a ``DEADLINE`` refusal, so no
            client waits for ever on a worker that died unseen. ``None``: no such deadline.
        curve_secret_key: the broker's CURVE key pair (a :class:`CurveKeyPair`, or the path
            of its ``.key_secret`` file): both sockets then take CURVE peers only, encrypted,
            and authenticated as below (see ``docs/security.md``).
        client_keys: a directory of ``*.key`` files: the clients allowed on the frontend.
            ``None``: any CURVE client (encrypted, not authenticated).
        worker_keys: the same for workers on the backend; a client key is not a worker key.
        authorization: load-balancing: a policy file (TOML) saying which client keys may call
            which services and which worker keys may serve them.
        handshake_timeout: seconds a peer has to complete its CURVE handshake.
        metrics: Prometheus metrics (needs ``zmqrelay[metrics]``; see
            ``docs/observability.md``): ``"HOST:PORT"`` serves them over HTTP at
            ``/metrics`` (port 0: any free port, see :attr:`metrics_url`), with the process's
            own; a ``prometheus_client.CollectorRegistry`` gets the broker's metrics
            registered into it while the broker runs, for an application that serves its
            registry itself. ``None`` (the default): nothing is measured.
        tracing: load-balancing: OpenTelemetry spans (needs ``zmqrelay[tracing]``): for each
            request that comes with a trace context, a span of the time it waited for a
            worker, in the client's trace. ``None`` (the default): on when the application
            has set a tracer provider by the time the broker starts; ``True``: on, with the
            global provider; a ``TracerProvider``: on, with that one; ``False``: off. (A
            relay-mode broker passes trace context through untouched, and adds no span.)

    Raises:
        KeyFileError: a key file or a key directory cannot be read.
        PolicyError: the policy file cannot be read.
        ImportError: ``metrics`` without ``prometheus-client`` installed, or ``tracing``
            without ``opentelemetry-api``.

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
        engine: Engine = "libzmq",
        mode: Mode = "relay",
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        queue_limit: int = 10_000,
        queue_timeout: float = 5.0,
        redeliveries: int = 0,
        request_timeout: float | None = 60.0,
        curve_secret_key: CurveKeyPair | str | Path | None = None,
        client_keys: str | Path | None = None,
        worker_keys: str | Path | None = None,
        authorization: str | Path | None = None,
        handshake_timeout: float = 5.0,
        metrics: str | CollectorRegistry | None = None,
        tracing: bool | TracerProvider | None = None,
    ) -> None:
        require_tracing(tracing)
        self._tracing = tracing
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if engine not in ("libzmq", "python"):
            raise ValueError(f"engine must be 'libzmq' or 'python', not {engine!r}")
        if mode not in ("relay", "load-balancing"):
            raise ValueError(f"mode must be 'relay' or 'load-balancing', not {mode!r}")
        self._mode: Mode = mode
        if curve_secret_key is None and (client_keys or worker_keys or authorization):
            raise ValueError("client_keys, worker_keys and authorization need curve_secret_key")
        if authorization is not None and mode != "load-balancing":
            raise ValueError("authorization applies to services: it needs mode='load-balancing'")
        self._guard = (
            None
            if curve_secret_key is None
            else curve.Guard(curve_secret_key, client_keys, worker_keys, handshake_timeout)
        )
        self._authorization = None if authorization is None else Path(authorization)
        self._balancer = Balancer(
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
            redeliveries=redeliveries,
            request_timeout=request_timeout,
            first_token=secrets.randbits(64),
            secured=self._guard is not None,
        )
        self._balancer.policy = self._read_policy()
        super().__init__()
        self._frontend = frontend
        self._backend = backend
        self._context = context
        self._batch_size = batch_size
        self._drain_timeout = drain_timeout
        self._linger = linger
        self._max_message_size = max_message_size
        self._high_water_mark = high_water_mark
        self._engine: Engine = engine
        self._counters = RelayCounters()
        self._proxy: ProxyEngine | None = None
        self._drain: PythonRelay | None = None
        self._endpoints: Endpoints | None = None
        self._metrics_address: Address | None = None
        self._metrics_registry: CollectorRegistry | None = None
        self._metrics_bound: Address | None = None
        if metrics is not None:
            self._measure(metrics)

    def _measure(self, metrics: str | CollectorRegistry) -> None:
        try:
            from zmqrelay._aio import metrics as exposition  # noqa: F401 - fail now, not at run
        except ImportError as exc:
            raise ImportError(
                f"Broker(metrics=...) needs prometheus-client: pip install 'zmqrelay[metrics]' "
                f"({exc})"
            ) from exc
        if isinstance(metrics, str):
            self._metrics_address = Address.parse(metrics)
        else:
            self._metrics_registry = metrics
        if self._mode == "load-balancing":
            self._balancer.measure()

    def __repr__(self) -> str:
        where = (
            f"frontend={self._endpoints.frontend!r} backend={self._endpoints.backend!r}"
            if self._endpoints
            else f"frontend={self._frontend!r} backend={self._backend!r}"
        )
        kind = f"relay {self._engine}" if self._mode == "relay" else "load-balancing"
        return f"<Broker {kind} {self._state} {where}>"

    @property
    def endpoints(self) -> Endpoints:
        """The addresses peers connect to, known once the broker is ready.

        Raises:
            ClosedError: the broker has not bound its sockets yet.

        """
        if self._endpoints is None:
            raise ClosedError(f"the broker is {self._state}: it has not bound its endpoints")
        return self._endpoints

    @property
    def mode(self) -> Mode:
        """The routing mode: ``"relay"`` or ``"load-balancing"``."""
        return self._mode

    @property
    def engine(self) -> Engine:
        """What moves the frames in relay mode: ``"libzmq"`` or ``"python"``."""
        return self._engine

    @property
    def metrics_url(self) -> str | None:
        """Where the broker serves its metrics (``metrics="HOST:PORT"``), once it is ready.

        A wildcard address is given as the loopback address, with the port really bound.
        ``None`` when the broker serves no metrics, or not yet.
        """
        bound = self._metrics_bound
        if bound is None:
            return None
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bound.host, bound.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{bound.port}/metrics"

    def _read_policy(self) -> Policy | None:
        if self._authorization is None:
            return None
        try:
            text = self._authorization.read_text()
        except OSError as exc:
            raise PolicyError(f"{self._authorization}: {exc.strerror}") from None
        return policy.parse(text, str(self._authorization))

    def reload_keys(self) -> None:
        """Read the key directories and the policy file again (``zmqrelay broker`` on SIGHUP).

        Peers already connected stay connected. A key no longer allowed is refused at its
        next handshake and, in load-balancing mode, at its next message (its requests end in
        :class:`~zmqrelay.Forbidden`; a worker is told DISCONNECT).

        Raises:
            KeyFileError: a key file cannot be read: the keys allowed stay as they were.
            PolicyError: the policy cannot be read: it stays as it was.
            ValueError: the broker does not use CURVE.
        """
        if self._guard is None:
            raise ValueError("the broker does not use CURVE: it has no keys to reload")
        new_policy = self._read_policy()  # both read before either changes
        self._guard.reload()
        self._balancer.policy = new_policy
        guard = self._guard
        logger.info("keys reloaded: %s", "; ".join(guard.describe()), extra=guard.key_counts())

    def statistics(self) -> BrokerStatistics | BalancerStatistics:
        """A snapshot of the broker's counters, of a type that depends on the mode.

        ``statistics().mode`` tells them apart (and narrows the type for a type checker)::

            stats = broker.statistics()
            if stats.mode == "load-balancing":
                print(stats.scheduler.workers)
        """
        security = None if self._guard is None else self._guard.statistics()
        if self._mode == "load-balancing":
            return self._balancer.statistics()._replace(security=security)
        if self._engine == "python":
            return self._counters.snapshot()._replace(security=security)
        traffic = self._proxy.traffic() if self._proxy else ProxyTraffic(0, 0, 0, 0)
        if self._drain is not None:  # replies relayed in the loop after the proxy stopped
            traffic = traffic._replace(
                reply_frames=traffic.reply_frames + self._drain.drained_frames,
                reply_bytes=traffic.reply_bytes + self._drain.drained_bytes,
            )
        stats = self._counters.snapshot(traffic)._replace(security=security)
        if self._proxy is not None and self._proxy.undelivered:
            stats = stats._replace(
                undelivered_requests=stats.undelivered_requests + self._proxy.undelivered
            )
        return stats

    def _drops(self) -> dict[str, int]:
        """What was dropped or refused so far, by kind (cheaper than :meth:`statistics`)."""
        if self._mode == "load-balancing":
            drops = self._balancer.drops()
        else:  # the libzmq engine counts nothing of its own; what its drain drops, it counts
            drops = self._counters.drops()
        if self._guard is not None:
            drops.update(self._guard.drops())
        return drops

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
            ClosedError: the broker already ran.
            BrokenError: a socket failed (its context was terminated, say).

        """
        self._claim()
        sockets.seed_routing_ids()
        context = sockets.get_context(self._context)
        opened: list[sockets.AsyncSocket] = []
        bound: list[tuple[sockets.AsyncSocket, str]] = []
        guard = self._guard
        try:
            if guard is not None:  # ZAP answers before the first peer can connect
                curve.attach(context, guard)
            frontend = sockets.open_socket(
                context,
                zmq.ROUTER,
                # The proxy would stop at the first reply to a client that has gone.
                router_mandatory=self._engine == "python" or self._mode == "load-balancing",
                max_message_size=self._max_message_size,
                high_water_mark=self._high_water_mark,
                options=guard.server_options("clients") if guard else (),
            )
            opened.append(frontend)
            balanced = self._mode == "load-balancing"
            backend = sockets.open_socket(
                context,
                zmq.ROUTER if balanced else zmq.DEALER,
                router_mandatory=balanced,
                max_message_size=self._max_message_size,
                high_water_mark=self._high_water_mark,
                options=guard.server_options("workers") if guard else (),
            )
            opened.append(backend)
            if balanced:
                # A worker with a fixed identity that reconnects (the guide's Pirate workers
                # do) takes its identity over from its previous connection, which may not
                # have dropped yet; else its new connection would be ignored until it did.
                backend.setsockopt(zmq.ROUTER_HANDOVER, 1)
            else:
                # Replies are always read off the workers' connections, however full the
                # broker's own queue of them: a proxy blocked sending requests to a worker whose
                # connection is full must never also stop that worker from sending replies, or
                # both wait for each other for good. What this queues is bounded by the
                # requests the workers hold.
                backend.setsockopt(zmq.RCVHWM, 0)
            bound.append((frontend, sockets.bind(frontend, self._frontend)))
            bound.append((backend, sockets.bind(backend, self._backend)))
            self._endpoints = Endpoints(
                frontend=connectable(bound[0][1]), backend=connectable(bound[1][1])
            )
            logger.info(
                "broker (%s) bound frontend %s, backend %s",
                f"relay, {self._engine} engine" if self._mode == "relay" else self._mode,
                self._endpoints.frontend,
                self._endpoints.backend,
                extra={
                    "mode": self._mode,
                    "engine": self._engine if self._mode == "relay" else None,
                    "frontend": self._endpoints.frontend,
                    "backend": self._endpoints.backend,
                },
            )
            if guard is not None:
                logger.info("CURVE: %s", "; ".join(guard.describe()), extra=guard.key_counts())
            with (
                boundary_errors("broker"),
                curve.watching(guard, frontend, backend) as watch,
                self._collected() as collector,
            ):
                async with anyio.create_task_group() as watchers:
                    for task in watch:
                        watchers.start_soon(task)
                    balancer = self._balancer if self._mode == "load-balancing" else None
                    watchers.start_soon(
                        droplog.report, self._drops, droplog.broker_detail(balancer, guard)
                    )
                    if collector is not None and self._metrics_address is not None:
                        from zmqrelay._aio import metrics as exposition

                        self._metrics_bound = await watchers.start(
                            exposition.serve,
                            self._metrics_address,
                            exposition.registry_for(collector),
                        )
                    if self._mode == "load-balancing":
                        await self._serve_balanced(frontend, backend, task_status)
                    elif self._engine == "python":
                        await self._serve(frontend, backend, task_status)
                    else:
                        await self._serve_with_proxy(context, frontend, backend, task_status)
                    watchers.cancel_scope.cancel()
        finally:
            # Free for a new broker to bind once run() returns, even when cancelled.
            await sockets.unbind(bound)
            for sock in opened:
                sockets.close(sock, self._linger)
            if guard is not None:
                curve.detach(context, guard)
            self._finish()
            if self._endpoints is not None:
                stats = self.statistics()
                logger.info("broker stopped: %s", stats, extra={"statistics": stats})

    @contextmanager
    def _collected(self) -> Iterator[BrokerCollector | None]:
        """The broker's metrics collector, registered where asked while the broker runs."""
        if self._metrics_address is None and self._metrics_registry is None:
            yield None
            return
        from zmqrelay._aio import metrics as exposition

        balancer = self._balancer if self._mode == "load-balancing" else None
        collector = exposition.BrokerCollector(self, balancer)
        registry = self._metrics_registry
        if registry is not None:
            registry.register(collector)
        try:
            yield collector
        finally:
            if registry is not None:
                registry.unregister(collector)
            self._metrics_bound = None

    async def _serve(
        self,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        task_status: anyio.abc.TaskStatus[Endpoints],
    ) -> None:
        relay = PythonRelay(frontend, backend, self._counters, self._batch_size)
        try:
            async with anyio.create_task_group() as phase:
                phase.start_soon(relay.run, True)
                assert self._endpoints is not None
                self._report_ready(task_status, self._endpoints)
                await self._close_requested.wait()
                phase.cancel_scope.cancel()
            await self._drain_with(relay)
        finally:
            self._counters.undelivered_requests += self._counters.requests_held
            self._counters.requests_held = 0

    async def _serve_balanced(
        self,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        task_status: anyio.abc.TaskStatus[Endpoints],
    ) -> None:
        balancer, batch_size = self._balancer, self._batch_size
        guard = self._guard
        names = (guard.namer("clients"), guard.namer("workers")) if guard else None
        spans = self._trace_waits()
        try:
            async with anyio.create_task_group() as phase:
                phase.start_soon(
                    partial(
                        balancing.serve,
                        balancer,
                        frontend,
                        backend,
                        batch_size=batch_size,
                        names=names,
                        spans=spans,
                    )
                )
                assert self._endpoints is not None
                self._report_ready(task_status, self._endpoints)
                await self._close_requested.wait()
                phase.cancel_scope.cancel()
            self._state = "draining"
            with anyio.move_on_after(self._drain_timeout):
                await balancing.serve(
                    balancer,
                    frontend,
                    backend,
                    batch_size=batch_size,
                    intake=False,
                    names=names,
                    spans=spans,
                )
        finally:
            balancer.abandon()

    def _trace_waits(self) -> balancing.Spans | None:
        """What turns the waits the balancer records into spans, if the broker traces."""
        if not tracing_wanted(self._tracing):
            return None
        from zmqrelay._aio.tracing import BrokerTracing

        waits = self._balancer.record_waits()
        emit = BrokerTracing(chosen_provider(self._tracing), asyncio.get_running_loop().time).emit
        return lambda: emit(waits) if waits else None

    async def _serve_with_proxy(
        self,
        context: zmq.asyncio.Context,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        task_status: anyio.abc.TaskStatus[Endpoints],
    ) -> None:
        self._proxy = proxy = ProxyEngine(context, frontend, backend)
        try:
            async with anyio.create_task_group() as phase:
                await phase.start(proxy.run)
                assert self._endpoints is not None
                self._report_ready(task_status, self._endpoints)
                await self._close_requested.wait()
                phase.cancel_scope.cancel()
            # The proxy has handed the sockets back: drain replies in the loop, counting
            # frames, since the proxy counted frames rather than messages.
            traffic = proxy.traffic()
            frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._drain = relay = PythonRelay(frontend, backend, self._counters, self._batch_size)
            relay.pending_reply_frames = max(0, traffic.request_frames - traffic.reply_frames)
            await self._drain_with(relay, quiet_spell=_QUIET_SPELL)
        finally:
            proxy.close()

    async def _drain_with(self, relay: PythonRelay, *, quiet_spell: float = 0.0) -> None:
        """Relay replies (not requests) until all seem answered or ``drain_timeout`` passes.

        With ``quiet_spell``, "all answered" is only a hint (the libzmq engine counted frames,
        and a reply may have more frames than its request): the drain goes on until no reply
        has come for that long.
        """
        self._state = "draining"
        with anyio.move_on_after(self._drain_timeout):
            async with anyio.create_task_group() as phase:
                phase.start_soon(relay.run, False)
                await relay.drained.wait()
                while quiet_spell:
                    seen = relay.pending_reply_frames
                    await anyio.sleep(quiet_spell)
                    if relay.pending_reply_frames == seen:
                        break
                phase.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Stop gracefully and wait until the broker has closed.

        Stops taking requests, keeps relaying replies for up to ``drain_timeout`` seconds (or
        until every forwarded request has been answered), then closes both sockets. Safe to
        call more than once, and before the broker started (it then never starts).
        """
        await super().aclose()
