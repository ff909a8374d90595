r"""The workers' side of a load-balancing broker: each dialect a worker may speak, one class.

==============  ===================================  =========================================
dialect         worker → broker (after its id)       broker → worker (after its id)
==============  ===================================  =========================================
``guide``       ``"", READY`` (one frame, any        ``"", reply-to, "", body...``
                text) then ``"", reply-to, "",       (one request at a time; no heartbeats)
                reply...`` (the guide's REQ worker)
``zmqrelay``    ``"", ZRW1, command, ...``           ``"", ZRW1, command, ...``
                (:mod:`zmqrelay._core.lbwire`)
``mdp-0.1``     ``"", MDPW01, command, ...``         the same header (spec 7/MDP)
``mdp-0.2``     ``MDPW02, command, ...``             the same header (spec 18/MDP)
``majortomo``   ``"", MDPW02, command, ...``         the same header (majortomo 0.2.0)
==============  ===================================  =========================================

Each message carries its dialect in its header, so :func:`read` tells it from the message
itself. A request goes to a worker as an opaque 8-byte *reply-to* token standing for the
client's whole envelope; the worker answers with it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from zmqrelay._core import lbwire, mdp
from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.request import Request
from zmqrelay._core.tag import Status
from zmqrelay.errors import RemoteProtocolError

DialectName = Literal[
    "guide", "pirate", "zmqrelay", "zmqrelay-1", "mdp-0.1", "mdp-0.2", "majortomo"
]

TOKEN_SIZE = 8
_READY_WITH_FEATURES = lbwire.READY_FEATURES_HEADER.size
_READY_SIZES = (lbwire.READY_HEADER.size, _READY_WITH_FEATURES)
ZRW1 = b"ZRW1"
PIRATE_READY, PIRATE_HEARTBEAT = b"\x01", b"\x02"
_STATUSES = tuple(Status)
_WORKER_STATUS_CODES = (Status.OK, Status.ERROR, Status.PARTIAL)
_WORKER_STATUSES = tuple(bytes([code]) for code in _WORKER_STATUS_CODES)


class Ready(NamedTuple):
    """The worker takes ``credits`` requests at once, of ``service``."""

    credits: int
    service: bytes


class Answer(NamedTuple):
    """The worker answered the request it got as ``token`` (one part of it, if ``partial``)."""

    token: bytes
    status: Status
    body: list[bytes]
    partial: bool


Command = Literal["heartbeat", "leaving", "disconnect"]
Event = Ready | Answer | Command
"""What a worker's message says."""


class Dialect:
    """How one kind of worker speaks; the broker answers each worker in its own dialect."""

    name: DialectName
    heartbeats = True
    """Whether it sends and expects heartbeats (else it is never judged by its silence)."""
    patient = False
    """Whether it may say nothing while it works (then its silence counts only while idle)."""
    acknowledged = False
    """Whether its READY is answered at once (with a heartbeat)."""
    starts_with_ready = False
    """Whether it says READY only when it starts: READY again means it restarted, and what
    it held is lost with its previous life."""
    reply_is_ready = False
    """Whether its reply also says it is ready for the next request (a REQ worker's is): one
    from a worker the broker does not know registers it."""

    def decode(self, rest: list[bytes], *, known: bool) -> Event:
        """What the frames after the header say; ``known``: the worker has registered.

        Raises:
            RemoteProtocolError: the message breaks the dialect's rules.
        """
        raise NotImplementedError

    def request(self, worker: bytes, request: Request, now: float) -> list[bytes]:
        """The message giving ``request`` (its :attr:`~Request.token` set) to ``worker``."""
        raise NotImplementedError

    def command(
        self, worker: bytes, which: Literal["heartbeat", "disconnect"]
    ) -> list[bytes] | None:
        """A HEARTBEAT or DISCONNECT for ``worker``, or ``None`` in a dialect without them."""
        return None

    def __repr__(self) -> str:
        return f"<Dialect {self.name}>"


def _token(frame: bytes) -> bytes:
    if len(frame) != TOKEN_SIZE:
        raise RemoteProtocolError(f"a reply-to frame has {TOKEN_SIZE} bytes, not {len(frame)}")
    return frame


class _Guide(Dialect):
    name = "guide"
    heartbeats = False
    starts_with_ready = True
    reply_is_ready = True

    def decode(self, rest: list[bytes], *, known: bool) -> Event:
        # rest: the frames after [id, ""]
        if len(rest) == 1:  # READY (again, if it restarted with the same id)
            return Ready(1, b"")
        if len(rest) < 3 or rest[1] != DELIMITER:
            raise RemoteProtocolError("a guide worker replies [reply-to, empty frame, reply...]")
        return Answer(_token(rest[0]), Status.OK, rest[2:], False)

    def request(self, worker: bytes, request: Request, now: float) -> list[bytes]:
        return [worker, DELIMITER, request.token, DELIMITER, *request.body]


class _Zmqrelay(Dialect):
    """ZRW2 (:mod:`zmqrelay._core.lbwire`): one header frame, fixed fields, then the body.

    A worker that asked for trace context in its READY gets it with each request that has
    one (``with_context``); one that did not never sees it.
    """

    name = "zmqrelay"
    acknowledged = True

    def __init__(self, *, with_context: bool) -> None:
        self.with_context = with_context

    def decode(self, rest: list[bytes], *, known: bool) -> Event:
        header = rest[0]  # read() saw it start with ZRW2
        command = header[4:5]
        if command == lbwire.REPLY:
            if len(header) != lbwire.REPLY_HEADER_SIZE or len(rest) < 2:
                raise RemoteProtocolError("REPLY needs a reply-to, a status and a body")
            status = header[13]
            if status not in _WORKER_STATUS_CODES:
                raise RemoteProtocolError(
                    f"a REPLY's status is OK, ERROR or PARTIAL, not {status}"
                )
            if status == Status.PARTIAL:
                return Answer(header[5:13], Status.OK, rest[1:], True)
            return Answer(header[5:13], _STATUSES[status], rest[1:], False)
        if command == lbwire.READY:
            if len(header) not in _READY_SIZES or len(rest) > 2:
                raise RemoteProtocolError(
                    "READY carries the credits and maybe features, then maybe a service"
                )
            credits = lbwire.READY_HEADER.unpack_from(header)[2]
            service = rest[1] if len(rest) == 2 else b""
            return _ready(credits, service)
        if len(header) != 5 or len(rest) != 1:
            raise RemoteProtocolError(f"command {command!r} takes no fields or frames")
        return _command(command)

    def request(self, worker: bytes, request: Request, now: float) -> list[bytes]:
        deadline = request.deadline
        milliseconds = (
            lbwire.NO_TIMEOUT
            if deadline is None
            else min(lbwire.NO_TIMEOUT - 1, max(0, round((deadline - now) * 1000)))
        )
        context = request.context
        if context and self.with_context:
            header = lbwire.REQUEST_HEADER.pack(
                lbwire.PROTOCOL,
                lbwire.REQUEST,
                request.token,
                request.redelivery | lbwire.WITH_CONTEXT,
                milliseconds,
            )
            return [worker, header, context, *request.body]
        header = lbwire.REQUEST_HEADER.pack(
            lbwire.PROTOCOL, lbwire.REQUEST, request.token, request.redelivery, milliseconds
        )
        return [worker, header, *request.body]

    def command(
        self, worker: bytes, which: Literal["heartbeat", "disconnect"]
    ) -> list[bytes] | None:
        code = lbwire.HEARTBEAT if which == "heartbeat" else lbwire.DISCONNECT
        return [worker, lbwire.PROTOCOL + code]


class _Pirate(Dialect):
    r"""The guide's Paranoid Pirate worker: a DEALER, with no empty frame.

    READY ``\x01`` and HEARTBEAT ``\x02`` are one frame each; requests and replies are
    ``[reply-to, "", body...]``.
    """

    name = "pirate"
    patient = True  # the guide's worker sends nothing while it works
    starts_with_ready = True

    def decode(self, rest: list[bytes], *, known: bool) -> Event:
        if rest == [PIRATE_READY]:
            return Ready(1, b"")
        if rest == [PIRATE_HEARTBEAT]:
            return "heartbeat"
        if len(rest) < 3 or rest[1] != DELIMITER:
            raise RemoteProtocolError("a Paranoid Pirate worker replies [reply-to, '', reply...]")
        return Answer(_token(rest[0]), Status.OK, rest[2:], False)

    def request(self, worker: bytes, request: Request, now: float) -> list[bytes]:
        return [worker, request.token, DELIMITER, *request.body]

    def command(
        self, worker: bytes, which: Literal["heartbeat", "disconnect"]
    ) -> list[bytes] | None:
        return [worker, PIRATE_HEARTBEAT] if which == "heartbeat" else None


def _ready(credits: int, service: bytes) -> Ready:
    if not 1 <= credits <= lbwire.MAX_CREDITS:
        raise RemoteProtocolError(
            f"READY credits must be 1 to {lbwire.MAX_CREDITS}, not {credits}"
        )
    if mdp.is_mmi(service):
        raise RemoteProtocolError("workers may not offer mmi.* services")
    return Ready(credits, service)


def _command(command: bytes) -> Command:
    if command == lbwire.HEARTBEAT:
        return "heartbeat"
    if command == lbwire.LEAVING:
        return "leaving"
    if command == lbwire.DISCONNECT:
        return "disconnect"
    raise RemoteProtocolError(f"unknown command {command!r}")


class _Zmqrelay1(Dialect):
    """ZRW1, the first version of zmqrelay's worker protocol: a frame for each field."""

    name = "zmqrelay-1"
    acknowledged = True

    def decode(self, rest: list[bytes], *, known: bool) -> Event:
        if not rest:
            raise RemoteProtocolError("a ZRW1 message needs a command")
        command, arguments = rest[0], rest[1:]
        if command == lbwire.REPLY:
            if len(arguments) < 3 or arguments[1] not in _WORKER_STATUSES:
                raise RemoteProtocolError(
                    "REPLY needs a reply-to, a status (OK, ERROR or PARTIAL) and a body"
                )
            status = _STATUSES[arguments[1][0]]
            if status is Status.PARTIAL:
                return Answer(_token(arguments[0]), Status.OK, arguments[2:], True)
            return Answer(_token(arguments[0]), status, arguments[2:], False)
        if command == lbwire.READY:
            if len(arguments) not in (1, 2) or not arguments[0].isdigit():
                raise RemoteProtocolError(
                    "READY carries the credits (an ASCII integer), a service"
                )
            credits = int(arguments[0])
            service = arguments[1] if len(arguments) == 2 else b""
            return _ready(credits, service)
        if arguments:
            raise RemoteProtocolError(f"command {command!r} takes no frames")
        return _command(command)

    def request(self, worker: bytes, request: Request, now: float) -> list[bytes]:
        deadline = request.deadline
        milliseconds = b"" if deadline is None else b"%d" % max(0, round((deadline - now) * 1000))
        flags = b"\x01" if request.redelivery else b"\x00"
        return [
            worker, DELIMITER, ZRW1, lbwire.REQUEST, request.token, flags, milliseconds,
            *request.body,
        ]  # fmt: skip

    def command(
        self, worker: bytes, which: Literal["heartbeat", "disconnect"]
    ) -> list[bytes] | None:
        code = lbwire.HEARTBEAT if which == "heartbeat" else lbwire.DISCONNECT
        return [worker, DELIMITER, ZRW1, code]


class _Majordomo(Dialect):
    patient = True

    def __init__(self, name: mdp.Variant) -> None:
        self.name = name
        self._header = [DELIMITER, mdp.WORKER_01] if name == "mdp-0.1" else [mdp.WORKER_02]
        if name == "majortomo":
            self._header = [DELIMITER, mdp.WORKER_02]
        self._commands = mdp.COMMANDS[name]

    def decode(self, rest: list[bytes], *, known: bool) -> Event:
        if not rest:
            raise RemoteProtocolError(f"an {self.name} worker message needs a command")
        commands = self._commands
        command, arguments = rest[0], rest[1:]
        if command == commands.final or (
            commands.partial is not None and command == commands.partial
        ):
            if not known:
                raise RemoteProtocolError("a reply from a worker that has not said READY")
            if len(arguments) < 3 or arguments[1] != DELIMITER:
                raise RemoteProtocolError("a reply carries [client, empty frame, body...]")
            return Answer(
                _token(arguments[0]), Status.OK, arguments[2:], command != commands.final
            )
        if command == commands.ready:
            if known:
                raise RemoteProtocolError("a worker may say READY only once")
            if len(arguments) != 1:
                raise RemoteProtocolError("READY carries one frame: the service name")
            if mdp.is_mmi(arguments[0]):
                raise RemoteProtocolError("workers may not offer mmi.* services")
            return Ready(1, arguments[0])
        if command in (commands.heartbeat, commands.disconnect):
            if arguments:
                raise RemoteProtocolError(f"command {command!r} takes no frames")
            return "heartbeat" if command == commands.heartbeat else "disconnect"
        raise RemoteProtocolError(f"unknown or unexpected {self.name} worker command {command!r}")

    def request(self, worker: bytes, request: Request, now: float) -> list[bytes]:
        # Majordomo has no room for a deadline or a redelivery mark.
        return [
            worker, *self._header, self._commands.request, request.token, DELIMITER,
            *request.body,
        ]  # fmt: skip

    def command(
        self, worker: bytes, which: Literal["heartbeat", "disconnect"]
    ) -> list[bytes] | None:
        commands = self._commands
        code = commands.heartbeat if which == "heartbeat" else commands.disconnect
        return [worker, *self._header, code]


GUIDE: Dialect = _Guide()
ZMQRELAY: Dialect = _Zmqrelay(with_context=False)
ZMQRELAY_WITH_CONTEXT: Dialect = _Zmqrelay(with_context=True)
"""ZRW2, for a worker that asked for trace context."""
ZMQRELAY_1: Dialect = _Zmqrelay1()
PIRATE: Dialect = _Pirate()
MDP_01: Dialect = _Majordomo("mdp-0.1")
MDP_02: Dialect = _Majordomo("mdp-0.2")
MAJORTOMO: Dialect = _Majordomo("majortomo")
DIALECTS: dict[DialectName, Dialect] = {
    dialect.name: dialect
    for dialect in (GUIDE, PIRATE, ZMQRELAY, ZMQRELAY_1, MDP_01, MDP_02, MAJORTOMO)
}


class Violation(NamedTuple):
    """A message that breaks its dialect's rules, and why."""

    reason: str


def read(frames: list[bytes], *, known: bool) -> tuple[Dialect | None, Event | Violation]:
    """Decode a message read from the backend ROUTER (its first frame is the worker's id).

    ``known`` says whether the worker has registered. Never raises: the dialect is ``None``
    when the message is in none; what breaks a dialect's rules is a :class:`Violation`.
    """
    count = len(frames)
    if count >= 3 and frames[1] == DELIMITER:
        header, rest = frames[2], frames[3:]
        if header == ZRW1:
            dialect = ZMQRELAY_1
        elif header == mdp.WORKER_02:
            dialect = MAJORTOMO
        elif header == mdp.WORKER_01:
            dialect = MDP_01
        else:
            dialect, rest = GUIDE, frames[2:]
    elif count >= 2 and frames[1][:4] == lbwire.PROTOCOL:
        header = frames[1]
        if len(header) == _READY_WITH_FEATURES and header[-1] & lbwire.TRACE_CONTEXT:
            dialect = ZMQRELAY_WITH_CONTEXT  # (if it is no READY, decoding says so)
        else:
            dialect = ZMQRELAY
        rest = frames[1:]
    elif count >= 2 and frames[1] == mdp.WORKER_02:
        dialect, rest = MDP_02, frames[2:]
    elif (count == 2 and frames[1] in (PIRATE_READY, PIRATE_HEARTBEAT)) or (
        count >= 4 and len(frames[1]) == TOKEN_SIZE and frames[2] == DELIMITER
    ):
        dialect, rest = PIRATE, frames[1:]
    else:
        return None, Violation("a worker's message starts with its id and an empty frame")
    try:
        return dialect, dialect.decode(rest, known=known)
    except RemoteProtocolError as exc:
        return dialect, Violation(str(exc))
