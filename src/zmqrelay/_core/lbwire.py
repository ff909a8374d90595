r"""zmqrelay's worker protocol, ZRW1, as a worker speaks it.

The broker's side of it, and of the guide's REQ workers, is :mod:`zmqrelay._core.dialects`.

zmqrelay's own worker (a DEALER) is Majordomo-like, with credits and heartbeats. Every message
starts ``[b"", b"ZRW1", command]``:

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.tag import Status
from zmqrelay._core.worker import check_reply, encode_error
from zmqrelay.errors import RemoteProtocolError

PROTOCOL = b"ZRW1"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT, LEAVING = (bytes([n]) for n in range(1, 7))


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
