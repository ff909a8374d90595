"""A request, from the moment a load-balancing broker reads it to the moment it ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ClientDialect = Literal["plain", "mdp-0.1", "mdp-0.2", "majortomo"]
"""How a client speaks (:mod:`zmqrelay._core.frontend`); zmqrelay's clients speak ``plain``
with a tag."""


@dataclass(slots=True, eq=False)
class Request:
    """One request and everything the broker knows of it.

    Every request ends exactly once: in one reply, or in one refusal (:attr:`ended`).
    """

    envelope: list[bytes]
    """What routes the answer back: the client's id, any hops, a zmqrelay tag."""
    body: list[bytes]
    service: bytes
    dialect: ClientDialect
    tagged: bool
    """Whether the envelope ends with a zmqrelay tag (the client reads statuses)."""
    timeout: float | None
    """How long its client waits; its deadline is this long after it came."""
    deadline: float | None
    redeliveries: int
    """Times it may still be sent again if its worker dies."""
    enqueued_at: float
    """When it last joined a queue (the queue timeout counts from then)."""
    arrived_at: float = 0.0
    """When the broker read it."""
    redelivery: bool = False
    """Whether a worker held it before and died."""
    ended: bool = False
    queued: bool = False
    worker: bytes | None = None
    """The worker holding it, while it is in flight (even once ended by its deadline)."""
    token: bytes = b""
    """The reply-to frame its worker answers with."""
    sent_at: float = 0.0
    parts: list[bytes] | None = None
    """Parts of a streamed reply held back for a client that takes one reply."""
    held_bytes: int = 0
    broken: str = ""
    """Why the rest of a streamed reply cannot reach the client whole."""
    context: bytes = b""
    """The trace context frame its zmqrelay client sent (:mod:`zmqrelay._core.trace`), taken
    out of :attr:`envelope`; ``b""`` if none."""
