r"""Load-balancing mode on the wire: what workers say to the broker's ROUTER backend, and back.

Two worker dialects share the backend, told apart by each message:

``guide`` — the ZeroMQ guide's load-balancing worker: a REQ socket whose first message is one
frame (``READY``, ``\x01``, anything), then replies ``[reply-to, b"", reply...]``. The broker
sends it ``[reply-to, b"", request...]``. One request at a time (one credit), no heartbeats.
Through the ROUTER these read ``[worker, b"", ...]``: the REQ socket adds the delimiter.

``zmqrelay`` — zmqrelay's own worker (a DEALER), Majordomo-like with credits and heartbeats.
Every message starts ``[b"", b"ZRW1", command]``:

====================  ===========================================================================
worker → broker       frames after the command
====================  ===========================================================================
``READY``  ``\x01``    credits (ASCII integer), then the service name (optional: the default
                      service, ``""``, without it)
``REPLY``  ``\x03``    reply-to, status (one byte: a :class:`~zmqrelay._core.tag.Status`: OK,
                      ERROR, or PARTIAL for a part of a streamed reply, more to come), body...
``HEARTBEAT`` ``\x04``  none
``LEAVING`` ``\x06``   none: take no more requests, the worker finishes what it holds
``DISCONNECT`` ``\x05`` none: gone
====================  ===========================================================================

====================  ===========================================================================
broker → worker       frames after the command
====================  ===========================================================================
``REQUEST`` ``\x02``   reply-to, flags (``\x01``: a redelivery), timeout in ms (ASCII, ``""``:
                      none), body...
``HEARTBEAT`` ``\x04``  none
``DISCONNECT`` ``\x05`` none: the broker forgot this worker (it should register again)
====================  ===========================================================================

The reply-to frame is an opaque token the broker hands out per request: it stands for the
client's whole envelope, so workers of either dialect can answer requests of clients behind any
number of hops, and the broker can refuse replies it did not ask for.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.tag import Status
from zmqrelay._core.worker import check_reply, encode_error
from zmqrelay.errors import RemoteProtocolError

PROTOCOL = b"ZRW1"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT, LEAVING = (bytes([n]) for n in range(1, 7))

Dialect = Literal["guide", "zmqrelay", "mdp-0.1", "mdp-0.2", "majortomo"]
"""How a worker speaks; the Majordomo variants are decoded by :mod:`zmqrelay._core.mdp`."""

_TOKEN = struct.Struct(">Q")
_STATUSES = tuple(Status)
_WORKER_STATUSES = (bytes([Status.OK]), bytes([Status.ERROR]), bytes([Status.PARTIAL]))
_MAX_CREDITS = 1_000_000


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is ready for ``credits`` requests at once."""

    worker: bytes
    credits: int
    dialect: Dialect
    service: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """The worker answered the request it got as ``token``."""

    worker: bytes
    token: int
    status: Status
    body: list[bytes]
    dialect: Dialect
    partial: bool = False
    """One part of a streamed reply: the request stays in the worker's hands."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The worker is alive."""

    worker: bytes
    dialect: Dialect = "zmqrelay"


@dataclass(frozen=True, slots=True)
class Leaving:
    """The worker takes no more requests."""

    worker: bytes
    dialect: Dialect = "zmqrelay"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The worker is gone."""

    worker: bytes
    dialect: Dialect = "zmqrelay"


WorkerEvent = Ready | Reply | Heartbeat | Leaving | Disconnect


def encode_token(token: int) -> bytes:
    """The reply-to frame standing for request ``token``."""
    return _TOKEN.pack(token)


def decode_token(frame: bytes) -> int:
    """The request a reply-to frame stands for.

    Raises:
        RemoteProtocolError: it is not a token this broker hands out.
    """
    if len(frame) != _TOKEN.size:
        raise RemoteProtocolError(f"a reply-to frame has {_TOKEN.size} bytes, not {len(frame)}")
    token: int = _TOKEN.unpack(frame)[0]
    return token


def decode_backend(frames: list[bytes], *, known: bool) -> WorkerEvent:
    """Decode a message read from the backend ROUTER (its first frame is the worker's id).

    ``known`` says whether the worker has registered: a guide-dialect worker's first message is
    its READY, later ones are replies.

    Raises:
        RemoteProtocolError: the message is in neither dialect, or breaks its rules.
    """
    if len(frames) < 3 or frames[1] != DELIMITER:
        raise RemoteProtocolError("a worker's message starts with its id and an empty frame")
    worker = frames[0]
    if frames[2] == PROTOCOL:
        return _decode_zmqrelay(worker, frames[3:])
    if len(frames) == 3:  # a REQ worker's READY (again, if it restarted with the same id)
        return Ready(worker, 1, "guide")
    if not known:
        raise RemoteProtocolError("a new worker must first say READY, in one frame")
    if len(frames) < 5 or frames[3] != DELIMITER:
        raise RemoteProtocolError("a guide worker replies [reply-to, empty frame, reply...]")
    return Reply(worker, decode_token(frames[2]), Status.OK, frames[4:], "guide")


def _decode_zmqrelay(worker: bytes, rest: list[bytes]) -> WorkerEvent:
    if not rest:
        raise RemoteProtocolError("a ZRW1 message needs a command")
    command, arguments = rest[0], rest[1:]
    if command == REPLY:
        if len(arguments) < 3 or arguments[1] not in _WORKER_STATUSES:
            raise RemoteProtocolError(
                "REPLY needs a reply-to, a status (OK, ERROR or PARTIAL) and a body"
            )
        token = decode_token(arguments[0])
        status = _STATUSES[arguments[1][0]]
        if status is Status.PARTIAL:
            return Reply(worker, token, Status.OK, arguments[2:], "zmqrelay", partial=True)
        return Reply(worker, token, status, arguments[2:], "zmqrelay")
    if command == READY:
        if len(arguments) not in (1, 2) or not arguments[0].isdigit():
            raise RemoteProtocolError("READY carries the credits (an ASCII integer), a service")
        credits = int(arguments[0])
        if not 1 <= credits <= _MAX_CREDITS:
            raise RemoteProtocolError(f"READY credits must be 1 to {_MAX_CREDITS}, not {credits}")
        service = arguments[1] if len(arguments) == 2 else b""
        if service.startswith(b"mmi."):
            raise RemoteProtocolError("workers may not offer mmi.* services")
        return Ready(worker, credits, "zmqrelay", service)
    if arguments:
        raise RemoteProtocolError(f"command {command!r} takes no frames")
    if command == HEARTBEAT:
        return Heartbeat(worker)
    if command == LEAVING:
        return Leaving(worker)
    if command == DISCONNECT:
        return Disconnect(worker)
    raise RemoteProtocolError(f"unknown ZRW1 command {command!r}")


def encode_request(
    worker: bytes,
    dialect: Dialect,
    token: int,
    body: list[bytes],
    *,
    redelivery: bool = False,
    timeout: float | None = None,
) -> list[bytes]:
    """The message sending request ``token`` to ``worker`` (through the backend ROUTER)."""
    reply_to = encode_token(token)
    if dialect == "guide":
        return [worker, DELIMITER, reply_to, DELIMITER, *body]
    milliseconds = b"" if timeout is None else str(max(0, round(timeout * 1000))).encode()
    flags = b"\x01" if redelivery else b"\x00"
    return [worker, DELIMITER, PROTOCOL, REQUEST, reply_to, flags, milliseconds, *body]


def encode_command(worker: bytes, command: bytes) -> list[bytes]:
    """A HEARTBEAT or DISCONNECT for a zmqrelay-dialect ``worker``."""
    return [worker, DELIMITER, PROTOCOL, command]


def encode_command_to_broker(command: bytes) -> list[bytes]:
    """A HEARTBEAT, LEAVING or DISCONNECT from a zmqrelay worker (a DEALER)."""
    return [DELIMITER, PROTOCOL, command]


def encode_ready(credits: int, service: bytes = b"") -> list[bytes]:
    """What a zmqrelay worker (a DEALER) sends to register (for ``service``, if not default)."""
    message = [DELIMITER, PROTOCOL, READY, str(credits).encode()]
    return [*message, service] if service else message


def encode_reply(token_frame: bytes, status: Status, body: list[bytes]) -> list[bytes]:
    """What a zmqrelay worker sends to answer the request that came with ``token_frame``."""
    return [DELIMITER, PROTOCOL, REPLY, token_frame, bytes([status]), *body]


@dataclass(frozen=True, slots=True)
class Assignment:
    """A request as a zmqrelay worker receives it from a load-balancing broker."""

    reply_to: bytes
    redelivery: bool
    timeout: float | None
    body: list[bytes]

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
        RemoteProtocolError: it is not a ZRW1 message from a broker.
    """
    if len(frames) < 3 or frames[0] != DELIMITER or frames[1] != PROTOCOL:
        raise RemoteProtocolError("a broker's message starts [empty frame, ZRW1, command]")
    command, arguments = frames[2], frames[3:]
    if command == REQUEST:
        if len(arguments) < 4 or arguments[1] not in (b"\x00", b"\x01"):
            raise RemoteProtocolError("REQUEST needs reply-to, flags, timeout and a body")
        reply_to, flags, milliseconds = arguments[0], arguments[1], arguments[2]
        if milliseconds and not milliseconds.isdigit():
            raise RemoteProtocolError("a REQUEST's timeout is an ASCII integer of milliseconds")
        timeout = int(milliseconds) / 1000 if milliseconds else None
        return Assignment(reply_to, flags == b"\x01", timeout, arguments[3:])
    if arguments:
        raise RemoteProtocolError(f"command {command!r} takes no frames")
    if command == HEARTBEAT:
        return "heartbeat"
    if command == DISCONNECT:
        return "disconnect"
    raise RemoteProtocolError(f"unknown ZRW1 command from a broker {command!r}")
