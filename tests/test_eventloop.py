"""The event loop of the ``zmqrelay`` command and the bench's peers: uvloop when installed."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections import Counter

import anyio
import pytest

from peers import echo_handler
from zmqrelay import AsyncClient, AsyncWorker, Broker
from zmqrelay._eventloop import EVENT_LOOP_ENV, backend_options
from zmqrelay.testing import LeakCheckingContext

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="the uvloop extra is not installed")

# What a process runs to block uvloop's import, as if the extra were not installed.
WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; "


def _zmqrelay(*args: str, prelude: str = "", env: dict[str, str] | None = None) -> str:
    """Run the ``zmqrelay`` command with debug logs; its standard error."""
    code = f"{prelude}from zmqrelay.cli import main; main({['--log-level', 'debug', *args]!r})"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@needs_uvloop
@pytest.mark.timeout(60)
def test_the_cli_runs_on_uvloop_when_it_is_installed() -> None:
    stderr = _zmqrelay("demo", "--transport", "tcp")
    assert "event loop: uvloop.Loop" in stderr


@pytest.mark.timeout(60)
def test_the_cli_falls_back_to_asyncio_without_uvloop() -> None:
    stderr = _zmqrelay("demo", "--transport", "tcp", prelude=WITHOUT_UVLOOP)
    assert "event loop: asyncio." in stderr
    assert "uvloop" not in stderr


@needs_uvloop
@pytest.mark.timeout(60)
def test_the_environment_can_choose_asyncio_when_uvloop_is_installed() -> None:
    stderr = _zmqrelay("demo", env={EVENT_LOOP_ENV: "asyncio"})
    assert "event loop: asyncio." in stderr


@pytest.mark.timeout(30)
def test_the_cli_names_a_loop_it_cannot_run_on_as_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqrelay", "request", "--connect", "tcp://127.0.0.1:9", "hi"],
        env={**os.environ, EVENT_LOOP_ENV: "trio"},
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert result.returncode == 2
    assert f"{EVENT_LOOP_ENV}='trio': expected asyncio or uvloop" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(30)
def test_importing_the_cli_does_not_import_uvloop() -> None:
    code = "import sys, zmqrelay.cli; print('uvloop' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=25, check=True
    )
    assert result.stdout.strip() == "False"


def test_backend_options_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert backend_options() == ({"use_uvloop": True} if HAS_UVLOOP else {})
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert backend_options() == {}
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(ValueError, match="expected asyncio or uvloop"):
        backend_options()


def test_asking_for_uvloop_without_it_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ValueError, match="uvloop is not installed"):
        backend_options()


@needs_uvloop
@pytest.mark.timeout(30)
def test_a_library_user_opts_in_through_anyios_backend_options() -> None:
    """Broker, worker and client on zmq.asyncio over tcp, on the loop the docs tell of."""

    context = LeakCheckingContext()
    served: Counter[str] = Counter()

    async def main() -> tuple[str, list[bytes]]:
        broker = Broker(frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0", context=context)
        handler = echo_handler("worker", served)
        with anyio.fail_after(20):
            async with (
                broker,
                AsyncWorker(broker.endpoints.backend, handler, context=context),
                AsyncClient(broker.endpoints.frontend, context=context) as client,
            ):
                replies = [await client.request(b"%d" % n) for n in range(100)]
        return type(asyncio.get_running_loop()).__module__, replies

    loop_module, replies = anyio.run(main, backend_options={"use_uvloop": True})
    context.check_closed()
    assert loop_module.startswith("uvloop")
    assert replies == [b"World %d" % n for n in range(100)]
    assert served == {"worker": 100}
