"""Load-balancing mode, the clients' side: requests read from the frontend, and what goes back.

A request is ``[client id, hop..., b"", body...]``; when its innermost hop is a zmqrelay tag, the
tag says how long the client waits and how many redeliveries it allows. Replies retrace the
envelope; error replies and refusals travel as a status in the tag for zmqrelay clients, and as
one documented frame (:func:`~zmqrelay._core.worker.plain_error_reply`) for plain ones.
"""

from __future__ import annotations

from typing import NamedTuple

from zmqrelay._core import tag
from zmqrelay._core.client import decode_error
from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.scheduler import Refusal
from zmqrelay._core.worker import plain_error_reply

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


class ClientRequest(NamedTuple):
    """A request as the scheduler takes it."""

    envelope: list[bytes]
    body: list[bytes]
    deadline: float | None
    retries: int


def read_request(
    frames: list[bytes], now: float, *, request_timeout: float | None, redeliveries: int
) -> ClientRequest | None:
    """Decode a frontend message, or ``None`` when it has no envelope (delimiter and body).

    The deadline is the client's timeout, else ``request_timeout``; the redeliveries, the larger
    of the client's and the broker's.
    """
    try:
        index = frames.index(DELIMITER, 1)
    except ValueError:
        return None
    if index == len(frames) - 1:
        return None
    timeout, retries = request_timeout, redeliveries
    asked = tag.decode(frames[index - 1])
    if asked is not None:
        timeout = asked.timeout if asked.timeout is not None else timeout
        retries = max(retries, asked.redeliveries)
    deadline = None if timeout is None else now + timeout
    return ClientRequest(frames[:index], frames[index + 1 :], deadline, retries)


def reply_frames(envelope: list[bytes], status: int, body: list[bytes]) -> list[bytes]:
    """A worker's reply (``status`` OK or ERROR, body as the worker sent it) for the client."""
    if not status:
        return [*envelope, DELIMITER, *body]
    if tag.decode(envelope[-1]) is not None:
        marked = tag.with_status(envelope[-1], tag.Status(status))
        return [*envelope[:-1], marked, DELIMITER, *body]
    return [*envelope, DELIMITER, plain_error_reply(*decode_error(body))]


def refusal_frames(envelope: list[bytes], reason: Refusal) -> list[bytes]:
    """What tells the client why its request ended without a reply."""
    message = f"the broker refused the request: {reason.value}"
    if tag.decode(envelope[-1]) is not None:
        marked = tag.with_status(envelope[-1], _STATUS[reason])
        return [*envelope[:-1], marked, DELIMITER, message.encode()]
    return [*envelope, DELIMITER, plain_error_reply(_ERROR_NAME[reason], message)]
