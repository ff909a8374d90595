"""pytest fixtures for testing services built on zmqrelay; loaded automatically with zmqrelay.

The fixtures (all function-scoped, for ``async`` tests run by pytest-asyncio):

``zmqrelay_context``
    A :class:`~zmqrelay.testing.LeakCheckingContext`; at teardown the test fails if a socket
    opened in it is still open or the context does not terminate.
``relay_broker``
    A :class:`~zmqrelay.testing.BrokerHarness`: an in-process broker, fresh per test, on
    ``inproc://`` unless configured otherwise, or an external broker.
``relay_broker_factory``
    ``await relay_broker_factory(**options)`` starts another broker (several per test are fine).
``relay_worker``
    ``await relay_worker(handler, concurrency=...)`` attaches an AsyncWorker to ``relay_broker``
    (in the broker's mode, unless given ``mode=``) and returns a
    :class:`~zmqrelay.testing.WorkerHandle` for fault injection.
``relay_client``
    A running :class:`~zmqrelay.AsyncClient` connected to ``relay_broker``.

The transport of the in-process broker comes from, in this order of precedence, the marker
``@pytest.mark.zmqrelay(transport="tcp")``, the ini option ``zmqrelay_transport``, the option
``--zmqrelay-transport``, and is ``inproc`` otherwise (``tcp`` for a broker marked
``curve=True``, since libzmq does not secure inproc). ``--zmqrelay-frontend`` and
``--zmqrelay-backend`` (or ``ZMQRELAY_TEST_FRONTEND`` and ``ZMQRELAY_TEST_BACKEND``) point the
fixtures at a broker that is already running instead; ``--zmqrelay-mode`` (or
``ZMQRELAY_TEST_MODE``) says its mode, when known. A test whose marker asks for broker options
(``mode=``, ``drain_timeout=``, ...) that the external broker cannot be known to have is skipped,
with a reason that names them.

The async fixtures run in the event loop of the test that uses them, whatever its loop scope
(``@pytest.mark.asyncio(loop_scope="module")`` included).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal, NamedTuple, cast, get_args

import pytest

from zmqrelay._aio.broker import Endpoints
from zmqrelay._aio.client import AsyncClient
from zmqrelay._aio.service import Mode
from zmqrelay.testing import (
    TRANSPORTS,
    BrokerHarness,
    LeakCheckingContext,
    SocketLeakError,
    WorkerHandle,
    relay_harness,
)

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures need pytest-asyncio; the rest does not
    pytest_asyncio = None  # type: ignore[assignment]

_LoopScope = Literal["function", "class", "module", "package", "session"]
_LOOP_SCOPES: tuple[_LoopScope, ...] = ("function", "class", "module", "package", "session")
_FRONTEND_ENV = "ZMQRELAY_TEST_FRONTEND"
_BACKEND_ENV = "ZMQRELAY_TEST_BACKEND"
_MODE_ENV = "ZMQRELAY_TEST_MODE"
_MODES: tuple[Mode, ...] = get_args(Mode)
_WHERE_OPTIONS = ("transport", "frontend", "backend")
"""Marker options that say where an in-process broker listens: moot for an external one."""

BrokerFactory = Callable[..., Awaitable[BrokerHarness]]
WorkerFactory = Callable[..., Awaitable[WorkerHandle]]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register zmqrelay's command-line and ini options."""
    group = parser.getgroup("zmqrelay", "zmqrelay fixtures")
    group.addoption(
        "--zmqrelay-transport",
        choices=TRANSPORTS,
        default=None,
        help="transport of the in-process broker fixtures (default: inproc)",
    )
    group.addoption(
        "--zmqrelay-frontend",
        default=None,
        help=f"use the external broker with this frontend (or set {_FRONTEND_ENV})",
    )
    group.addoption(
        "--zmqrelay-backend",
        default=None,
        help=f"use the external broker with this backend (or set {_BACKEND_ENV})",
    )
    group.addoption(
        "--zmqrelay-mode",
        choices=_MODES,
        default=None,
        help=f"the mode of the external broker, if known (or set {_MODE_ENV}); tests marked "
        "for another mode are skipped",
    )
    parser.addini(
        "zmqrelay_transport",
        help="transport of the in-process broker fixtures: inproc, ipc or tcp",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``zmqrelay`` marker."""
    config.addinivalue_line(
        "markers",
        "zmqrelay(transport=None, curve=False, **broker_options): how the zmqrelay fixtures "
        "start the in-process broker for this test (transport: inproc, ipc or tcp; curve: "
        "CURVE with throw-away keys; options: Broker's); "
        "with an external broker, a test whose options it may not honour is skipped",
    )


def _marker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("zmqrelay")
    return dict(marker.kwargs) if marker is not None else {}


def _transport(request: pytest.FixtureRequest, marked: dict[str, Any]) -> str | None:
    """The transport asked for, or ``None`` for the harness's default.

    A CURVE broker (``curve=True``) cannot listen on inproc, so the configured default gives
    way to it there; only the marker's own transport is kept as it is.
    """
    transport = marked.pop("transport", None)
    if transport is None:
        transport = request.config.getini("zmqrelay_transport") or request.config.getoption(
            "zmqrelay_transport"
        )
        if marked.get("curve") and transport == "inproc":
            transport = None
    if transport is not None and transport not in TRANSPORTS:
        raise pytest.UsageError(
            f"zmqrelay transport must be one of {TRANSPORTS}, not {transport!r}"
        )
    return str(transport) if transport else None


class _ExternalBroker(NamedTuple):
    """The broker the command line or the environment points the fixtures at."""

    endpoints: Endpoints
    mode: Mode | None
    """As the command line or the environment says; ``None``: unknown."""


def _external(config: pytest.Config) -> _ExternalBroker | None:
    frontend = config.getoption("zmqrelay_frontend") or os.environ.get(_FRONTEND_ENV)
    backend = config.getoption("zmqrelay_backend") or os.environ.get(_BACKEND_ENV)
    mode = config.getoption("zmqrelay_mode") or os.environ.get(_MODE_ENV) or None
    if mode is not None and mode not in _MODES:
        raise pytest.UsageError(f"{_MODE_ENV} must be one of {_MODES}, not {mode!r}")
    if not frontend and not backend:
        if mode is not None:
            raise pytest.UsageError(
                f"--zmqrelay-mode (or {_MODE_ENV}) is the mode of an external broker: give "
                "--zmqrelay-frontend and --zmqrelay-backend too (an in-process broker's mode "
                "comes from the zmqrelay marker)"
            )
        return None
    if not (frontend and backend):
        raise pytest.UsageError(
            "an external broker needs both --zmqrelay-frontend and --zmqrelay-backend "
            f"(or {_FRONTEND_ENV} and {_BACKEND_ENV})"
        )
    return _ExternalBroker(Endpoints(frontend, backend), cast(Mode | None, mode))


def _skip_unless_served(options: dict[str, Any], external: _ExternalBroker) -> None:
    """Skip a test whose marker asks for a broker the external one may not be."""
    wanted = {key: value for key, value in options.items() if key not in _WHERE_OPTIONS}
    if external.mode is not None and wanted.get("mode") == external.mode:
        del wanted["mode"]
    if not wanted:
        return
    asked = ", ".join(f"{key}={value!r}" for key, value in wanted.items())
    where = f"the external broker at {external.endpoints.frontend}"
    if "mode" in wanted and external.mode is not None:
        verdict = f"{where} is in {external.mode} mode (--zmqrelay-mode)"
    else:
        them = "them" if len(wanted) > 1 else "it"
        verdict = f"{where} may not have {them} (the marker configures in-process brokers only"
        if "mode" in wanted:
            verdict += f"; give the external broker's mode with --zmqrelay-mode or {_MODE_ENV}"
        verdict += ")"
    pytest.skip(f"the zmqrelay marker asks for a broker with {asked}: {verdict}")


def _test_loop_scope(request: pytest.FixtureRequest) -> str:
    """The loop scope of the test asking: its asyncio marker's, else the configured default."""
    marker = request.node.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope") if marker else None
    return str(scope or request.config.getini("asyncio_default_test_loop_scope") or "function")


def _in_test_loop(request: pytest.FixtureRequest, name: str) -> Any:
    if pytest_asyncio is None:
        raise pytest.UsageError("the zmqrelay fixtures need pytest-asyncio")
    if "anyio_backend" in request.fixturenames and pytest_asyncio.is_async_test(request.node):
        # anyio's plugin runs the async fixtures of a test that uses anyio_backend in its own
        # loop; pytest-asyncio, which claims the test too, runs the test in another.
        raise pytest.UsageError(
            f"{request.node.name} is run by both pytest-asyncio and anyio's pytest plugin "
            "(asyncio_mode = auto, or both markers, with @pytest.mark.anyio): the zmqrelay "
            "fixtures would run in one event loop and the test in another. In a test marked "
            "@pytest.mark.anyio use zmqrelay.testing.relay_harness(context=zmqrelay_context) "
            "instead (see 'Beside anyio's pytest plugin' in zmqrelay's docs/testing.md)"
        )
    return request.getfixturevalue(f"_zmqrelay_{name}_{_test_loop_scope(request)}")


@pytest.fixture
def zmqrelay_context() -> Iterator[LeakCheckingContext]:
    """A fresh zmq context; the test fails if it leaves a socket open."""
    context = LeakCheckingContext()
    yield context
    leak = None
    try:
        context.check_closed()
    except SocketLeakError as exc:
        leak = str(exc)
    if leak is not None:
        pytest.fail(leak, pytrace=False)


@pytest.fixture
def relay_broker(request: pytest.FixtureRequest) -> BrokerHarness:
    """An in-process broker (or the configured external one), fresh for each test.

    With an external broker, a test whose ``zmqrelay`` marker asks for broker options the
    external broker may not have is skipped.
    """
    external = _external(request.config)
    if external is not None:
        _skip_unless_served(_marker_options(request), external)
    harness: BrokerHarness = _in_test_loop(request, "broker")
    return harness


@pytest.fixture
def relay_broker_factory(request: pytest.FixtureRequest) -> BrokerFactory:
    """A function that starts more brokers, each with its own transport and options."""
    factory: BrokerFactory = _in_test_loop(request, "factory")
    return factory


@pytest.fixture
def relay_worker(relay_broker: BrokerHarness) -> WorkerFactory:
    """A function that attaches a worker running a handler to ``relay_broker``."""
    return relay_broker.start_worker


@pytest.fixture
def relay_client(request: pytest.FixtureRequest) -> AsyncClient:
    """A running AsyncClient connected to ``relay_broker`` (closed with it)."""
    client: AsyncClient = _in_test_loop(request, "client")
    return client


# One variant of each async fixture per loop scope, so that it runs in the test's own loop.


def _broker_variant() -> Callable[..., AsyncIterator[BrokerHarness]]:
    async def broker(
        request: pytest.FixtureRequest, zmqrelay_context: LeakCheckingContext
    ) -> AsyncIterator[BrokerHarness]:
        options = _marker_options(request)
        transport = _transport(request, options)
        external = _external(request.config)
        if external is not None:  # the marker asks for nothing more (see relay_broker)
            mode: dict[str, Any] = {} if external.mode is None else {"mode": external.mode}
            harness_context = relay_harness(
                context=zmqrelay_context, external=external.endpoints, **mode
            )
        else:
            harness_context = relay_harness(
                transport=transport, context=zmqrelay_context, **options
            )
        async with harness_context as harness:
            yield harness

    return broker


def _factory_variant() -> Callable[..., AsyncIterator[BrokerFactory]]:
    async def factory(
        request: pytest.FixtureRequest, zmqrelay_context: LeakCheckingContext
    ) -> AsyncIterator[BrokerFactory]:
        default_transport = _transport(request, _marker_options(request))
        async with contextlib.AsyncExitStack() as stack:

            async def start(*, transport: str | None = None, **options: Any) -> BrokerHarness:
                if transport is None and not (
                    options.get("curve") and default_transport == "inproc"
                ):
                    transport = default_transport
                return await stack.enter_async_context(
                    relay_harness(transport=transport, context=zmqrelay_context, **options)
                )

            yield start

    return factory


def _client_variant() -> Callable[..., Awaitable[AsyncClient]]:
    async def client(relay_broker: BrokerHarness) -> AsyncClient:
        return await relay_broker.connect_client()

    return client


_VARIANTS: dict[str, Callable[[], Callable[..., Any]]] = {
    "broker": _broker_variant,
    "factory": _factory_variant,
    "client": _client_variant,
}

if pytest_asyncio is not None:
    for _scope in _LOOP_SCOPES:
        for _name, _make in _VARIANTS.items():
            _fixture_name = f"_zmqrelay_{_name}_{_scope}"
            globals()[_fixture_name] = pytest_asyncio.fixture(
                _make(), loop_scope=_scope, name=_fixture_name
            )
