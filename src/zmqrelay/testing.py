"""Run a broker, workers and clients in-process for tests and scripts, with fault injection.

The pytest plugin (:mod:`zmqrelay.pytest_plugin`) builds its fixtures from these pieces; any
other test runner or script can use them directly::

    from zmqrelay.testing import LeakCheckingContext, relay_harness

    async def main() -> None:
        context = LeakCheckingContext()
        async with relay_harness(context=context) as harness:
            await harness.start_worker(handle, concurrency=4)
            client = await harness.connect_client()
            assert await client.request(b"ping") == b"pong"
        context.check_closed()  # raises SocketLeakError naming what was left open

Everything here runs on asyncio (zmq.asyncio does).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast

import anyio
import zmq
import zmq.asyncio

from zmqrelay._aio.broker import Broker, Endpoints
from zmqrelay._aio.client import AsyncClient
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.service import Mode, Service
from zmqrelay._aio.worker import AsyncWorker
from zmqrelay._core.balancer import BalancerStatistics
from zmqrelay._core.relay import BrokerStatistics
from zmqrelay._core.worker import WorkerStatistics

__all__ = [
    "TRANSPORTS",
    "BrokerHarness",
    "Hosted",
    "LeakCheckingContext",
    "SocketLeakError",
    "ThrowAwayKeys",
    "WorkerHandle",
    "relay_harness",
    "running",
]

TRANSPORTS = ("inproc", "ipc", "tcp")
"""The transports an in-process broker can listen on."""

S = TypeVar("S", bound=Service)


class SocketLeakError(AssertionError):
    """Sockets were left open, or the context did not terminate, when a test ended."""


class _Lingering(NamedTuple):
    """A socket closed with a linger: its unsent messages may hold up the context's end."""

    description: str
    linger: int
    """Milliseconds, or -1: for ever."""
    closed_at: float
    """``time.monotonic()``."""

    def holds_past(self, moment: float) -> bool:
        """Whether its linger may still run at ``moment`` (a ``time.monotonic()``)."""
        return self.linger < 0 or self.closed_at + self.linger / 1000 > moment

    def __str__(self) -> str:
        linger = "-1 (for ever)" if self.linger < 0 else f"{self.linger} ms"
        return f"{self.description}, closed with linger={linger}"


class _TrackedSocket(zmq.asyncio.Socket):
    """A socket of a :class:`LeakCheckingContext`, which tells it how it was closed."""

    def close(self, linger: int | None = None) -> None:
        """Close the socket; a linger other than 0 is remembered by the context."""
        context = self.context
        if not self.closed and isinstance(context, LeakCheckingContext):
            # A socket of a context being terminated answers no option (ETERM): it goes
            # unremembered rather than unclosed.
            with contextlib.suppress(zmq.ZMQError):
                context._closing(self, int(self.get(zmq.LINGER)) if linger is None else linger)
        super().close(linger=linger)


class LeakCheckingContext(zmq.asyncio.Context):
    """A ``zmq.asyncio.Context`` that remembers the sockets opened in it.

    :meth:`check_closed` then proves that every one was closed and that the context
    terminates within a deadline, as a test's teardown should. It also remembers which
    sockets were closed with a linger other than 0 (libzmq's default is to linger for ever),
    since those keep the context from terminating while they hold messages not yet sent.
    """

    _opened: list[zmq.asyncio.Socket]
    _where: dict[int, str]
    _lingering: list[_Lingering]

    def __init__(self) -> None:
        super().__init__()
        self._opened = []
        self._where = {}
        self._lingering = []

    def socket(self, socket_type: int, **kwargs: Any) -> zmq.asyncio.Socket:  # type: ignore[override]
        """Open a socket, and remember it and the code that opened it."""
        kwargs.setdefault("socket_class", _TrackedSocket)
        sock = super().socket(socket_type, **kwargs)
        self._opened.append(sock)
        self._where[id(sock)] = _caller()
        return sock

    def _closing(self, sock: zmq.asyncio.Socket, linger: int) -> None:
        if linger != 0:
            description = f"{_describe(sock)}, opened at {self._where.get(id(sock), '?')}"
            self._lingering.append(_Lingering(description, linger, time.monotonic()))

    @property
    def opened(self) -> list[zmq.asyncio.Socket]:
        """Every socket opened in this context so far, closed or not."""
        return list(self._opened)

    def check_closed(self, deadline: float = 5.0) -> None:
        """Terminate the context, and fail if anything was left open.

        Sockets still open are closed (so the context can terminate) and named in the error.
        When the context does not terminate, the error names the sockets that were closed
        with a linger still running at the deadline: one of them holds unsent messages.

        Raises:
            SocketLeakError: a socket was still open, or the context did not terminate within
                ``deadline`` seconds.
        """
        leaked = [sock for sock in self._opened if not sock.closed]
        descriptions = [f"{_describe(sock)}, opened at {self._where[id(sock)]}" for sock in leaked]
        for sock in leaked:
            sock.close(linger=0)
        terminated = threading.Event()

        def terminate() -> None:
            self.term()
            terminated.set()

        threading.Thread(target=terminate, name="zmqrelay-term", daemon=True).start()
        if leaked:
            raise SocketLeakError(
                f"{len(leaked)} zmq socket(s) left open: {'; '.join(descriptions)}"
            )
        if not terminated.wait(deadline):
            raise SocketLeakError(self._not_terminated(deadline, time.monotonic()))

    def _not_terminated(self, deadline: float, now: float) -> str:
        message = f"the zmq context did not terminate within {deadline} s"
        held = [str(sock) for sock in self._lingering if sock.holds_past(now)]
        if not held:
            return (
                f"{message}, and no socket opened through its socket() holds it: was one "
                "opened another way (a socket_class, zmq.Socket(context, ...))?"
            )
        return (
            f"{message}: {len(held)} socket(s) closed with a linger that may still keep "
            f"messages waiting to be sent: {'; '.join(held)} (close it with linger=0, or "
            "read or deliver its queued messages, before the context terminates)"
        )


def _caller() -> str:
    """Where the code outside zmq and zmqrelay that opened a socket is."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(part in frame.filename for part in _LIBRARY_PATHS):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "an unknown place"


_LIBRARY_PATHS = (
    os.path.dirname(zmq.__file__),
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(contextlib.__file__) + os.sep + "contextlib.py",
    os.sep + "asyncio" + os.sep,
    os.sep + "anyio" + os.sep,
)


def _describe(sock: zmq.asyncio.Socket) -> str:
    kind = zmq.SocketType(int(sock.type)).name
    try:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except zmq.ZMQError:
        endpoint = ""
    return f"{kind} socket" + (f" last bound/connected at {endpoint}" if endpoint else "")


class Hosted(Generic[S]):
    """A service (Broker, AsyncWorker or AsyncClient) running in a task of its own.

    Unlike ``async with service``, it may be started and stopped from different tasks, as
    pytest-asyncio does with the two halves of an async generator fixture.
    """

    def __init__(self, service: S) -> None:
        self.service = service
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None

    async def start(self) -> S:
        """Start the service and return it once it is ready."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        async def host() -> None:
            async with anyio.create_task_group() as task_group:
                self._scope = task_group.cancel_scope
                try:
                    await task_group.start(self.service.run)
                except BaseException as exc:
                    ready.set_exception(exc)  # as run() raised it, not wrapped in a group
                    raise
                ready.set_result(None)

        self._task = loop.create_task(host(), name=f"zmqrelay host of {self.service!r}")
        try:
            await ready
        except BaseException:
            with contextlib.suppress(BaseException):
                await self._task
            raise
        return self.service

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop the service, gracefully (``aclose()``) or at once (cancelled), and wait."""
        if self._task is None:
            return
        task, self._task = self._task, None
        if graceful:
            await self.service.aclose()
        elif self._scope is not None:
            self._scope.cancel()
        else:  # the host task has not run yet
            task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.result()  # a crash of the service is raised here


@asynccontextmanager
async def running(service: S) -> AsyncIterator[S]:
    """Run ``service`` in a task of its own for the duration of the block (see :class:`Hosted`).

    Returns once the service is ready; on the way out closes it gracefully and waits for it.
    """
    hosted = Hosted(service)
    started = await hosted.start()
    try:
        yield started
    finally:
        await hosted.stop()


class WorkerHandle:
    """A worker attached to a :class:`BrokerHarness`, with faults to inject.

    The handler is wrapped so that the test can make the worker slow (:meth:`slow_down`) or
    silent (:meth:`pause`): with a pause the worker keeps taking requests but answers none
    until :meth:`resume`. :meth:`kill` stops it as a crashed process would.
    """

    def __init__(self, worker: AsyncWorker) -> None:
        self.worker = worker
        self._delay = 0.0
        self._resumed = anyio.Event()
        self._resumed.set()

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.worker!r} delay={self._delay} paused={self.paused}>"

    def statistics(self) -> WorkerStatistics:
        """The worker's statistics."""
        return self.worker.statistics()

    def slow_down(self, delay: float) -> None:
        """Make every request take at least ``delay`` more seconds (0 restores speed)."""
        self._delay = delay

    def pause(self) -> None:
        """Hold every request, in hand or new, without answering, until :meth:`resume`."""
        if self._resumed.is_set():
            self._resumed = anyio.Event()

    def resume(self) -> None:
        """Answer the held requests and serve normally again."""
        self._resumed.set()

    @property
    def paused(self) -> bool:
        """Whether the worker is paused."""
        return not self._resumed.is_set()

    async def stop(self) -> None:
        """Stop gracefully (finish the requests in hand)."""
        await self.worker.aclose()

    async def kill(self) -> None:
        """Stop abruptly, mid-request: no replies, nothing more sent (see ``abort()``)."""
        await self.worker.abort()

    async def _before_handling(self) -> None:
        await self._resumed.wait()
        if self._delay:
            await anyio.sleep(self._delay)


class ThrowAwayKeys:
    """CURVE key pairs made for one harness, in a folder removed with it.

    The broker's pair, and a client's and a worker's that the broker allows (as ``client``
    and ``worker``, the names a policy file gives them). More with :meth:`stranger`, or with
    :meth:`BrokerHarness.allow_key` for peers the broker allows.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.broker = self.make("broker", "broker")
        self.client = self.make("clients", "client")
        self.worker = self.make("workers", "worker")

    def __repr__(self) -> str:
        return f"<ThrowAwayKeys in {self.folder}>"

    @property
    def client_keys(self) -> Path:
        """The folder of the clients' public keys the broker allows."""
        return self.folder / "clients"

    @property
    def worker_keys(self) -> Path:
        """The folder of the workers' public keys the broker allows."""
        return self.folder / "workers"

    def make(self, subfolder: str, name: str) -> CurveKeyPair:
        """A new key pair, written as ``NAME.key`` and ``NAME.key_secret`` in ``subfolder``.

        Raises:
            KeyFileError: ``name`` is taken in ``subfolder``, or is not a plain file name.
        """
        _, secret = CurveKeyPair.create(self.folder / subfolder, name)
        return CurveKeyPair.load(secret)

    def stranger(self, name: str) -> CurveKeyPair:
        """A new key pair the broker does not know (for testing refusals)."""
        return self.make("strangers", name)

    def broker_options(self) -> dict[str, Any]:
        """The :class:`~zmqrelay.Broker` options that make it use these keys."""
        return {
            "curve_secret_key": self.broker,
            "client_keys": self.client_keys,
            "worker_keys": self.worker_keys,
        }


class BrokerHarness:
    """An in-process broker, or an external one, with workers and clients attached.

    Workers and clients started through the harness are closed with it. Create one with
    :func:`relay_harness`.
    """

    def __init__(
        self,
        *,
        context: zmq.asyncio.Context,
        frontend: str,
        backend: str,
        external: bool = False,
        broker_options: dict[str, Any] | None = None,
        curve: ThrowAwayKeys | None = None,
    ) -> None:
        self.context = context
        self.external = external
        self.curve = curve
        """The harness's CURVE keys, when its broker uses CURVE (``curve=True``)."""
        self._frontend = frontend
        self._backend = backend
        self._broker_options = broker_options or {}
        self._broker: Hosted[Broker] | None = None
        self._workers: list[tuple[WorkerHandle, Hosted[AsyncWorker]]] = []
        self._clients: list[Hosted[AsyncClient]] = []
        self.endpoints = Endpoints(frontend, backend)

    def __repr__(self) -> str:
        where = "external" if self.external else repr(self._broker and self._broker.service)
        return f"<BrokerHarness {where} endpoints={self.endpoints}>"

    @property
    def mode(self) -> Mode | None:
        """The broker's mode, ``"relay"`` or ``"load-balancing"``; ``None`` when unknown.

        An in-process broker's is known. An external broker's is whatever ``relay_harness``
        was told (its ``mode=``), if anything.
        """
        mode: Mode | None = self._broker_options.get("mode")
        return "relay" if mode is None and not self.external else mode

    @property
    def broker(self) -> Broker:
        """The in-process :class:`~zmqrelay.Broker` (a new one after a restart)."""
        if self._broker is None:
            raise RuntimeError(self._unavailable("has no in-process broker"))
        return self._broker.service

    def statistics(self) -> BrokerStatistics | BalancerStatistics:
        """The in-process broker's statistics (since its last restart)."""
        return self.broker.statistics()

    async def start_broker(self) -> None:
        """Start the in-process broker; after a first start, on the endpoints it bound.

        Raises:
            EndpointError: an endpoint is in use.
        """
        if self.external:
            raise RuntimeError(self._unavailable("cannot start a broker"))
        options = dict(self._broker_options)
        if self.curve is not None:
            options.update(self.curve.broker_options())
        hosted = Hosted(
            Broker(frontend=self._frontend, backend=self._backend, context=self.context, **options)
        )
        broker = await hosted.start()
        self._broker = hosted
        self.endpoints = broker.endpoints
        # A restart binds the very addresses peers already connect to (tcp ports included).
        self._frontend, self._backend = self.endpoints

    async def stop_broker(self, *, graceful: bool = True) -> None:
        """Stop the in-process broker: gracefully (draining), or at once."""
        if self._broker is not None:
            await self._broker.stop(graceful=graceful)

    async def restart_broker(self, *, graceful: bool = False) -> None:
        """Stop the broker and start a new one on the same endpoints.

        The old one stops at once, as a crash would, unless ``graceful``. Workers and clients
        on ``ipc`` or ``tcp`` reconnect by themselves.

        Raises:
            RuntimeError: the broker listens on ``inproc``, whose peers never reconnect.
        """
        if self.external:
            raise RuntimeError(self._unavailable("cannot restart the broker"))
        if self.endpoints.frontend.startswith("inproc://"):
            raise RuntimeError(
                "an inproc broker cannot be restarted: its peers do not reconnect "
                "(use transport='ipc' or 'tcp')"
            )
        await self.stop_broker(graceful=graceful)
        await self.start_broker()

    async def start_worker(
        self,
        handler: Callable[[Any], Awaitable[Any]] | Callable[[Any], AsyncIterator[Any]],
        *,
        concurrency: int = 1,
        frames: bool = False,
        **options: Any,
    ) -> WorkerHandle:
        """Attach an :class:`~zmqrelay.AsyncWorker` running ``handler`` to the broker.

        ``options`` go to the worker (``service=``, ``mode=``, ``protocol=``, ...); a handler
        written as an async generator streams its reply. Returns once the worker is
        connecting; it stops when the harness closes.

        The worker follows the broker's :attr:`mode` unless ``mode=`` says otherwise: with a
        load-balancing broker it registers, and heartbeats as often as the broker's
        ``heartbeat_interval`` and ``liveness`` expect (unless given too).

        Raises:
            ValueError: a ``service`` or a Majordomo ``protocol``, without ``mode=``, for a
                relay-mode broker (which would never hand the worker a request).
        """
        self._follow_the_broker(options)
        self._secure(options, "worker")
        handle: WorkerHandle

        async def gated(result: Awaitable[Any]) -> Any:
            try:
                await handle._before_handling()
            except BaseException:
                if isinstance(result, Coroutine):
                    result.close()  # never started: not "never awaited" either
                raise
            return await result

        async def gated_stream(parts: AsyncIterator[Any]) -> AsyncIterator[Any]:
            await handle._before_handling()
            async for part in parts:
                yield part

        def wrapped(request: Any) -> Any:
            # Calling the handler runs none of it: a coroutine or an async generator comes
            # back, and the faults apply before either starts. (The worker itself tells a
            # streaming handler by what a call returns; so does this.)
            result = handler(request)
            if inspect.isasyncgen(result):
                return gated_stream(result)
            return gated(cast(Awaitable[Any], result))

        worker = AsyncWorker(
            self.endpoints.backend,
            wrapped,
            frames=frames,  # type: ignore[call-overload]
            concurrency=concurrency, context=self.context, **options,
        )  # fmt: skip
        handle = WorkerHandle(worker)
        hosted = Hosted(worker)
        await hosted.start()
        self._workers.append((handle, hosted))
        return handle

    async def connect_client(self, **options: Any) -> AsyncClient:
        """A running :class:`~zmqrelay.AsyncClient` connected to the broker's frontend.

        ``options`` go to the client; its ``timeout`` is 10 seconds unless given. With CURVE
        (``curve=True``), it uses the client key pair the broker allows, unless given
        ``curve_keys=``.

        Raises:
            ValueError: a Majordomo ``protocol`` for a relay-mode broker (whose workers
                would drop every request).
        """
        protocol = options.get("protocol", "zmqrelay")
        if self.mode == "relay" and protocol != "zmqrelay":
            raise ValueError(
                f"a client speaking {protocol} needs a load-balancing broker, and this "
                f"harness's broker is in relay mode: {_LOAD_BALANCING_HINT}"
            )
        options.setdefault("timeout", 10.0)
        self._secure(options, "client")
        hosted = Hosted(AsyncClient(self.endpoints.frontend, context=self.context, **options))
        self._clients.append(hosted)
        return await hosted.start()

    async def aclose(self) -> None:
        """Stop the clients, the broker and the workers, at once: a test is over.

        Requests still in flight end in ``ClosedError`` at their clients; every socket is
        closed before this returns.
        """
        for client in reversed(self._clients):
            await client.stop(graceful=False)
        self._clients.clear()
        await self.stop_broker(graceful=False)
        for _, worker in reversed(self._workers):
            await worker.stop(graceful=False)
        self._workers.clear()

    def allow_key(self, side: Literal["client", "worker"], name: str) -> CurveKeyPair:
        """A new key pair that the broker allows on ``side``: written, then keys reloaded.

        Raises:
            RuntimeError: the harness's broker does not use CURVE (``curve=True``).
            KeyFileError: ``name`` is taken on that side.
        """
        if self.curve is None:
            raise RuntimeError("this harness's broker does not use CURVE: give curve=True")
        pair = self.curve.make(f"{side}s", name)
        if self._broker is not None:
            self._broker.service.reload_keys()
        return pair

    def _secure(self, options: dict[str, Any], side: Literal["client", "worker"]) -> None:
        if self.curve is not None:
            options.setdefault("curve_keys", getattr(self.curve, side))
            options.setdefault("curve_server_key", self.curve.broker.public)

    def _follow_the_broker(self, options: dict[str, Any]) -> None:
        """Give a worker's ``options`` the broker's mode (and heartbeat), unless set."""
        if self.mode is None:
            return
        if "mode" not in options:
            needs = [
                f"{key}={options[key]!r}"
                for key, default in (("service", None), ("protocol", "zmqrelay"))
                if options.get(key, default) != default
            ]
            if self.mode == "relay" and needs:
                raise ValueError(
                    f"a worker with {', '.join(needs)} needs a load-balancing broker, and "
                    f"this harness's broker is in relay mode: {_LOAD_BALANCING_HINT} (or "
                    'give the worker mode="load-balancing" to attach it all the same)'
                )
            options["mode"] = self.mode
        if options["mode"] == self.mode == "load-balancing":
            for key in ("heartbeat_interval", "liveness"):
                if key in self._broker_options:
                    options.setdefault(key, self._broker_options[key])

    def _unavailable(self, what: str) -> str:
        return f"this harness {what}: it uses an external broker at {self.endpoints}"


_LOAD_BALANCING_HINT = (
    'mark the test @pytest.mark.zmqrelay(mode="load-balancing"), or pass '
    'relay_harness(mode="load-balancing")'
)


@asynccontextmanager
async def relay_harness(
    *,
    transport: str | None = None,
    context: zmq.asyncio.Context | None = None,
    external: Endpoints | None = None,
    frontend: str | None = None,
    backend: str | None = None,
    curve: bool = False,
    **broker_options: Any,
) -> AsyncIterator[BrokerHarness]:
    """Run a broker in-process (or use an external one) for the duration of the block.

    Args:
        transport: where the in-process broker listens: ``"inproc"`` (the default, no
            ports; peers must share ``context``), ``"ipc"`` (a temporary folder) or ``"tcp"``
            (loopback, ports chosen by the system and reported in ``harness.endpoints``; the
            default with ``curve``).
        context: the zmq context for the broker, workers and clients; a new one (terminated
            on the way out) by default.
        external: endpoints of a broker already running elsewhere; then none is started.
        frontend: the endpoint to bind for clients, instead of one chosen for ``transport``.
        backend: the endpoint to bind for workers, likewise.
        curve: run the broker with CURVE, with throw-away keys (``harness.curve``, a
            :class:`ThrowAwayKeys`): it allows one client key and one worker key, which the
            harness's clients and workers use. libzmq secures ``tcp`` and ``ipc`` only.
        broker_options: further keyword arguments for :class:`~zmqrelay.Broker`. With
            ``external``, only ``mode``: the external broker's, when known, for the workers
            to follow (see :meth:`BrokerHarness.start_worker`).

    Raises:
        ValueError: an unknown ``transport``; with ``external``, a broker option other than
            ``mode`` (an external broker is configured where it runs), or an unknown mode;
            with ``curve``, an external broker, ``inproc``, or keys given as well.
    """
    transport = transport or ("tcp" if curve else "inproc")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
    if curve:
        _check_curve(transport, external, broker_options)
    if external is not None:
        ignored = ", ".join(sorted(set(broker_options) - {"mode"}))
        if ignored:
            raise ValueError(
                f"{ignored}: options of an in-process broker, and this harness uses the "
                f"external broker at {external}"
            )
        if broker_options.get("mode", "relay") not in ("relay", "load-balancing"):
            raise ValueError(
                f"mode must be 'relay' or 'load-balancing', not {broker_options['mode']!r}"
            )
    own_context = context is None
    ctx = zmq.asyncio.Context() if context is None else context
    folder = tempfile.mkdtemp(prefix="zmqrelay-") if transport == "ipc" or curve else None
    try:
        keys = ThrowAwayKeys(os.path.join(cast(str, folder), "keys")) if curve else None
        if external is not None:
            harness = BrokerHarness(
                context=ctx,
                frontend=external.frontend,
                backend=external.backend,
                external=True,
                broker_options=broker_options,
            )
        else:
            chosen_frontend, chosen_backend = _endpoints_for(transport, folder)
            harness = BrokerHarness(
                context=ctx,
                frontend=frontend or chosen_frontend,
                backend=backend or chosen_backend,
                broker_options=broker_options,
                curve=keys,
            )
            await harness.start_broker()
        try:
            yield harness
        finally:
            await harness.aclose()
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if own_context:
            ctx.term()


def _check_curve(transport: str, external: Endpoints | None, options: dict[str, Any]) -> None:
    if external is not None:
        raise ValueError(
            f"curve=True makes keys for an in-process broker, and this harness uses the "
            f"external broker at {external} (give its clients and workers their keys instead)"
        )
    if transport == "inproc":
        raise ValueError(
            "curve=True needs transport='tcp' or 'ipc': libzmq does not secure inproc"
        )
    given = sorted({"curve_secret_key", "client_keys", "worker_keys"} & set(options))
    if given:
        raise ValueError(
            f"curve=True makes the broker's keys; {', '.join(given)} as well is one too many"
        )


def _endpoints_for(transport: str, folder: str | None) -> tuple[str, str]:
    if transport == "inproc":
        name = uuid.uuid4().hex
        return f"inproc://zmqrelay-{name}-front", f"inproc://zmqrelay-{name}-back"
    if transport == "ipc":
        assert folder is not None
        return f"ipc://{os.path.join(folder, 'front')}", f"ipc://{os.path.join(folder, 'back')}"
    return "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
