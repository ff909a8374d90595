r"""The clients' side of a load-balancing broker: requests read off the frontend, and answers.

==============  ==============================================  ===========================
client          request (after the client's id)                  reply
==============  ==============================================  ===========================
plain           ``hop..., "", body...`` (the default service)    ``hop..., "", body...``
zmqrelay        a plain request whose last hop is a zmqrelay     the same, the tag's status
                :mod:`tag <zmqrelay._core.tag>`                  saying how it ended
``mdp-0.1``     ``hop..., "", MDPC01, service, body...``         ``..., "", MDPC01, service,
                                                                 body...``
``mdp-0.2``     ``MDPC02, 0x01, service, body...``               ``MDPC02, PARTIAL 0x02 |
                                                                 FINAL 0x03, service, ...``
``majortomo``   ``hop..., "", MDPC02, 0x02, service, body...``   ``..., "", MDPC02, PARTIAL
                                                                 0x03 | FINAL 0x04, body...``
==============  ==============================================  ===========================

A zmqrelay tag also says how long the client waits and how many redeliveries it allows; a
trace context frame (:mod:`zmqrelay._core.trace`) may come just before it, which the broker
takes out of the envelope and hands only to workers that take it. Error
replies and refusals reach zmqrelay clients as a status in the tag, and others as one frame
(:func:`~zmqrelay._core.worker.plain_error_reply`). Parts of a streamed reply reach zmqrelay,
MDP/0.2 and majortomo clients as they come; other clients get them joined into one reply.
"""

from __future__ import annotations

from zmqrelay._core import mdp, tag, trace
from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.mdp import CLIENT_01, CLIENT_02
from zmqrelay._core.refusal import Refusal
from zmqrelay._core.request import ClientDialect, Request
from zmqrelay._core.worker import decode_error, plain_error_reply

_TAG_PREFIX = tag.MAGIC + bytes([tag.VERSION])
_STATUS_COUNT = len(tag.Status)
_REQUEST_02, _PARTIAL_02, _FINAL_02 = mdp.CLIENT_COMMANDS["mdp-0.2"]
_REQUEST_MAJORTOMO, _PARTIAL_MAJORTOMO, _FINAL_MAJORTOMO = mdp.CLIENT_COMMANDS["majortomo"]

MAX_HELD_BYTES = 64 * 1024 * 1024
"""The most a streamed reply may hold back for a client that takes one reply."""
LOST_PARTS = "part of the streamed reply was lost: the client's queue was full"
TOO_LARGE = f"the streamed reply grew past {MAX_HELD_BYTES} bytes, too large to join"


def read_request(
    frames: list[bytes], now: float, *, request_timeout: float | None, redeliveries: int
) -> Request | None:
    """The request a frontend message carries, or ``None`` when it is in no dialect.

    Its deadline is the client's timeout, else ``request_timeout``; its redeliveries, the
    larger of the client's and the broker's.
    """
    dialect: ClientDialect
    if len(frames) >= 5 and frames[1] == CLIENT_02 and frames[2] == _REQUEST_02:
        envelope, dialect, service, body = frames[:1], "mdp-0.2", frames[3], frames[4:]
    else:
        try:
            index = frames.index(DELIMITER, 1)
        except ValueError:
            return None
        envelope, body = frames[:index], frames[index + 1 :]
        if not body:
            return None
        header = body[0]
        if header == CLIENT_01:
            if len(body) < 3:
                return None
            dialect, service, body = "mdp-0.1", body[1], body[2:]
        elif header == CLIENT_02:
            if len(body) < 4 or body[1] != _REQUEST_MAJORTOMO:
                return None
            dialect, service, body = "majortomo", body[2], body[3:]
        else:
            dialect, service = "plain", b""
    timeout, allowed, tagged, context = request_timeout, redeliveries, False, b""
    # The last hop may be a tag, but never the client's own id, however much it looks like one.
    if len(envelope) > 1:
        last = envelope[-1]
        # tag.decode's rules, read in place: a request needs no Tag object.
        if len(last) == tag.SIZE and last.startswith(_TAG_PREFIX) and last[3] < _STATUS_COUNT:
            tagged = True
            milliseconds = int.from_bytes(last[12:16], "big")
            if milliseconds:
                timeout = milliseconds / 1000
            if last[16] > allowed:
                allowed = last[16]
            # A trace context before the tag (after the client's id) travels apart from the
            # envelope: to a worker that takes it, and never back to the client.
            if len(envelope) > 2 and trace.is_context(envelope[-2]):
                context = envelope[-2]
                envelope = [*envelope[:-2], last]
    request = Request(
        envelope,
        body,
        service,
        dialect,
        tagged,
        timeout,
        None if timeout is None else now + timeout,
        allowed,
        now,
        now,
    )
    if context:
        request.context = context
    return request


def streams(dialect: ClientDialect) -> bool:
    """Whether a client of ``dialect`` takes PARTIAL replies (else parts are joined into one)."""
    return dialect == "mdp-0.2" or dialect == "majortomo"


def answer(request: Request, body: list[bytes], *, partial: bool = False) -> list[bytes]:
    """The frames carrying ``body`` to the client, in its dialect (its tag as it came)."""
    return _encode(request.dialect, request.envelope, request.service, body, partial)


def _encode(
    dialect: ClientDialect,
    envelope: list[bytes],
    service: bytes,
    body: list[bytes],
    partial: bool,
) -> list[bytes]:
    if dialect == "plain":
        return [*envelope, DELIMITER, *body]
    if dialect == "mdp-0.1":
        return [*envelope, DELIMITER, CLIENT_01, service, *body]
    if dialect == "mdp-0.2":
        command = _PARTIAL_02 if partial else _FINAL_02
        return [*envelope, CLIENT_02, command, service, *body]
    command = _PARTIAL_MAJORTOMO if partial else _FINAL_MAJORTOMO
    return [*envelope, DELIMITER, CLIENT_02, command, *body]


def reply(
    request: Request, status: tag.Status, body: list[bytes], *, partial: bool = False
) -> list[bytes] | None:
    """A worker's reply (``status`` OK or ERROR) or one ``partial`` part of it, for the client.

    ``None`` when nothing is to be sent now: a part the client cannot take alone is kept, and
    sent with the rest; a part of a reply that cannot reach the client whole (see
    :attr:`Request.broken`) is dropped, and the final part is replaced by a ``BUSY`` refusal
    saying why: a client never gets a stream with a gap as if it were whole.
    """
    if request.broken:
        return None if partial else refusal(request, Refusal.BUSY, request.broken)
    tagged = request.tagged
    if partial and not tagged and not streams(request.dialect):
        if request.parts is None:
            request.parts = []
        request.parts.extend(body)
        request.held_bytes += sum(map(len, body))
        if request.held_bytes > MAX_HELD_BYTES:
            request.parts = None
            request.broken = TOO_LARGE
        return None
    if request.parts and not status:
        body = [*request.parts, *body]
        request.parts = None
    if tagged:
        marked = tag.Status.PARTIAL if partial else status
        if marked:
            return _with_status(request, marked, body, partial=partial)
    elif status:
        body = [plain_error_reply(*decode_error(body))]
    return answer(request, body, partial=partial)


def refusal(request: Request, reason: Refusal, detail: str = "") -> list[bytes]:
    """What tells the client why its request ended without a reply (``detail``: more on why)."""
    message = f"the broker refused the request: {detail or reason.text}"
    if request.service:
        message += f" (service {request.service.decode('utf-8', 'replace')!r})"
    if request.tagged:
        return _with_status(request, reason.status, [message.encode()])
    return answer(request, [plain_error_reply(reason.error.__name__, message)])


def _with_status(
    request: Request, status: tag.Status, body: list[bytes], *, partial: bool = False
) -> list[bytes]:
    envelope = request.envelope
    marked = [*envelope[:-1], tag.with_status(envelope[-1], status)]
    return _encode(request.dialect, marked, request.service, body, partial)
