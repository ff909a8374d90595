"""Why a load-balancing broker ends a request without a reply: one table, every spelling.

Each :class:`Refusal` carries how it travels and how it is told: the status a zmqrelay client
reads in the reply's tag, the exception the client raises (whose name plain clients read in a
``zmqrelay-error:`` frame), and the words of the message.
"""

from __future__ import annotations

import enum

from zmqrelay._core.tag import Status
from zmqrelay.errors import (
    BrokerBusy,
    DeadlineExceeded,
    Forbidden,
    NoWorkers,
    RequestRefused,
    WorkerDied,
)


class Refusal(enum.Enum):
    """Why a request ended without a reply."""

    BUSY = (Status.BUSY, BrokerBusy, "busy")
    """The queue was full, or the request waited too long for a free worker."""
    NO_WORKERS = (Status.NO_WORKERS, NoWorkers, "no workers")
    """No live worker could take the request in time."""
    DEADLINE = (Status.DEADLINE, DeadlineExceeded, "deadline")
    """The request's deadline passed."""
    WORKER_DIED = (Status.WORKER_DIED, WorkerDied, "worker died")
    """The worker holding the request died, and the request may not be sent again."""
    FORBIDDEN = (Status.FORBIDDEN, Forbidden, "forbidden")
    """The authorisation policy does not let the client call the service."""

    def __init__(self, status: Status, error: type[RequestRefused], text: str) -> None:
        self.status = status
        """The status in the tag of a zmqrelay client's reply."""
        self.error = error
        """The exception a client raises."""
        self.text = text
        """What the refusal's message says, when nothing more precise is known."""


BY_STATUS: dict[Status, Refusal] = {refusal.status: refusal for refusal in Refusal}
"""The refusal a tag's status stands for."""
BY_ERROR_NAME: dict[str, Refusal] = {refusal.error.__name__: refusal for refusal in Refusal}
"""The refusal a plain error frame's type name stands for."""
