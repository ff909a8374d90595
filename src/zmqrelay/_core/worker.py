"""The worker side of the request protocol: decode requests, encode replies and error replies.

A worker behind the broker's DEALER backend receives ``[hop..., b"", body...]`` and must send
``[hop..., b"", reply...]`` back: the hops are opaque and retrace the route to the client. When
the innermost hop is a zmqrelay :mod:`tag <zmqrelay._core.tag>`, the client understands status
codes, so an error travels as a status; a plain peer instead receives :func:`plain_error_reply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from zmqrelay._core import envelope, tag, trace
from zmqrelay._core.worker_link import WorkerLinkStatistics
from zmqrelay.errors import LocalProtocolError, RemoteProtocolError

PLAIN_ERROR_PREFIX = b"zmqrelay-error: "


class WorkerStatistics(NamedTuple):
    """A snapshot of an :class:`~zmqrelay.AsyncWorker`'s counters."""

    requests_received: int
    """Well-formed requests taken from the socket."""
    replies_sent: int
    """Replies sent, error replies included."""
    handler_errors: int
    """Requests whose handler raised (each answered with an error reply)."""
    malformed_requests: int
    """Messages that were no request this worker can take: dropped when they were not a
    request at all, answered at once with an error when its handler cannot take them (several
    frames for a handler of one)."""
    refused_requests: int
    """Requests answered with a ``WorkerStopped`` error because the worker was stopping."""
    in_flight: int
    """Requests being handled right now."""
    concurrency: int
    """The most requests handled at once."""
    requests_dropped: int = 0
    """Requests whose broker went away (it said DISCONNECT, or was silent for ``liveness``
    heartbeat intervals) before their reply could go: the reply was dropped, or the handler
    never ran. The broker has ended them for their clients."""
    links: tuple[WorkerLinkStatistics, ...] = ()
    """The counters of each broker the worker serves, in the order of its endpoints (in relay
    mode, one for its one socket)."""


def check_body(body: Sequence[bytes], what: str = "reply") -> None:
    """Refuse a body the wire cannot carry, before any of its frames is sent.

    (A frame that fails to send after others went out would leave half a message queued.)

    Raises:
        LocalProtocolError: ``body`` is empty or holds something other than bytes.
    """
    if not body:
        raise LocalProtocolError(f"a {what} needs at least one body frame")
    for frame in body:
        if not isinstance(frame, bytes):
            raise LocalProtocolError(f"{what} frames must be bytes, not {type(frame).__name__}")


def check_reply(body: Sequence[bytes]) -> None:
    """:func:`check_body` for a reply."""
    check_body(body, "reply")


class Answerable(Protocol):
    """A request a worker can answer, whatever protocol brought it."""

    @property
    def body(self) -> list[bytes]:
        """The request's body frames."""
        ...

    @property
    def timeout(self) -> float | None:
        """Seconds the client waits for the reply, if it said."""
        ...

    @property
    def redelivery(self) -> bool:
        """Whether another worker may have handled this request before (it died)."""
        ...

    @property
    def context(self) -> bytes:
        """The trace context frame it came with (:mod:`zmqrelay._core.trace`), or ``b""``."""
        ...

    def reply(self, body: Sequence[bytes]) -> list[bytes]:
        """The frames that answer it with ``body``."""
        ...

    def partial(self, body: Sequence[bytes]) -> list[bytes] | None:
        """The frames of one part of a streamed reply, or ``None`` if parts must be joined."""
        ...

    def error(self, type_name: str, message: str) -> list[bytes]:
        """The frames that tell its client the handler raised."""
        ...


class Unanswerable(RemoteProtocolError):
    """A request the worker answers at once with an error instead of handling it.

    It is the peer's fault (several frames for a handler of one, or a named service asked of a
    relay broker): counted as malformed.
    """

    def __init__(self, reason: str, request: Answerable, answer: list[bytes]) -> None:
        super().__init__(reason)
        self.request = request
        self.answer = answer
        """The frames that tell the client why."""


class Request(NamedTuple):
    """A request as the worker sees it.

    (A named tuple rather than a frozen dataclass: made for every request, it is built
    several times faster.)
    """

    routing: list[bytes]
    """The envelope's hops, outermost first, to send back unchanged."""
    body: list[bytes]
    """The request's body frames (at least one)."""
    context: bytes = b""
    """The trace context frame a zmqrelay client put before its tag (it is left out of
    :attr:`routing`, so the reply does not carry it back), or ``b""``."""

    @property
    def tagged(self) -> bool:
        """Whether the client is a zmqrelay client that reads status codes."""
        return tag.decode(self.routing[-1]) is not None

    @property
    def redelivery(self) -> bool:
        """Never: a relay broker sends each request once."""
        return False

    @property
    def timeout(self) -> float | None:
        """How long the client waits for the reply, if its tag says."""
        decoded = tag.decode(self.routing[-1])
        return None if decoded is None else decoded.timeout

    def reply(self, body: Sequence[bytes]) -> list[bytes]:
        """The frames of a successful reply.

        Raises:
            LocalProtocolError: ``body`` is empty or holds something other than bytes.

        """
        check_reply(body)
        return [*self.routing, envelope.DELIMITER, *body]

    def partial(self, body: Sequence[bytes]) -> list[bytes] | None:
        """The frames of one part of a streamed reply, for a zmqrelay client; else ``None``.

        A plain client takes one reply: the caller joins the parts into it.
        """
        check_reply(body)
        hop = self.routing[-1]
        if tag.decode(hop) is None:
            return None
        marked = tag.with_status(hop, tag.Status.PARTIAL)
        return [*self.routing[:-1], marked, envelope.DELIMITER, *body]

    def error(self, type_name: str, message: str) -> list[bytes]:
        """The frames of an error reply: a status for zmqrelay clients, a text for plain ones."""
        hop = self.routing[-1]
        if tag.decode(hop) is not None:
            marked = tag.with_status(hop, tag.Status.ERROR)
            return [
                *self.routing[:-1],
                marked,
                envelope.DELIMITER,
                *encode_error(type_name, message),
            ]
        return [*self.routing, envelope.DELIMITER, plain_error_reply(type_name, message)]

    def refuse(self, status: tag.Status, error_name: str, message: str) -> list[bytes]:
        """The frames that refuse it: ``status`` for a zmqrelay client, else a plain error."""
        hop = self.routing[-1]
        if tag.decode(hop) is not None:
            marked = tag.with_status(hop, status)
            return [*self.routing[:-1], marked, envelope.DELIMITER, message.encode()]
        return [*self.routing, envelope.DELIMITER, plain_error_reply(error_name, message)]


def decode_error(body: list[bytes]) -> tuple[str, str]:
    """The handler's exception type name and message from an error reply's body."""
    type_name = body[0].decode("utf-8", "replace") if body else "Exception"
    message = body[1].decode("utf-8", "replace") if len(body) > 1 else ""
    return type_name, message


def encode_error(type_name: str, message: str) -> list[bytes]:
    """The body of an error reply, as :meth:`Reply.result` decodes it."""
    return [type_name.encode(), message.encode("utf-8", "replace")]


def plain_error_reply(type_name: str, message: str) -> bytes:
    """The single reply frame a plain (REQ) client gets when the handler raises.

    ``b"zmqrelay-error: <type name>: <message>"`` in UTF-8.
    """
    return PLAIN_ERROR_PREFIX + f"{type_name}: {message}".encode("utf-8", "replace")


def decode_request(frames: list[bytes]) -> Request:
    """Decode a message received from the broker.

    Raises:
        RemoteProtocolError: no routing frames, no delimiter or no body.

    """
    try:
        index = frames.index(envelope.DELIMITER)
    except ValueError:
        index = -1
    if index < 1 or index == len(frames) - 1:
        envelope.split(frames)  # raises RemoteProtocolError naming what is wrong
    routing = frames[:index]
    # A trace context sits between the client's id (at least one hop) and its tag.
    if index > 2 and trace.is_context(routing[-2]) and tag.decode(routing[-1]) is not None:
        context = routing.pop(-2)
        return Request(routing, frames[index + 1 :], context)
    return Request(routing, frames[index + 1 :])
