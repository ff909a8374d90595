"""The one place where a ``zmq.ZMQError`` becomes an error of zmqrelay's.

A bare ``zmq.ZMQError`` never reaches user code. libzmq refuses a call for one of two reasons
that matter to a caller: the address it was given cannot be bound or connected
(:class:`~zmqrelay.EndpointError`), or the socket can no longer be used
(:class:`~zmqrelay.BrokenError`). Socket code raises these through :func:`broken` and
:func:`translated`, and code that only needs to know whether a socket is still usable
catches :data:`UNUSABLE`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from zmqrelay.errors import BrokenError, ClosedError, EndpointError

__all__ = ["UNUSABLE", "broken", "translated", "unbroken"]

UNUSABLE = (ClosedError, BrokenError)
"""What a call on a socket raises when the socket cannot be used: closed here, or broken."""


def broken(exc: zmq.ZMQError, socket: str) -> BrokenError:
    """The :class:`~zmqrelay.BrokenError` for ``exc``, raised by ``socket``.

    ``socket`` names it for the message: ``"the client's socket"``.
    """
    if exc.errno == zmq.ETERM:
        reason = "its zmq.Context was terminated"
    else:
        reason = exc.strerror or str(exc)
    return BrokenError(f"{socket} failed: {reason}")


@contextmanager
def unbroken(socket: str) -> Iterator[None]:
    """Raise a ``zmq.ZMQError`` from the block as :func:`broken` says."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise broken(exc, socket) from exc


@contextmanager
def translated(action: str, endpoint: str) -> Iterator[None]:
    """Raise a ``zmq.ZMQError`` from binding or connecting as an :class:`EndpointError`."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise EndpointError(
            exc.errno or errno.EINVAL, f"cannot {action} {endpoint!r}: {exc.strerror}"
        ) from exc
