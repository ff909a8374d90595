"""Load-balancing mode, the clients' side: requests read from the frontend, and what goes back.

A plain request is ``[client id, hop..., b"", body...]`` for the default service; Majordomo
clients name a service (:func:`zmqrelay._core.mdp.decode_client`). When the innermost hop of
the envelope is a zmqrelay tag, the tag says how long the client waits and how many
redeliveries it allows. Replies retrace the envelope in the client's dialect; error replies and
refusals travel as a status in the tag for zmqrelay clients, and as one documented frame
(:func:`~zmqrelay._core.worker.plain_error_reply`) for the others. Parts of a streamed reply
reach zmqrelay and MDP/0.2 clients as they come; other clients get them joined into one reply.
"""

from __future__ import annotations

from typing import NamedTuple

from zmqrelay._core import mdp, tag
from zmqrelay._core.scheduler import Refusal, Request
from zmqrelay._core.worker import decode_error, plain_error_reply
from zmqrelay.errors import RemoteProtocolError

_STATUS = {
    Refusal.BUSY: tag.Status.BUSY,
    Refusal.NO_WORKERS: tag.Status.NO_WORKERS,
    Refusal.DEADLINE: tag.Status.DEADLINE,
    Refusal.WORKER_DIED: tag.Status.WORKER_DIED,
}
_ERROR_NAME = {
    Refusal.BUSY: "BrokerBusy",
    Refusal.NO_WORKERS: "NoWorkers",
    Refusal.DEADLINE: "DeadlineExceeded",
    Refusal.WORKER_DIED: "WorkerDied",
}


def _tag(envelope: list[bytes]) -> tag.Tag | None:
    """The zmqrelay tag ending ``envelope``, if any.

    Never the client's own id (the first frame), however much that looks like a tag.
    """
    return tag.decode(envelope[-1]) if len(envelope) > 1 else None


class ClientRequest(NamedTuple):
    """A request as the scheduler takes it."""

    envelope: list[bytes]
    body: list[bytes]
    deadline: float | None
    retries: int
    service: bytes = b""
    dialect: mdp.ClientDialect = "plain"


def read_request(
    frames: list[bytes], now: float, *, request_timeout: float | None, redeliveries: int
) -> ClientRequest | None:
    """Decode a frontend message, or ``None`` when it is malformed (in no dialect).

    The deadline is the client's timeout, else ``request_timeout``; the redeliveries, the larger
    of the client's and the broker's.
    """
    try:
        message = mdp.decode_client(frames)
    except RemoteProtocolError:
        return None
    timeout, retries = request_timeout, redeliveries
    asked = _tag(message.envelope)
    if asked is not None:
        timeout = asked.timeout if asked.timeout is not None else timeout
        retries = max(retries, asked.redeliveries)
    deadline = None if timeout is None else now + timeout
    return ClientRequest(
        message.envelope, message.body, deadline, retries, message.service, message.dialect
    )


def _dialect(request: Request) -> mdp.ClientDialect:
    # The scheduler keeps the dialect as read_request found it: a variant, or "plain".
    variant = mdp.as_variant(request.dialect)
    return "plain" if variant is None else variant


MAX_HELD_BYTES = 64 * 1024 * 1024
"""The most a streamed reply may hold back for a client that takes one reply."""
LOST_PARTS = "part of the streamed reply was lost: the client's queue was full"
TOO_LARGE = f"the streamed reply grew past {MAX_HELD_BYTES} bytes, too large to join"


def reply_frames(
    request: Request, status: int, body: list[bytes], *, partial: bool = False
) -> list[bytes] | None:
    """A worker's reply (``status`` OK or ERROR, body as the worker sent it) for the client.

    ``None`` when nothing is to be sent now: a part the client cannot take alone is kept, and
    sent with the rest; a part of a reply that cannot reach the client whole (see
    :attr:`Request.broken`) is dropped, and the final part is replaced by a ``BUSY`` refusal
    saying why: a client never gets a stream with a gap as if it were whole.
    """
    if request.broken:
        if partial:
            return None
        return refusal_frames(request, Refusal.BUSY, request.broken)
    envelope, dialect = request.envelope, _dialect(request)
    tagged = _tag(envelope) is not None
    if partial and not (tagged or mdp.streams(dialect)):
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
        marked = tag.Status.PARTIAL if partial else tag.Status(status)
        if marked:
            envelope = [*envelope[:-1], tag.with_status(envelope[-1], marked)]
    elif status:
        body = [plain_error_reply(*decode_error(body))]
    return mdp.encode_client_reply(envelope, dialect, request.service, body, partial=partial)


def refusal_frames(request: Request, reason: Refusal, detail: str = "") -> list[bytes]:
    """What tells the client why its request ended without a reply (``detail``: more on why)."""
    envelope, dialect = request.envelope, _dialect(request)
    message = f"the broker refused the request: {detail or reason.value}"
    if request.service:
        message += f" (service {request.service.decode('utf-8', 'replace')!r})"
    if _tag(envelope) is not None:
        marked = tag.with_status(envelope[-1], _STATUS[reason])
        body = [message.encode()]
        envelope = [*envelope[:-1], marked]
    else:
        body = [plain_error_reply(_ERROR_NAME[reason], message)]
    return mdp.encode_client_reply(envelope, dialect, request.service, body)
