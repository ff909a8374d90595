r"""zmqrelay's worker protocol, ZRW2, as a worker speaks it.

The broker's side of it (and of ZRW1, the protocol's first version, which it still reads, and
of the guide's REQ workers) is :mod:`zmqrelay._core.dialects`.

zmqrelay's own worker (a DEALER) is Majordomo-like, with credits and heartbeats. Each message
starts with one *header* frame: the 4 bytes ``ZRW2``, a command byte, then the command's fixed
fields; what varies (a service name, a body) follows in frames of its own. One header frame,
and no empty delimiter frame, so that a request and its reply each cross the broker in as few
frames as the body allows (every frame costs a call into libzmq on both sides).

=====================  ==========================================================================
worker → broker        header after ``ZRW2`` and the command byte; frames after the header
=====================  ==========================================================================
``READY``  ``\x01``     credits (4 bytes, big-endian), then optionally features (1 byte:
                       ``\x01``, send trace context); the service name, unless it is the default
``REPLY``  ``\x03``     reply-to (8 bytes), status (1 byte: a :class:`~zmqrelay._core.tag.Status`:
                       OK, ERROR, or PARTIAL for a part of a streamed reply, more to come); body
``HEARTBEAT`` ``\x04``   nothing
``LEAVING`` ``\x06``    nothing: take no more requests, the worker finishes what it holds
``DISCONNECT`` ``\x05`` nothing: gone
=====================  ==========================================================================

=====================  ==========================================================================
broker → worker        header after ``ZRW2`` and the command byte; frames after the header
=====================  ==========================================================================
``REQUEST`` ``\x02``    reply-to (8 bytes), flags (1 byte: ``\x01``, a redelivery; ``\x02``, a
                       trace context frame follows), timeout in milliseconds (4 bytes,
                       big-endian; ``0xFFFFFFFF``: none); the trace context, if flagged; body
``HEARTBEAT`` ``\x04``   nothing
``DISCONNECT`` ``\x05`` nothing: the broker forgot this worker (it should register again)
=====================  ==========================================================================

The reply-to is an opaque token the broker hands out per request: it stands for the client's
whole envelope, so workers can answer requests of clients behind any number of hops, and the
broker can refuse replies it did not ask for.

Trace context (:mod:`zmqrelay._core.trace`) reaches only a worker that asked for it in its
READY: a worker that did not, as every worker before features existed, gets REQUESTs exactly
as before. A worker asks only when it traces, so one that does not still registers with a
broker that knows no features.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal, NamedTuple

from zmqrelay._core.tag import Status
from zmqrelay._core.worker import check_reply, encode_error
from zmqrelay.errors import RemoteProtocolError

PROTOCOL = b"ZRW2"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT, LEAVING = (bytes([n]) for n in range(1, 7))
MAX_CREDITS = 1_000_000
NO_TIMEOUT = 0xFFFF_FFFF
"""The timeout field of a request whose client waits for ever."""
READY_HEADER = struct.Struct(">4scI")
READY_FEATURES_HEADER = struct.Struct(">4scIB")
"""READY with a features byte."""
TRACE_CONTEXT = 0x01
"""READY's feature: send this worker the trace context of the requests that have one."""
REDELIVERY, WITH_CONTEXT = 0x01, 0x02
"""REQUEST's flags."""
REQUEST_HEADER = struct.Struct(">4sc8sBI")
_unpack_request = REQUEST_HEADER.unpack
REPLY_HEADER_SIZE = 4 + 1 + 8 + 1
_REPLY_PREFIX = PROTOCOL + REPLY
_STATUS_BYTES = {status: bytes([status]) for status in Status}


def encode_ready(credits: int, service: bytes = b"", *, context: bool = False) -> list[bytes]:
    """What a zmqrelay worker (a DEALER) sends to register (for ``service``, if not default).

    With ``context``, it asks for the requests' trace context (a features byte, which a
    broker older than it refuses: send it only when tracing).
    """
    if context:
        header = READY_FEATURES_HEADER.pack(PROTOCOL, READY, credits, TRACE_CONTEXT)
    else:
        header = READY_HEADER.pack(PROTOCOL, READY, credits)
    return [header, service] if service else [header]


def encode_command_to_broker(command: bytes) -> list[bytes]:
    """A HEARTBEAT, LEAVING or DISCONNECT from a zmqrelay worker (a DEALER)."""
    return [PROTOCOL + command]


def encode_reply(token_frame: bytes, status: Status, body: list[bytes]) -> list[bytes]:
    """What a zmqrelay worker sends to answer the request that came with ``token_frame``."""
    return [_REPLY_PREFIX + token_frame + _STATUS_BYTES[status], *body]


class Assignment(NamedTuple):
    """A request as a zmqrelay worker receives it from a load-balancing broker.

    (A named tuple rather than a frozen dataclass: made for every request, it is built
    several times faster.)
    """

    reply_to: bytes
    redelivery: bool
    timeout: float | None
    body: list[bytes]
    context: bytes = b""
    """Its trace context frame (:mod:`zmqrelay._core.trace`), if the broker sent one."""

    def reply(self, body: Sequence[bytes]) -> list[bytes]:
        """The frames answering this request with ``body``.

        Raises:
            LocalProtocolError: ``body`` is empty or holds something other than bytes.
        """
        check_reply(body)
        return encode_reply(self.reply_to, Status.OK, list(body))

    def partial(self, body: Sequence[bytes]) -> list[bytes] | None:
        """The frames sending ``body`` as one part of a streamed reply, more to come."""
        check_reply(body)
        return encode_reply(self.reply_to, Status.PARTIAL, list(body))

    def error(self, type_name: str, message: str) -> list[bytes]:
        """The frames telling the client that the handler raised."""
        return encode_reply(self.reply_to, Status.ERROR, encode_error(type_name, message))


BrokerCommand = Literal["heartbeat", "disconnect"]


def decode_from_broker(frames: list[bytes]) -> Assignment | BrokerCommand:
    """Decode what a zmqrelay worker's DEALER read from the broker.

    Raises:
        RemoteProtocolError: it is not a ZRW2 message from a broker.
    """
    header = frames[0] if frames else b""
    if len(header) == REQUEST_HEADER.size and len(frames) > 1:
        protocol, command, reply_to, flags, milliseconds = _unpack_request(header)
        if protocol == PROTOCOL and command == REQUEST:
            # The common case first, as cheaply as it can be told apart.
            timeout = None if milliseconds == NO_TIMEOUT else milliseconds / 1000
            if flags <= REDELIVERY:
                return Assignment(reply_to, flags == REDELIVERY, timeout, frames[1:])
            if flags > REDELIVERY | WITH_CONTEXT:
                raise RemoteProtocolError(f"unknown REQUEST flags {flags:#x}")
            if len(frames) < 3:
                raise RemoteProtocolError(
                    "a REQUEST flagged with a trace context needs it, a body"
                )
            return Assignment(reply_to, bool(flags & REDELIVERY), timeout, frames[2:], frames[1])
    if not header.startswith(PROTOCOL) or len(header) < 5:
        raise RemoteProtocolError("a broker's message starts with a ZRW2 header frame")
    command = header[4:5]
    if command == REQUEST:
        raise RemoteProtocolError("REQUEST needs reply-to, flags and timeout, then a body")
    if len(header) != 5 or len(frames) != 1:
        raise RemoteProtocolError(f"command {command!r} takes no fields or frames")
    if command == HEARTBEAT:
        return "heartbeat"
    if command == DISCONNECT:
        return "disconnect"
    raise RemoteProtocolError(f"unknown ZRW2 command from a broker {command!r}")
