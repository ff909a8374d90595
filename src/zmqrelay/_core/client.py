"""The client side of zmqrelay's request protocol: issue request ids, match replies to them.

:class:`Correlator` keeps the table of requests in flight. It holds one opaque value per request
(the I/O shell stores the future its caller awaits) and classifies every reply it is shown:
delivered to a waiting request, late (its request already ended), foreign (an id this client
never issued, such as a reply misrouted after a broker restart) or malformed.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Sequence
from typing import Generic, NamedTuple, TypeVar

from zmqrelay._core import mdp, tag, trace
from zmqrelay._core.client_links import ClientLinkStatistics
from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.refusal import BY_ERROR_NAME, BY_STATUS
from zmqrelay._core.worker import PLAIN_ERROR_PREFIX, check_body, decode_error, encode_error
from zmqrelay.errors import (
    RemoteError,
    RemoteProtocolError,
    ZmqRelayError,
)

T = TypeVar("T")

_ID_SPACE = 1 << 64

# The tag frame of a request, built and read in pieces rather than through tag.encode and
# tag.decode (a struct, a NamedTuple and an enum per call): the head, then the id, then a tail
# that depends only on the timeout and the redeliveries, kept per pair. Same bytes; the
# property tests compare them with tag.encode/tag.decode.
_REQUEST_HEAD = tag.MAGIC + bytes([tag.VERSION, tag.Status.OK])
_TAIL = struct.Struct(">IB")
_PREFIX = _REQUEST_HEAD[:3]
_STATUS_AND_ID = struct.Struct(">BQ")
_STATUSES = tuple(tag.Status)
_OK = tag.Status.OK
_PARTIAL = tag.Status.PARTIAL
_MAX_TIMEOUT_MS = 2**32 - 1


class ClientStatistics(NamedTuple):
    """A snapshot of an :class:`~zmqrelay.AsyncClient`'s counters."""

    requests_sent: int
    """Requests handed to the socket."""
    replies_received: int
    """Replies delivered to a waiting request (including error replies)."""
    in_flight: int
    """Requests waiting for their reply right now."""
    timeouts: int
    """Requests that ended in :class:`~zmqrelay.RequestTimeout`."""
    late_replies: int
    """Replies dropped because their request had already ended (timed out or cancelled)."""
    foreign_replies: int
    """Replies dropped because this client never issued their request id."""
    malformed_replies: int
    """Messages dropped because they were not a tagged reply."""
    retries: int = 0
    """Requests sent again under a retry policy."""
    links: tuple[ClientLinkStatistics, ...] = ()
    """With several endpoints, each broker's link: its state and counters, in the order of
    the endpoints (empty with one endpoint)."""


class Reply(NamedTuple):
    """A reply matched to its request."""

    request_id: int
    status: tag.Status
    body: list[bytes]

    def result(self) -> list[bytes]:
        """The reply's body frames.

        Raises:
            RemoteError: the worker reported that its handler raised.
            RequestRefused: the broker ended the request (a subclass says why).

        """
        if self.status is _OK or self.status is _PARTIAL:
            return self.body
        if self.status is tag.Status.ERROR:
            type_name, message = decode_error(self.body)
            raise RemoteError(type_name, message)
        detail = self.body[0].decode("utf-8", "replace") if self.body else ""
        refusal = BY_STATUS[self.status]
        raise refusal.error(detail or refusal.text)


def single_frame(body: list[bytes]) -> bytes:
    """The one frame of a reply's ``body``.

    Raises:
        RemoteProtocolError: the reply has more frames, or none.
    """
    if len(body) != 1:
        raise RemoteProtocolError(
            f"expected a single-frame reply, got {len(body)} frames; use request_frames()"
        )
    return body[0]


def error_from_plain(body: list[bytes]) -> ZmqRelayError | None:
    """The error a reply in zmqrelay's plain error format reports, or ``None`` if it is none.

    Plain (untagged) clients of a zmqrelay broker or worker get refusals and handler errors as
    one frame ``b"zmqrelay-error: <type>: <message>"``
    (:func:`~zmqrelay._core.worker.plain_error_reply`).
    """
    if len(body) != 1 or not body[0].startswith(PLAIN_ERROR_PREFIX):
        return None
    text = body[0][len(PLAIN_ERROR_PREFIX) :].decode("utf-8", "replace")
    type_name, _, message = text.partition(": ")
    refusal = BY_ERROR_NAME.get(type_name)
    return refusal.error(message) if refusal is not None else RemoteError(type_name, message)


def _status_from_plain(body: list[bytes]) -> tuple[tag.Status, list[bytes]] | None:
    """The status and body a plain error frame stands for, or ``None`` if it is none."""
    if len(body) != 1 or not body[0].startswith(PLAIN_ERROR_PREFIX):
        return None
    text = body[0][len(PLAIN_ERROR_PREFIX) :].decode("utf-8", "replace")
    type_name, _, message = text.partition(": ")
    refusal = BY_ERROR_NAME.get(type_name)
    if refusal is not None:
        return refusal.status, [message.encode()]
    return tag.Status.ERROR, encode_error(type_name, message)


class Correlator(Generic[T]):
    """Request ids and the table of requests in flight.

    Ids are consecutive from a caller-chosen ``first_id`` (pass a random one, so that two
    clients, or two lives of one client, never share ids).
    """

    def __init__(self, first_id: int) -> None:
        self._first_id = first_id % _ID_SPACE
        self._next_id = self._first_id
        self._issued = 0
        self._pending: dict[int, T] = {}
        # Requests that named a service (their replies come in Majordomo framing), those whose
        # caller takes parts one by one, and the parts held for callers that take one reply.
        self._framed: set[int] = set()
        self._streaming: set[int] = set()
        self._parts: dict[int, list[bytes]] = {}
        # (deadline, request id, timeout) of requests that have one; stale entries (requests
        # already ended) are skipped when they come up.
        self._deadlines: list[tuple[float, int, float]] = []
        self._tails: dict[tuple[float | None, int], bytes] = {}
        self.requests_sent = 0
        self.replies_received = 0
        self.timeouts = 0
        self.late_replies = 0
        self.foreign_replies = 0
        self.malformed_replies = 0
        self.retries = 0

    def open(
        self,
        waiter: T,
        body: Sequence[bytes],
        *,
        now: float = 0.0,
        timeout: float | None = None,
        redeliveries: int = 0,
        service: bytes = b"",
        stream: bool = False,
        context: bytes | None = None,
    ) -> tuple[int, list[bytes]]:
        """Register a request and return its id and the frames to send.

        With a ``timeout``, the request expires at ``now + timeout`` (see :meth:`expire`); the
        tag tells the broker and the worker too. ``redeliveries`` lets a load-balancing broker
        send the request again that many times if its worker dies. A request for a named
        ``service`` travels in majortomo's Majordomo framing behind the tag (the default
        service, ``b""``, in plain framing). With ``stream``, each part of a streamed reply is
        handed over as it comes (status ``PARTIAL``); else the parts are joined into the reply.
        A trace ``context`` frame (:mod:`zmqrelay._core.trace`) goes just before the tag.

        Raises:
            LocalProtocolError: ``body`` has no frames, or a frame that is not bytes.
        """
        if type(body) is not list or len(body) != 1 or type(body[0]) is not bytes:
            check_body(body, "request")
        request_id = self._next_id
        self._next_id = (request_id + 1) % _ID_SPACE
        self._issued += 1
        pending = self._pending
        pending[request_id] = waiter
        self.requests_sent += 1
        if timeout is not None:
            deadlines = self._deadlines
            if len(deadlines) > 2 * len(pending) + 1024:
                # Answered requests leave their deadlines behind: drop them now and then,
                # so the heap stays the size of what is in flight.
                deadlines[:] = [entry for entry in deadlines if entry[1] in pending]
                heapq.heapify(deadlines)
            heapq.heappush(deadlines, (now + timeout, request_id, timeout))
        tail = self._tails.get((timeout, redeliveries))
        if tail is None:
            tail = self._tail(timeout, redeliveries)
        frame = _REQUEST_HEAD + request_id.to_bytes(8, "big") + tail
        if stream:
            self._streaming.add(request_id)
        if service:
            self._framed.add(request_id)
            message = [frame, *mdp.encode_request("majortomo", service, body)]
        else:
            message = [frame, DELIMITER, *body]
        if context is not None:
            message.insert(0, context)
        return request_id, message

    def _tail(self, timeout: float | None, redeliveries: int) -> bytes:
        """The tag's last bytes for ``timeout`` and ``redeliveries`` (as :func:`tag.encode`)."""
        milliseconds = (
            0 if timeout is None else min(_MAX_TIMEOUT_MS, max(1, math.ceil(timeout * 1000)))
        )
        tail = _TAIL.pack(milliseconds, min(255, max(0, redeliveries)))
        if len(self._tails) < 64:  # callers with a timeout per request: keep the first few
            self._tails[timeout, redeliveries] = tail
        return tail

    def next_deadline(self) -> float | None:
        """When the next request in flight expires, if any has a timeout."""
        deadlines, pending = self._deadlines, self._pending
        while deadlines and deadlines[0][1] not in pending:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def expire(self, now: float) -> list[tuple[T, float]]:
        """End the requests whose deadline has passed by ``now``.

        Returns their waiters with their timeouts; they count as timed out, and a reply that
        still comes for one of them counts as late.
        """
        deadlines, pending = self._deadlines, self._pending
        expired = []
        while deadlines and deadlines[0][0] <= now:
            _, request_id, timeout = heapq.heappop(deadlines)
            waiter = pending.pop(request_id, None)
            if waiter is not None:
                self._forget(request_id)
                expired.append((waiter, timeout))
        self.timeouts += len(expired)
        return expired

    def close(self, request_id: int) -> None:
        """Forget a request: it was answered, timed out or cancelled. Idempotent."""
        self._pending.pop(request_id, None)
        self._forget(request_id)

    def _forget(self, request_id: int) -> None:
        # Most clients never name a service nor stream: skip the empty tables.
        if self._framed:
            self._framed.discard(request_id)
        if self._streaming:
            self._streaming.discard(request_id)
        if self._parts:
            self._parts.pop(request_id, None)

    def receive(self, frames: list[bytes]) -> tuple[T, Reply] | None:
        """Match a received message to its request.

        Returns the waiter and the reply, or ``None`` when the message was dropped (and
        counted as late, foreign or malformed).
        """
        if len(frames) < 3 or frames[1] != DELIMITER:
            # A stock worker echoes the request's trace context frame with its envelope.
            if len(frames) > 3 and frames[2] == DELIMITER and trace.is_context(frames[0]):
                frames = frames[1:]
            else:
                self.malformed_replies += 1
                return None
        # tag.decode, inlined: a tag is SIZE bytes behind the prefix, with a known status.
        head = frames[0]
        if len(head) != tag.SIZE or not head.startswith(_PREFIX):
            self.malformed_replies += 1
            return None
        code, request_id = _STATUS_AND_ID.unpack_from(head, 3)
        if code >= len(_STATUSES):
            self.malformed_replies += 1
            return None
        status = _STATUSES[code]
        waiter = self._pending.get(request_id)
        if waiter is None:
            if self.issued(request_id):
                self.late_replies += 1
            else:
                self.foreign_replies += 1
            return None
        body = frames[2:]
        if self._framed and request_id in self._framed:
            try:
                body = mdp.decode_reply("majortomo", frames[1:]).body
            except RemoteProtocolError:
                if status is tag.Status.OK or status is tag.Status.PARTIAL:
                    self.malformed_replies += 1
                    return None
                # A refusal in plain framing, from a peer that did not read the Majordomo
                # framing (a relay-mode worker: its broker does not route services).
            if status is tag.Status.OK:
                # A Majordomo worker can tell that its handler failed only in a plain error
                # frame (its protocol has no status): read it as the status it stands for.
                found = _status_from_plain(body)
                if found is not None:
                    status, body = found
        if status is tag.Status.PARTIAL:
            if request_id in self._streaming:
                return waiter, Reply(request_id, status, body)
            self._parts.setdefault(request_id, []).extend(body)
            return None
        del self._pending[request_id]
        if self._parts:
            parts = self._parts.get(request_id)
            if parts and status is _OK:
                body = [*parts, *body]
        self._forget(request_id)
        self.replies_received += 1
        return waiter, Reply(request_id, status, body)

    def lose(self, request_id: int) -> T | None:
        """End a request whose broker was lost; returns its waiter, if it was still waiting.

        A reply that still comes for it counts as late.
        """
        waiter = self._pending.pop(request_id, None)
        self._forget(request_id)
        return waiter

    def issued(self, request_id: int) -> bool:
        """Whether this correlator ever handed out ``request_id``."""
        return (request_id - self._first_id) % _ID_SPACE < min(self._issued, _ID_SPACE)

    @property
    def in_flight(self) -> int:
        """How many requests are waiting for a reply."""
        return len(self._pending)

    def waiters(self) -> list[T]:
        """The waiters of every request in flight."""
        return list(self._pending.values())

    def statistics(self) -> ClientStatistics:
        """A snapshot of the counters."""
        return ClientStatistics(
            requests_sent=self.requests_sent,
            replies_received=self.replies_received,
            in_flight=len(self._pending),
            timeouts=self.timeouts,
            late_replies=self.late_replies,
            foreign_replies=self.foreign_replies,
            malformed_replies=self.malformed_replies,
            retries=self.retries,
        )
