"""What load-balancing mode keeps of its workers: each worker, and each service's workers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from zmqrelay._core.dialects import Dialect
from zmqrelay._core.metrics import ServiceMetrics
from zmqrelay._core.request import Request


@dataclass(slots=True, eq=False)
class Worker:
    """A registered worker."""

    id: bytes
    dialect: Dialect
    service: Service = field(repr=False)
    credits: int
    last_heard: float
    last_sent: float
    patient: bool
    held: dict[bytes, Request] = field(default_factory=dict, repr=False)
    """Requests sent to it and not answered, by token (some perhaps ended by a deadline)."""
    grace_from: float = 0.0
    """For a patient worker: when a deadline last ended a request it holds."""
    leaving: bool = False
    full: bool = False
    """Its socket queue took no more: it gets no request until it is heard from."""
    check_at: float = 0.0
    """When its liveness and heartbeat are next looked at."""

    def judged(self) -> bool:
        """Whether its silence counts now (for a patient worker, only while idle)."""
        return not self.patient or all(request.ended for request in self.held.values())

    def quiet_since(self) -> float:
        """Since when its silence counts."""
        return max(self.last_heard, self.grace_from)

    def next_check(self, heartbeat_interval: float, silence: float) -> float:
        """When it is next due a heartbeat, or to be judged dead if it stays silent."""
        when = self.last_sent + heartbeat_interval
        return min(when, self.quiet_since() + silence) if self.judged() else when

    def update_free(self) -> None:
        """Put it among its service's free workers, or take it out, by its credits."""
        free = self.service.free
        if self.credits > 0 and not self.leaving and not self.full:
            if self.id not in free:
                free[self.id] = self  # newly free: the most recently used end
        else:
            free.pop(self.id, None)


@dataclass(slots=True, eq=False)
class Service:
    """The workers of one service and the requests waiting for them."""

    name: bytes
    workers: dict[bytes, Worker] = field(default_factory=dict, repr=False)
    free: dict[bytes, Worker] = field(default_factory=dict, repr=False)
    """Workers with a free credit, least recently used first."""
    queue: deque[Request] = field(default_factory=deque, repr=False)
    again: deque[Request] = field(default_factory=deque, repr=False)
    """Requests going again (their worker died, or could not take them): before new ones."""
    queued: int = 0
    """Requests in the two queues still waiting (the queues may hold some that ended)."""
    counted: ServiceMetrics | None = field(default=None, repr=False)
    """Where its requests are counted, once looked up (when the broker keeps metrics)."""
