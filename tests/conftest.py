"""Shared fixtures: a zmq context that proves, at teardown, that every socket was closed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

TERM_DEADLINE = 5.0


class TrackingContext(zmq.asyncio.Context):
    """A ``zmq.asyncio.Context`` that remembers every socket opened in it."""

    _opened: list[zmq.asyncio.Socket]

    def __init__(self) -> None:
        super().__init__()
        self._opened = []

    @property
    def opened(self) -> list[zmq.asyncio.Socket]:
        """Every socket opened in this context, closed or not."""
        return list(self._opened)

    def socket(self, socket_type: int, **kwargs: Any) -> zmq.asyncio.Socket:  # type: ignore[override]
        sock = super().socket(socket_type, **kwargs)
        self._opened.append(sock)
        return sock


def close_and_check(context: TrackingContext) -> None:
    """Fail if any socket of ``context`` is still open; then terminate it within a deadline."""
    leaked = [sock for sock in context.opened if not sock.closed]
    for sock in leaked:
        sock.close(linger=0)
    done = threading.Event()

    def term() -> None:
        context.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    if leaked:
        kinds = ", ".join(zmq.SocketType(int(sock.type)).name for sock in leaked)
        pytest.fail(f"{len(leaked)} socket(s) left open: {kinds}")
    if not done.wait(TERM_DEADLINE):
        pytest.fail(f"the zmq context did not terminate within {TERM_DEADLINE} s")


@pytest.fixture
def context() -> Iterator[TrackingContext]:
    """A fresh zmq context; the test fails if it leaves a socket open."""
    ctx = TrackingContext()
    yield ctx
    close_and_check(ctx)
