r"""Majordomo (MDP) on the wire, as zmqrelay's own clients and workers speak its three variants.

The broker's side of the same wire is :mod:`zmqrelay._core.frontend` (clients) and
:mod:`zmqrelay._core.dialects` (workers).

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

from zmqrelay._core.envelope import DELIMITER
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


class ClientCommands(NamedTuple):
    """The command bytes of one variant's client protocol (0.1 has no command frame)."""

    request: bytes
    partial: bytes
    final: bytes


CLIENT_COMMANDS: dict[Variant, ClientCommands] = {
    "mdp-0.2": ClientCommands(b"\x01", b"\x02", b"\x03"),
    "majortomo": ClientCommands(b"\x02", b"\x03", b"\x04"),
}


def is_mmi(service: bytes) -> bool:
    """Whether ``service`` is in the namespace the broker answers itself."""
    return service.startswith(MMI_PREFIX)


def _worker_header(variant: Variant) -> list[bytes]:
    if variant == "mdp-0.1":
        return [DELIMITER, WORKER_01]
    if variant == "majortomo":
        return [DELIMITER, WORKER_02]
    return [WORKER_02]


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
    context: bytes = b""
    """Never a trace context: Majordomo has no room for one."""

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
        return [CLIENT_02, CLIENT_COMMANDS["mdp-0.2"].request, service, *body]
    return [DELIMITER, CLIENT_02, CLIENT_COMMANDS["majortomo"].request, service, *body]


def named_service(body: Sequence[bytes]) -> bytes | None:
    """The service a zmqrelay client's request for a named service names, else ``None``.

    ``body`` is what a relay-mode worker reads: majortomo's framing after its first empty frame.

    A relay-mode broker passes such a request to any worker unchanged: the worker can then
    tell its client that the broker does not route services, rather than hand the handler
    the Majordomo frames.
    """
    if len(body) < 3 or body[0] != CLIENT_02:
        return None
    return body[2] if body[1] == CLIENT_COMMANDS["majortomo"].request else None


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
        commands = CLIENT_COMMANDS[variant]
        if len(frames) < 4 or frames[0] != CLIENT_02 or frames[1] not in commands[1:]:
            raise RemoteProtocolError("an MDP/0.2 reply is [MDPC02, PARTIAL|FINAL, service, ...]")
        return ClientReply(frames[3:], frames[1] == commands.final)
    if len(frames) < 3 or frames[0] != DELIMITER or frames[1] != CLIENT_02:
        raise RemoteProtocolError("a majortomo reply is ['', MDPC02, PARTIAL|FINAL, body...]")
    majortomo = CLIENT_COMMANDS["majortomo"]
    if frames[2] not in majortomo[1:]:
        raise RemoteProtocolError("a majortomo reply is PARTIAL (0x03) or FINAL (0x04)")
    return ClientReply(frames[3:], frames[2] == majortomo.final)
