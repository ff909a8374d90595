r"""Majordomo (MDP) on the wire: clients and workers of the three variants the broker speaks.

==============  ====================================  =======================================
variant         client → broker (after its id)        worker → broker (after its id)
==============  ====================================  =======================================
``mdp-0.1``     ``"", MDPC01, service, body...``      ``"", MDPW01, command, ...``
(spec 7/MDP)    (a REQ client; envelope hops may      READY 1, REQUEST 2, REPLY 3,
                come before the empty frame)          HEARTBEAT 4, DISCONNECT 5
``mdp-0.2``     ``MDPC02, 0x01 REQUEST, service,      ``MDPW02, command, ...`` (no empty
(spec 18/MDP)   body...``; replies PARTIAL 0x02 and    frame): READY 1, REQUEST 2, PARTIAL 3,
                FINAL 0x03 with the service frame     FINAL 4, HEARTBEAT 5, DISCONNECT 6
``majortomo``   ``"", MDPC02, 0x02 REQUEST, service,  ``"", MDPW02, command, ...``: the
(majortomo      body...``; replies PARTIAL 0x03 and    commands of ``mdp-0.2`` after an empty
0.2.0)          FINAL 0x04, no service frame          frame
==============  ====================================  =======================================

Every message carries its variant, so a peer's is read off each message and the broker answers
in the same one. A worker's REQUEST, REPLY, PARTIAL and FINAL carry one client-address frame
then an empty frame; the broker puts there an opaque token standing for the client's whole
envelope (see :mod:`zmqrelay._core.lbwire`), so clients behind several hops, or with many
requests in flight, are answered too.

Service discovery (spec 8/MMI) is answered by the broker itself: a request to ``mmi.service``
whose body names a service gets ``200`` while a live worker offers it, else ``404``; any other
``mmi.`` name gets ``501``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from zmqrelay._core import lbwire
from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.tag import Status
from zmqrelay._core.worker import check_reply, plain_error_reply
from zmqrelay.errors import RemoteProtocolError

Variant = Literal["mdp-0.1", "mdp-0.2", "majortomo"]
VARIANTS: tuple[Variant, ...] = ("mdp-0.1", "mdp-0.2", "majortomo")
_BY_NAME: dict[str, Variant] = {variant: variant for variant in VARIANTS}


def as_variant(name: str) -> Variant | None:
    """``name`` as an MDP variant, or ``None`` when it names another dialect."""
    return _BY_NAME.get(name)


CLIENT_01, WORKER_01 = b"MDPC01", b"MDPW01"
CLIENT_02, WORKER_02 = b"MDPC02", b"MDPW02"
MMI_PREFIX = b"mmi."
MMI_SERVICE = b"mmi.service"


class WorkerCommands(NamedTuple):
    """The command bytes of one variant's worker protocol (``partial`` is None in 0.1)."""

    ready: bytes
    request: bytes
    partial: bytes | None
    final: bytes
    heartbeat: bytes
    disconnect: bytes


_COMMANDS_01 = WorkerCommands(b"\x01", b"\x02", None, b"\x03", b"\x04", b"\x05")
_COMMANDS_02 = WorkerCommands(b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x06")
COMMANDS: dict[Variant, WorkerCommands] = {
    "mdp-0.1": _COMMANDS_01,
    "mdp-0.2": _COMMANDS_02,
    "majortomo": _COMMANDS_02,
}

# Client commands: (request, partial, final); 0.1 has one REPLY and no command frame at all.
_CLIENT_02 = (b"\x01", b"\x02", b"\x03")
_CLIENT_MAJORTOMO = (b"\x02", b"\x03", b"\x04")


def is_mmi(service: bytes) -> bool:
    """Whether ``service`` is in the namespace the broker answers itself."""
    return service.startswith(MMI_PREFIX)


# -- workers, as the broker's backend ROUTER reads and writes them -----------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """A worker broke the protocol; ``dialect`` is the one it spoke, when that could be told."""

    worker: bytes
    dialect: lbwire.Dialect | None
    reason: str


def _worker_variant(frames: list[bytes]) -> tuple[Variant, list[bytes]] | None:
    """The MDP variant of a backend message and the frames after its header, or ``None``."""
    if len(frames) >= 2 and frames[1] == WORKER_02:
        return "mdp-0.2", frames[2:]
    if len(frames) >= 3 and frames[1] == DELIMITER:
        if frames[2] == WORKER_01:
            return "mdp-0.1", frames[3:]
        if frames[2] == WORKER_02:
            return "majortomo", frames[3:]
    return None


def decode_backend(frames: list[bytes], *, known: bool) -> lbwire.WorkerEvent | Violation:
    """Decode any message read from the backend ROUTER (its first frame is the worker's id).

    MDP workers are recognised by their header; other messages are the load-balancing dialects
    of :func:`zmqrelay._core.lbwire.decode_backend`. ``known`` says whether the worker has
    registered. Never raises: what breaks the protocol is returned as a :class:`Violation`.
    """
    if not frames:
        return Violation(b"", None, "an empty message")
    worker = frames[0]
    found = _worker_variant(frames)
    if found is None:
        try:
            return lbwire.decode_backend(frames, known=known)
        except RemoteProtocolError as exc:
            dialect: lbwire.Dialect | None = None
            if len(frames) > 2 and frames[1] == DELIMITER and frames[2] == lbwire.PROTOCOL:
                dialect = "zmqrelay"
            return Violation(worker, dialect, str(exc))
    variant, rest = found
    try:
        return _decode_mdp_worker(worker, variant, rest, known=known)
    except RemoteProtocolError as exc:
        return Violation(worker, variant, str(exc))


def _decode_mdp_worker(
    worker: bytes, variant: Variant, rest: list[bytes], *, known: bool
) -> lbwire.WorkerEvent:
    if not rest:
        raise RemoteProtocolError(f"an {variant} worker message needs a command")
    commands = COMMANDS[variant]
    command, arguments = rest[0], rest[1:]
    if command == commands.ready:
        if known:
            raise RemoteProtocolError("a worker may say READY only once")
        if len(arguments) != 1:
            raise RemoteProtocolError("READY carries one frame: the service name")
        if is_mmi(arguments[0]):
            raise RemoteProtocolError("workers may not offer mmi.* services")
        return lbwire.Ready(worker, 1, variant, arguments[0])
    if command == commands.final or (commands.partial is not None and command == commands.partial):
        if not known:
            raise RemoteProtocolError("a reply from a worker that has not said READY")
        if len(arguments) < 3 or arguments[1] != DELIMITER:
            raise RemoteProtocolError("a reply carries [client, empty frame, body...]")
        token = lbwire.decode_token(arguments[0])
        partial = command != commands.final
        return lbwire.Reply(worker, token, Status.OK, arguments[2:], variant, partial)
    if command in (commands.heartbeat, commands.disconnect):
        if arguments:
            raise RemoteProtocolError(f"command {command!r} takes no frames")
        # The variant travels with the event: the broker answers an unknown worker in it.
        if command == commands.heartbeat:
            return lbwire.Heartbeat(worker, variant)
        return lbwire.Disconnect(worker, variant)
    raise RemoteProtocolError(f"unknown or unexpected {variant} worker command {command!r}")


def _worker_header(variant: Variant) -> list[bytes]:
    if variant == "mdp-0.1":
        return [DELIMITER, WORKER_01]
    if variant == "majortomo":
        return [DELIMITER, WORKER_02]
    return [WORKER_02]


def encode_worker_request(
    worker: bytes, variant: Variant, token: int, body: list[bytes]
) -> list[bytes]:
    """The REQUEST sending ``body`` to ``worker``; its client address is ``token``."""
    return [
        worker,
        *_worker_header(variant),
        COMMANDS[variant].request,
        lbwire.encode_token(token),
        DELIMITER,
        *body,
    ]


def encode_worker_command(worker: bytes, variant: Variant, which: str) -> list[bytes]:
    """A ``"heartbeat"`` or ``"disconnect"`` for ``worker``."""
    commands = COMMANDS[variant]
    command = commands.heartbeat if which == "heartbeat" else commands.disconnect
    return [worker, *_worker_header(variant), command]


def encode_backend_request(
    worker: bytes,
    dialect: lbwire.Dialect,
    token: int,
    body: list[bytes],
    *,
    redelivery: bool = False,
    timeout: float | None = None,
) -> list[bytes]:
    """A request for ``worker`` in its dialect, as :func:`decode_backend` reads them.

    Only zmqrelay's dialect carries ``redelivery`` and ``timeout``; Majordomo has no room.
    """
    variant = as_variant(dialect)
    if variant is not None:
        return encode_worker_request(worker, variant, token, body)
    return lbwire.encode_request(
        worker, dialect, token, body, redelivery=redelivery, timeout=timeout
    )


def encode_backend_command(
    worker: bytes, dialect: lbwire.Dialect, which: Literal["heartbeat", "disconnect"]
) -> list[bytes] | None:
    """A HEARTBEAT or DISCONNECT for ``worker`` in its dialect (the guide's workers take none)."""
    variant = as_variant(dialect)
    if variant is not None:
        return encode_worker_command(worker, variant, which)
    if dialect == "zmqrelay":
        command = lbwire.HEARTBEAT if which == "heartbeat" else lbwire.DISCONNECT
        return lbwire.encode_command(worker, command)
    return None


# -- clients, as the broker's frontend ROUTER reads and writes them ----------------------------

ClientDialect = Literal["plain", "mdp-0.1", "mdp-0.2", "majortomo"]


class ClientMessage(NamedTuple):
    """A client's request, split: where it came from, what it asks for, in which dialect."""

    envelope: list[bytes]
    """The frames that route the reply back (the client's id, any hops, a zmqrelay tag)."""
    dialect: ClientDialect
    service: bytes
    """``b""`` (the default service) for plain requests."""
    body: list[bytes]


def decode_client(frames: list[bytes]) -> ClientMessage:
    """Decode a message read from the frontend ROUTER (its first frame is the client's id).

    A plain request is ``[id, hop..., "", body...]`` for the default service; an MDP client
    names its service in the header its variant defines.

    Raises:
        RemoteProtocolError: the message is in no dialect, or breaks its rules.
    """
    spec_02 = len(frames) >= 2 and frames[1] == CLIENT_02
    if spec_02 and len(frames) >= 5 and frames[2] == _CLIENT_02[0]:
        return ClientMessage(frames[:1], "mdp-0.2", frames[3], frames[4:])
    # Else, a hop of the envelope may just happen to read "MDPC02".
    try:
        index = frames.index(DELIMITER, 1)
    except ValueError:
        if spec_02:
            raise RemoteProtocolError(
                "an MDP/0.2 REQUEST is [MDPC02, 0x01, service, body...]"
            ) from None
        raise RemoteProtocolError("a request needs an empty delimiter frame") from None
    envelope, rest = frames[:index], frames[index + 1 :]
    if not rest:
        raise RemoteProtocolError("a request needs a body")
    header = rest[0]
    if header == CLIENT_01:
        if len(rest) < 3:
            raise RemoteProtocolError("an MDP/0.1 request is [MDPC01, service, body...]")
        return ClientMessage(envelope, "mdp-0.1", rest[1], rest[2:])
    if header == CLIENT_02:
        if len(rest) < 4 or rest[1] != _CLIENT_MAJORTOMO[0]:
            raise RemoteProtocolError(
                "a majortomo REQUEST is ['', MDPC02, 0x02, service, body...]"
            )
        return ClientMessage(envelope, "majortomo", rest[2], rest[3:])
    return ClientMessage(envelope, "plain", b"", rest)


def encode_client_reply(
    envelope: list[bytes],
    dialect: ClientDialect,
    service: bytes,
    body: list[bytes],
    *,
    partial: bool = False,
) -> list[bytes]:
    """A reply (or, in 0.2 dialects, one PARTIAL part of it) to a client, in its dialect.

    ``envelope`` is the request's, tag included (its status is the caller's to set).
    """
    if dialect == "plain":
        return [*envelope, DELIMITER, *body]
    if dialect == "mdp-0.1":
        return [*envelope, DELIMITER, CLIENT_01, service, *body]
    if dialect == "mdp-0.2":
        command = _CLIENT_02[1] if partial else _CLIENT_02[2]
        return [*envelope, CLIENT_02, command, service, *body]
    command = _CLIENT_MAJORTOMO[1] if partial else _CLIENT_MAJORTOMO[2]
    return [*envelope, DELIMITER, CLIENT_02, command, *body]


def streams(dialect: ClientDialect) -> bool:
    """Whether a client of ``dialect`` takes PARTIAL replies (else parts are joined into one)."""
    return dialect in ("mdp-0.2", "majortomo")


def mmi_reply(service: bytes, offered: bool) -> list[bytes]:
    """The broker's own answer to a request for ``service`` (an ``mmi.`` name).

    ``offered`` says whether a live worker offers the service the request's body names.
    """
    if service != MMI_SERVICE:
        return [b"501"]
    return [b"200" if offered else b"404"]


# -- the worker's side: what an MDP worker (a DEALER) sends and reads --------------------------


def encode_ready(variant: Variant, service: bytes) -> list[bytes]:
    """What an MDP worker sends to register for ``service``."""
    return [*_worker_header(variant), COMMANDS[variant].ready, service]


def encode_to_broker(variant: Variant, which: str) -> list[bytes]:
    """A ``"heartbeat"`` or ``"disconnect"`` from an MDP worker."""
    commands = COMMANDS[variant]
    return [
        *_worker_header(variant),
        commands.heartbeat if which == "heartbeat" else commands.disconnect,
    ]


@dataclass(frozen=True, slots=True)
class MdpAssignment:
    """A request as an MDP worker receives it; it answers with :meth:`reply` or :meth:`error`."""

    variant: Variant
    reply_to: bytes
    body: list[bytes]
    timeout: float | None = None
    redelivery: bool = False

    def _answer(self, command: bytes, body: list[bytes]) -> list[bytes]:
        return [*_worker_header(self.variant), command, self.reply_to, DELIMITER, *body]

    def reply(self, body: Sequence[bytes]) -> list[bytes]:
        """The FINAL (REPLY in 0.1) answering this request with ``body``.

        Raises:
            LocalProtocolError: ``body`` is empty or holds something other than bytes.
        """
        check_reply(body)
        return self._answer(COMMANDS[self.variant].final, list(body))

    def partial(self, body: Sequence[bytes]) -> list[bytes] | None:
        """A PARTIAL part, or ``None`` in 0.1, which has none (the caller joins the parts)."""
        check_reply(body)
        command = COMMANDS[self.variant].partial
        return None if command is None else self._answer(command, list(body))

    def error(self, type_name: str, message: str) -> list[bytes]:
        """The FINAL telling the client that the handler raised, in one plain frame."""
        return self._answer(COMMANDS[self.variant].final, [plain_error_reply(type_name, message)])


BrokerCommand = Literal["heartbeat", "disconnect"]


def decode_from_broker(variant: Variant, frames: list[bytes]) -> MdpAssignment | BrokerCommand:
    """Decode what an MDP worker's DEALER read from its broker.

    Raises:
        RemoteProtocolError: it is not a message of ``variant`` from a broker.
    """
    header = _worker_header(variant)
    if len(frames) <= len(header) or frames[: len(header)] != header:
        raise RemoteProtocolError(f"a broker's message starts {header!r}")
    commands = COMMANDS[variant]
    command, arguments = frames[len(header)], frames[len(header) + 1 :]
    if command == commands.request:
        if len(arguments) < 3 or arguments[1] != DELIMITER:
            raise RemoteProtocolError("a REQUEST carries [client, empty frame, body...]")
        return MdpAssignment(variant, arguments[0], arguments[2:])
    if command == commands.heartbeat and not arguments:
        return "heartbeat"
    if command == commands.disconnect and not arguments:
        return "disconnect"
    raise RemoteProtocolError(f"unknown or unexpected {variant} broker command {command!r}")


# -- the client's side -------------------------------------------------------------------------


def encode_request(variant: Variant, service: bytes, body: Sequence[bytes]) -> list[bytes]:
    """What an MDP client (a DEALER) sends to ask ``service``."""
    if variant == "mdp-0.1":
        return [DELIMITER, CLIENT_01, service, *body]
    if variant == "mdp-0.2":
        return [CLIENT_02, _CLIENT_02[0], service, *body]
    return [DELIMITER, CLIENT_02, _CLIENT_MAJORTOMO[0], service, *body]


class ClientReply(NamedTuple):
    """A reply as an MDP client reads it."""

    body: list[bytes]
    final: bool


def decode_reply(variant: Variant, frames: list[bytes]) -> ClientReply:
    """Decode what an MDP client's DEALER read from its broker.

    Raises:
        RemoteProtocolError: it is not a reply of ``variant``.
    """
    if variant == "mdp-0.1":
        if len(frames) < 4 or frames[0] != DELIMITER or frames[1] != CLIENT_01:
            raise RemoteProtocolError("an MDP/0.1 reply is ['', MDPC01, service, body...]")
        return ClientReply(frames[3:], True)
    if variant == "mdp-0.2":
        if len(frames) < 4 or frames[0] != CLIENT_02 or frames[1] not in _CLIENT_02[1:]:
            raise RemoteProtocolError("an MDP/0.2 reply is [MDPC02, PARTIAL|FINAL, service, ...]")
        return ClientReply(frames[3:], frames[1] == _CLIENT_02[2])
    if len(frames) < 3 or frames[0] != DELIMITER or frames[1] != CLIENT_02:
        raise RemoteProtocolError("a majortomo reply is ['', MDPC02, PARTIAL|FINAL, body...]")
    if frames[2] not in _CLIENT_MAJORTOMO[1:]:
        raise RemoteProtocolError("a majortomo reply is PARTIAL (0x03) or FINAL (0x04)")
    return ClientReply(frames[3:], frames[2] == _CLIENT_MAJORTOMO[2])
