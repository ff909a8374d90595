"""What the broker, the worker and the client share: run once, report ready, close gracefully.

Also what the client and the worker check alike: their endpoints, and the protocol they speak.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import anyio
import anyio.abc
import zmq
import zmq.asyncio

from zmqrelay._aio import curve
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.zmqerrors import broken
from zmqrelay._core import mdp
from zmqrelay.errors import ClosedError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

T = TypeVar("T")

Mode = Literal["relay", "load-balancing"]
"""How a broker serves, and so how its workers speak: relay mode or load-balancing mode."""

ProtocolName = Literal["zmqrelay", "mdp-0.1", "mdp-0.2", "majortomo"]
"""How a client or a worker speaks to its broker: zmqrelay's own protocol, or a Majordomo
variant."""


def majordomo_variant(protocol: ProtocolName) -> mdp.Variant | None:
    """The Majordomo variant ``protocol`` names, or ``None`` for zmqrelay's own protocol.

    Raises:
        ValueError: ``protocol`` names no protocol.
    """
    variant = mdp.as_variant(protocol)
    if variant is None and protocol != "zmqrelay":
        raise ValueError(f"unknown protocol {protocol!r}")
    return variant


def endpoint_list(endpoint: str | Sequence[str], kind: str) -> list[str]:
    """``endpoint`` as a list of one or more distinct endpoints, for a ``kind`` of peer.

    Raises:
        ValueError: no endpoint, or one given twice.
    """
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not endpoints:
        raise ValueError(f"a {kind} needs at least one endpoint")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"an endpoint is given twice in {endpoints!r}")
    return endpoints


def require_tracing(tracing: bool | TracerProvider | None) -> None:
    """Fail now, not once running, when tracing is asked for and cannot be had.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed.
    """
    if tracing is None or tracing is False:
        return
    try:
        from zmqrelay._aio import tracing as spans  # noqa: F401
    except ImportError:
        raise ImportError(
            "tracing needs opentelemetry-api: pip install 'zmqrelay[tracing]'"
        ) from None


def tracing_wanted(tracing: bool | TracerProvider | None) -> bool:
    """Whether to trace: ``tracing=False`` never; ``True`` or a tracer provider always.

    ``None`` (the default): when the application has set OpenTelemetry's global tracer
    provider to a real one (an SDK's), checked when the peer starts. It never imports
    OpenTelemetry: an application that set a provider has imported it already.
    """
    if tracing is None:
        api = sys.modules.get("opentelemetry.trace")
        if api is None:
            return False
        unset = (api.ProxyTracerProvider, api.NoOpTracerProvider)
        return not isinstance(api.get_tracer_provider(), unset)
    return tracing is not False


def chosen_provider(tracing: bool | TracerProvider | None) -> TracerProvider | None:
    """The tracer provider ``tracing=`` names, or ``None`` for the global one."""
    return None if tracing is None or isinstance(tracing, bool) else tracing


class Service:
    """A long-running object served by ``run()`` and usable as an async context manager.

    Subclasses implement :meth:`run`, which calls :meth:`_claim` first, reports readiness
    through ``task_status``, watches :attr:`_close_requested` to stop gracefully, and calls
    :meth:`_finish` when it has closed its sockets.
    """

    _kind = "service"
    _linger = 0.0
    _socket_options: list[tuple[int, int | bytes]] = []  # noqa: RUF012 - replaced, never changed

    def __init__(self) -> None:
        self._state = "new"
        self._was_ready = False
        self._ready = anyio.Event()
        self._close_requested = anyio.Event()
        self._closed = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or closed."""
        raise NotImplementedError

    def _claim(self) -> None:
        if self._state != "new":
            raise ClosedError(f"the {self._kind} is {self._state}; it runs only once")
        self._state = "starting"

    def _report_ready(self, task_status: anyio.abc.TaskStatus[T], value: T) -> None:
        self._state = "running"
        self._was_ready = True
        self._ready.set()
        task_status.started(value)

    def _finish(self) -> None:
        self._state = "closed"
        self._ready.set()  # wakes wait_ready(), which then reports that it never became ready
        self._closed.set()

    async def wait_ready(self) -> None:
        """Wait until the service is ready (bound or connected, and serving).

        Raises:
            ClosedError: it closed without ever becoming ready.
        """
        await self._ready.wait()
        if not self._was_ready:
            raise ClosedError(f"the {self._kind} closed before it was ready")

    async def aclose(self) -> None:
        """Stop gracefully and wait until closed. Safe to call more than once, or before start."""
        if self._state == "new":
            self._finish()
            return
        self._close_requested.set()
        await self._closed.wait()

    async def __aenter__(self) -> Self:
        """Run in a background task and return once ready."""
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(self.run)
        except BaseException:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            raise
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close and wait: gracefully (as :meth:`aclose`), or at once if the block raised."""
        task_group, self._task_group = self._task_group, None
        assert task_group is not None, "__aexit__ without __aenter__"
        if exc is None:
            self._close_requested.set()
        else:
            task_group.cancel_scope.cancel()
        # The block's own exception is not handed to the task group, which would wrap it in an
        # ExceptionGroup: callers catch RequestTimeout, not a group holding it.
        with boundary_errors(self._kind):
            await task_group.__aexit__(None, None, None)
        return None


def curve_options(
    keys: CurveKeyPair | str | Path | None,
    server_key: CurveKeyPair | bytes | str | Path | None,
) -> list[tuple[int, int | bytes]]:
    """A client's or a worker's CURVE socket options: none, or both keys.

    Raises:
        ValueError: one key without the other.
        KeyFileError: a key file cannot be read.
    """
    if keys is None and server_key is None:
        return []
    if keys is None or server_key is None:
        raise ValueError("CURVE needs both curve_keys and curve_server_key")
    return curve.client_options(keys, server_key)


@contextmanager
def boundary_errors(kind: str) -> Iterator[None]:
    """Map the errors that leave a service to the ones users catch (house rule 5).

    Internal task groups wrap exceptions in (nested) exception groups: a lone exception is
    raised by itself. A ``zmq.ZMQError`` becomes a :class:`~zmqrelay.BrokenError`.
    """
    try:
        yield
    except zmq.ZMQError as exc:
        raise broken(exc, f"the {kind}'s socket") from exc
    except BaseExceptionGroup as group:
        lone = sole(group)
        if isinstance(lone, zmq.ZMQError):
            raise broken(lone, f"the {kind}'s socket") from lone
        if isinstance(lone, Exception) and not isinstance(lone, BaseExceptionGroup):
            raise lone from None
        raise


def sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside ``group`` and its nested groups, or the group if several."""
    lone: BaseException = group
    while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
        lone = lone.exceptions[0]
    return lone
