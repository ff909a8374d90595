"""The request tag: zmqrelay's correlation frame.

An :class:`~zmqrelay.AsyncClient` puts one tag frame in front of the delimiter of every request,
as libzmq's ``ZMQ_REQ_CORRELATE`` does with its request id. Stock workers treat it as one more
envelope frame and echo it back untouched; zmqrelay workers also use it to report how a request
ended, which plain peers never see because it travels only between zmqrelay peers.

The tag also carries what the client asks of the request's handling, so that a load-balancing
broker and zmqrelay workers can honour it: how long the client will wait (the broker refuses the
request once that has passed, the worker cancels its handler), and how many times the request
may be sent again if its worker dies.

Layout, 17 bytes::

    offset 0   2 bytes  magic b"ZR"
    offset 2   1 byte   version (1)
    offset 3   1 byte   status (see :class:`Status`)
    offset 4   8 bytes  request id, unsigned, big-endian
    offset 12  4 bytes  timeout in milliseconds, unsigned, big-endian (0: none)
    offset 16  1 byte   redeliveries allowed
"""

from __future__ import annotations

import enum
import math
import struct
from typing import NamedTuple

MAGIC = b"ZR"
VERSION = 1
SIZE = 17
_MAX_TIMEOUT_MS = 2**32 - 1

_LAYOUT = struct.Struct(">2sBBQIB")
_PREFIX = MAGIC + bytes([VERSION])


class Status(enum.IntEnum):
    """How a request ended, as a zmqrelay worker reports it in the reply's tag."""

    OK = 0
    """The body is the handler's reply."""
    ERROR = 1
    """The handler raised; the body is ``[type name, message]`` in UTF-8."""
    BUSY = 2
    """The broker refused the request: its queue was full, or no worker was free in time."""
    NO_WORKERS = 3
    """The broker refused the request: no live worker could take it in time."""
    DEADLINE = 4
    """The request's deadline passed before a reply came."""
    WORKER_DIED = 5
    """The worker holding the request died, and the request may not be sent again."""
    PARTIAL = 6
    """The body is one part of a streamed reply; more parts follow, the last with ``OK``."""
    FORBIDDEN = 7
    """The broker refused the request: its authorisation policy forbids it."""


class Tag(NamedTuple):
    """A decoded tag frame."""

    request_id: int
    status: Status
    timeout: float | None = None
    """Seconds the client waits for the reply, if it said."""
    redeliveries: int = 0
    """Times the request may be sent again if its worker dies."""


_STATUSES = tuple(Status)  # by value: decoding indexes this instead of calling the enum


def encode(
    request_id: int,
    status: Status = Status.OK,
    *,
    timeout: float | None = None,
    redeliveries: int = 0,
) -> bytes:
    """The tag frame for ``request_id`` (0 ≤ id < 2**64) with ``status``.

    ``timeout`` is rounded up to whole milliseconds (and capped near 50 days);
    ``redeliveries`` is capped at 255.
    """
    milliseconds = (
        0 if timeout is None else min(_MAX_TIMEOUT_MS, max(1, math.ceil(timeout * 1000)))
    )
    return _LAYOUT.pack(
        MAGIC, VERSION, status, request_id, milliseconds, min(255, max(0, redeliveries))
    )


def decode(frame: bytes) -> Tag | None:
    """Decode a tag frame, or return ``None`` when ``frame`` is not one.

    Unknown statuses are not tags: a frame that merely looks like one is treated as an opaque
    envelope frame, which is always safe.
    """
    if len(frame) != SIZE or not frame.startswith(_PREFIX):
        return None
    _, _, status, request_id, milliseconds, redeliveries = _LAYOUT.unpack(frame)
    if status >= len(_STATUSES):
        return None
    timeout = milliseconds / 1000 if milliseconds else None
    return Tag(request_id, _STATUSES[status], timeout, redeliveries)


def with_status(frame: bytes, status: Status) -> bytes:
    """``frame`` (a valid tag) with its status replaced."""
    return frame[:3] + bytes([status]) + frame[4:]
