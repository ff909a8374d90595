"""What load-balancing mode keeps of its workers: each worker, and each service's workers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from zmqrelay._core.dialects import Dialect
from zmqrelay._core.request import Request


@dataclass(slots=True, eq=False)
class Worker:
    """A registered worker."""

    id: bytes
    dialect: Dialect
    service: Service
    credits: int
    last_heard: float
    last_sent: float
    patient: bool
    held: dict[bytes, Request] = field(default_factory=dict)
    """Requests sent to it and not answered, by token (some perhaps ended by a deadline)."""
    grace_from: float = 0.0
    """For a patient worker: when a deadline last ended a request it holds."""
    leaving: bool = False
    full: bool = False
    """Its socket queue took no more: it gets no request until it is heard from."""
    check_at: float = 0.0
    """When its liveness and heartbeat are next looked at."""


@dataclass(slots=True, eq=False)
class Service:
    """The workers of one service and the requests waiting for them."""

    name: bytes
    workers: dict[bytes, Worker] = field(default_factory=dict)
    free: dict[bytes, Worker] = field(default_factory=dict)
    """Workers with a free credit, least recently used first."""
    queue: deque[Request] = field(default_factory=deque)
    again: deque[Request] = field(default_factory=deque)
    """Requests going again (their worker died, or could not take them): before new ones."""
    queued: int = 0
    """Requests in the two queues still waiting (the queues may hold some that ended)."""
