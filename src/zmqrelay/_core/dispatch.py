"""Requests, queues and dispatch: rules 1 to 4 of :mod:`zmqrelay._core.scheduler`.

A :class:`Dispatcher` holds the registered workers, each service's queues and the requests in
flight, and decides which worker gets which request. What workers do besides answering (they
register, fall silent, leave, die) and what time does are the
:class:`~zmqrelay._core.scheduler.Scheduler`'s, built on it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from zmqrelay._core import frontend
from zmqrelay._core.backlog import Backlog
from zmqrelay._core.dialects import Dialect
from zmqrelay._core.metrics import OUTCOME_INDEX, RequestMetrics, ServiceMetrics
from zmqrelay._core.refusal import Refusal
from zmqrelay._core.request import Request
from zmqrelay._core.tag import Status
from zmqrelay._core.timers import Timers
from zmqrelay._core.workers import Service, Worker

ToClient = tuple[list[bytes], Request | None]
"""A message for the frontend ROUTER, and the request when it is one part of a stream."""
ToWorker = tuple[list[bytes], bytes | None]
"""A message for the backend ROUTER (its first frame names the worker), and the token of the
request it dispatches, if it does."""

_OUTCOME_OF = {reason: OUTCOME_INDEX[reason.name.lower()] for reason in Refusal}


class Waited(NamedTuple):
    """How long a request that came with a trace context waited for a worker.

    Recorded only while :attr:`Dispatcher.waits` is a list; the socket loop turns each into a
    span of the request's trace, with these times as its start and end.
    """

    context: bytes
    """The request's trace context frame (:mod:`zmqrelay._core.trace`)."""
    service: bytes
    queued_at: float
    """When it came, or joined the queue again (after its worker died, say)."""
    until: float
    """When a worker got it, or it was refused."""
    redelivery: bool
    """Whether it is going again, to another worker."""
    refusal: Refusal | None = None
    """Why it ended there, if it was refused."""


class Dispatcher:
    """Which worker gets which request; the outboxes it writes, encoded for each peer.

    Requests go to the least recently used worker of their service with a free credit, or wait
    in its queue (rules 1 to 3); their deadlines and queue timeouts are armed in
    :attr:`timers` (rule 4 is carried out when time passes, by the scheduler).
    """

    def __init__(self, *, queue_limit: int, queue_timeout: float, first_token: int) -> None:
        if queue_limit < 0 or queue_timeout < 0:
            raise ValueError("queue_limit and queue_timeout cannot be negative")
        self.queue_limit = queue_limit
        self.queue_timeout = queue_timeout
        self.to_clients: list[ToClient] = []
        self.to_workers: list[ToWorker] = []
        self.workers: dict[bytes, Worker] = {}
        self.services: dict[bytes, Service] = {}
        self.in_flight: dict[bytes, Request] = {}
        self.queued = 0
        self._next_token = first_token % (1 << 64)
        self.timers = Timers(queue_timeout=queue_timeout)
        self.backlog = Backlog(limit=queue_limit)
        self.requests_forwarded = 0
        self.replies_forwarded = 0
        self._delivered = 0
        self._refused = 0
        self._late = 0
        self._unknown = 0
        self.refusals = dict.fromkeys(Refusal, 0)
        """Requests refused so far, by reason."""
        self.metrics: RequestMetrics | None = None
        """Per-service counters, when the broker exposes metrics."""
        self.waits: list[Waited] | None = None
        """The waits of requests with a trace context, when the broker traces them; the
        socket loop takes and clears them."""

    def request(self, request: Request, now: float) -> None:
        """A client asks."""
        self.timers.pending = len(self.in_flight) + self.queued
        deadline = request.deadline
        if deadline is not None and deadline <= now:
            self.refuse(request, Refusal.DEADLINE)
            return
        service = self.services.get(request.service)
        if service is not None and service.free:
            self._dispatch(service, request, now)
        elif self.queued >= self.queue_limit:
            self.refuse(request, Refusal.BUSY)
            return
        else:
            if service is None:
                service = self._service(request.service)
            request.queued = True
            service.queue.append(request)
            service.queued += 1
            self.queued += 1
            self.timers.queued(request)
        if deadline is not None:
            self.timers.deadline(request, deadline, request.timeout or 0.0)

    def heard_from(self, worker: Worker, now: float) -> None:
        """Any message from ``worker`` proves it alive (and able to take requests again)."""
        worker.last_heard = now
        if worker.full:
            worker.full = False
            worker.update_free()
            if worker.service.queued:
                self._dispatch_queued(worker.service, now)

    def command(
        self, worker_id: bytes, dialect: Dialect, which: Literal["heartbeat", "disconnect"]
    ) -> None:
        """Send a worker a HEARTBEAT or DISCONNECT, in a dialect that has them."""
        message = dialect.command(worker_id, which)
        if message is not None:
            self.to_workers.append((message, None))

    def offers(self, service_name: bytes) -> bool:
        """Whether a live worker that is not leaving offers ``service_name``."""
        service = self.services.get(service_name)
        return service is not None and any(
            not worker.leaving for worker in service.workers.values()
        )

    @property
    def pending(self) -> int:
        """Requests queued or in flight, whose client still waits."""
        return self.queued + sum(not request.ended for request in self.in_flight.values())

    @property
    def late_replies(self) -> int:
        """Replies dropped because their request had ended (a deadline passed)."""
        return self._late

    @property
    def unknown_replies(self) -> int:
        """Replies dropped because their worker does not hold their request."""
        return self._unknown

    def reply_unknown(self) -> None:
        """A reply came from a worker that is not registered: it is dropped and counted."""
        self._unknown += 1

    def _service(self, name: bytes) -> Service:
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(name)
        return service

    def _counted(self, service: Service) -> ServiceMetrics:
        assert self.metrics is not None
        counted = service.counted = self.metrics.of(service.name)
        return counted

    def _retire_if_idle(self, service: Service) -> None:
        # A service that holds neither workers nor requests is dropped: requests naming ever
        # new services leave nothing behind once they end.
        if service.workers or service.queued:
            return
        if self.services.get(service.name) is service:
            del self.services[service.name]

    def _dispatch(self, service: Service, request: Request, now: float) -> None:
        free = service.free
        worker = next(iter(free.values()))  # the least recently used
        worker_id = worker.id
        del free[worker_id]
        worker.credits -= 1
        if worker.credits:
            free[worker_id] = worker  # the most recently used end
        token = self._next_token.to_bytes(8, "big")
        self._next_token = (self._next_token + 1) & 0xFFFF_FFFF_FFFF_FFFF
        request.worker, request.token, request.sent_at = worker_id, token, now
        if request.context and self.waits is not None:
            self.waited(request, now)
        worker.held[token] = request
        worker.last_sent = now
        self.in_flight[token] = request
        self.requests_forwarded += 1
        if self.metrics is not None:
            counted = service.counted or self._counted(service)
            counted.queue_wait.observe(now - request.enqueued_at)
        self.to_workers.append((worker.dialect.request(worker_id, request, now), token))

    def _dispatch_queued(self, service: Service, now: float) -> None:
        for waiting in (service.again, service.queue):
            while waiting and service.free:
                request = waiting.popleft()
                if not request.queued:
                    continue  # it ended while it waited
                request.queued = False
                service.queued -= 1
                self.queued -= 1
                if request.deadline is not None and request.deadline <= now:
                    if request.context and self.waits is not None:
                        self.waited(request, now, Refusal.DEADLINE)
                    self.refuse(request, Refusal.DEADLINE)
                else:
                    self._dispatch(service, request, now)
        self._retire_if_idle(service)

    def _take_back(self, worker: Worker | None, token: bytes, now: float) -> Request | None:
        """Request ``token`` never reached its worker: it goes back to its queue.

        It goes as it was (no redelivery is used), and is not counted as forwarded. Returns
        it, if it waits.
        """
        request = self.in_flight.pop(token, None)
        if worker is not None:
            worker.held.pop(token, None)
        if request is None:
            return None
        self.requests_forwarded -= 1
        if request.ended:
            return None
        self._requeue(request, now)
        return request

    def _requeue(self, request: Request, now: float) -> None:
        """``request`` goes again, ahead of new ones."""
        service = self._service(request.service)
        request.worker = None
        request.queued = True
        request.enqueued_at = now
        service.again.append(request)
        service.queued += 1
        self.queued += 1
        self.timers.pending = len(self.in_flight) + self.queued
        self.timers.queued(request)

    def _deliver(
        self, request: Request, status: Status, body: list[bytes], *, partial: bool = False
    ) -> None:
        frames = frontend.reply(request, status, body, partial=partial)
        if frames is not None:
            self.replies_forwarded += 1
            self.to_client(frames, request if partial else None)

    def waited(self, request: Request, now: float, refusal: Refusal | None = None) -> None:
        """Record how long ``request`` waited, until ``now`` (see :attr:`waits`)."""
        assert self.waits is not None
        self.waits.append(
            Waited(
                request.context,
                request.service,
                request.enqueued_at,
                now,
                request.redelivery,
                refusal,
            )
        )

    def refuse(self, request: Request, reason: Refusal) -> None:
        """End ``request`` at once with the refusal ``reason``."""
        self._refused += 1
        self.refusals[reason] += 1
        request.ended = True
        metrics = self.metrics
        if metrics is not None:
            metrics.of(request.service).outcomes[_OUTCOME_OF[reason]] += 1
        self.to_client(frontend.refusal(request, reason), None)

    def to_client(self, frames: list[bytes], stream: Request | None) -> None:
        """Send a client ``frames``: behind what waits for it, if anything does."""
        backlog = self.backlog
        if backlog and backlog.holds(frames[0]):
            backlog.add((frames, stream))
        else:
            self.to_clients.append((frames, stream))
