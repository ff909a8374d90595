"""Load-balancing mode's decisions: which worker gets which request, and what time does.

The rules, in one place; they hold per service (each worker offers one service, ``b""`` by
default, and each request names one):

1. A worker announces itself *ready* with some credits: how many requests it takes at once. A
   request dispatched to it uses one credit; its reply gives the credit back.
2. A request goes to the least-recently-used live worker of its service with a free credit.
3. With no free credit, a request waits in its service's FIFO queue. Past ``queue_limit``
   requests queued in all services together, a new one is refused at once as ``BUSY``; one
   that waited ``queue_timeout`` seconds is refused as ``NO_WORKERS`` if its service has no
   live worker, else as ``BUSY``.
4. A request may carry a deadline. Expired while queued, or while in flight, it is refused as
   ``DEADLINE``; a reply that comes after that is dropped and counted (it still returns the
   worker's credit).
5. Any traffic from a worker proves it alive. One silent for ``liveness`` heartbeat intervals is
   dead (a *patient* worker, one that cannot heartbeat while it works, only when it holds no
   request still waiting for its reply; after a deadline ended one it holds, its silence counts
   from then): it is forgotten, and each request it held is either refused as ``WORKER_DIED``
   (at most once, the default) or, for requests that allow it, queued again ahead of new ones,
   marked as a redelivery, while its retry budget lasts (at least once). A request a part of
   whose streamed reply reached the client is never sent again.
6. The broker sends a worker a heartbeat when it has sent it nothing for one interval.
7. A worker that leaves gracefully takes no new requests; those it holds are treated as in
   rule 5 only if it goes before answering them.

Every request ends exactly once: in one reply, or in one refusal.

Rules 1 to 4 are the :class:`~zmqrelay._core.dispatch.Dispatcher`'s, which this builds on. The
scheduler writes what is to be sent straight into its two outboxes, encoded by the
client's codec (:mod:`zmqrelay._core.frontend`) and the worker's
(:mod:`zmqrelay._core.dialects`); :class:`~zmqrelay._core.balancer.Balancer` reads the sockets'
messages into it and hands the outboxes to the socket loop.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from zmqrelay._core.dialects import Dialect
from zmqrelay._core.dispatch import Dispatcher, ToWorker
from zmqrelay._core.metrics import ERROR, REPLY, ServiceGauges
from zmqrelay._core.refusal import Refusal
from zmqrelay._core.request import Request
from zmqrelay._core.tag import Status
from zmqrelay._core.workers import Service, Worker


class SchedulerStatistics(NamedTuple):
    """A snapshot of the load balancer's state and counters."""

    workers: int
    free_credits: int
    queued: int
    in_flight: int
    delivered: int
    refused: int
    redelivered: int
    late_replies: int
    unknown_replies: int
    dead_workers: int
    services: int = 1
    """Services with a worker or a request (load-balancing mode routes by service)."""
    mmi_requests: int = 0
    """Requests the broker answered itself (service discovery, ``mmi.*``)."""


class Scheduler(Dispatcher):
    """Workers, services, requests in flight and timers; every method takes the time."""

    def __init__(
        self,
        *,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        queue_limit: int = 10_000,
        queue_timeout: float = 5.0,
        first_token: int = 1,
    ) -> None:
        if heartbeat_interval <= 0 or liveness < 1:
            raise ValueError("heartbeat_interval and liveness must be positive")
        super().__init__(
            queue_limit=queue_limit, queue_timeout=queue_timeout, first_token=first_token
        )
        self.heartbeat_interval = heartbeat_interval
        self.silence = heartbeat_interval * liveness
        self._redelivered = 0
        self._dead = 0

    # -- workers ---------------------------------------------------------------------------

    def ready(
        self, worker_id: bytes, dialect: Dialect, service_name: bytes, credits: int, now: float
    ) -> None:
        """A worker offers a service with ``credits``; saying so again resets its credits.

        A worker that registers for another service leaves its old one first (what it held
        there ends, or goes again, as when a worker dies), without being told DISCONNECT.
        """
        worker = self.workers.get(worker_id)
        if worker is not None and (
            worker.service.name != service_name or worker.dialect is not dialect
        ):
            self._forget(worker, now, tell=False)
            worker = None
        if worker is None:
            service = self._service(service_name)
            if self.metrics is not None:
                self.metrics.offer(service_name)
                service.counted = None  # it may have a label of its own now
            worker = Worker(worker_id, dialect, service, credits, now, now, dialect.patient)
            self.workers[worker_id] = worker
            service.workers[worker_id] = worker
            self._schedule(worker)
        else:
            service = worker.service
            worker.credits = max(0, credits - len(worker.held))
            worker.last_heard = now
            worker.leaving = worker.full = False
        if dialect.acknowledged:  # its READY is answered at once, before any request
            self.command(worker_id, dialect, "heartbeat")
            worker.last_sent = now
        worker.update_free()
        self._dispatch_queued(service, now)

    def heartbeat(self, worker: Worker, now: float) -> None:
        """``worker`` sent a heartbeat, so it is alive.

        A patient worker that heartbeats while it works on a request is not patient after
        all: from then on its silence counts, busy or not. "While it works" means at least an
        interval after the request was sent: a heartbeat sent just before the worker saw the
        request (the guide's Majordomo worker sends one right after a reply) proves nothing.
        """
        self.heard_from(worker, now)
        if worker.patient:
            interval = self.heartbeat_interval
            for request in worker.held.values():
                if not request.ended and now - request.sent_at >= interval:
                    worker.patient = False
                    return

    def leave(self, worker: Worker, now: float) -> None:
        """``worker`` takes no new requests; it keeps those it holds until it answers them."""
        worker.last_heard = now  # saying so proves it alive, but frees no credit
        worker.full = False
        worker.leaving = True
        worker.credits = 0
        worker.service.free.pop(worker.id, None)
        if not worker.held:
            self._forget(worker, now)

    def gone(self, worker: Worker, now: float, *, tell: bool = True) -> None:
        """``worker`` is gone: its requests end or go to another worker of its service.

        With ``tell``, it is sent DISCONNECT, in a dialect that has it.
        """
        self._forget(worker, now, tell=tell)

    def full(self, worker_id: bytes, token: bytes, now: float) -> None:
        """A worker's queue could not take request ``token``: it goes to another worker.

        The worker keeps its place and its credit, but gets no request until it is heard from.
        """
        worker = self.workers.get(worker_id)
        request = self._take_back(worker, token, now)
        if worker is not None:
            worker.credits += 1
            worker.full = True
            worker.service.free.pop(worker_id, None)
        if request is not None:
            self._dispatch_queued(self.services[request.service], now)

    def unsent(self, worker_id: bytes, token: bytes, now: float) -> None:
        """Request ``token`` could not be sent to a worker gone unseen.

        The request never left the broker: it goes back to its queue as it was (no
        redelivery is used), and the worker is forgotten.
        """
        worker = self.workers.get(worker_id)
        request = self._take_back(worker, token, now)
        if worker is not None:
            self._forget(worker, now)  # what is still in the outbox for it goes back too
        elif request is not None:
            self._dispatch_queued(self.services[request.service], now)

    # -- replies ---------------------------------------------------------------------------

    def reply(
        self,
        worker: Worker,
        token: bytes,
        status: Status,
        body: list[bytes],
        partial: bool,
        now: float,
    ) -> None:
        """``worker`` answered the request it got as ``token`` (or sent one ``partial`` part)."""
        worker.last_heard = now
        if worker.full:
            self.heard_from(worker, now)
        request = self.in_flight.get(token)
        if request is None or request.worker != worker.id:
            self._unknown += 1
            return
        if partial:
            if request.ended:
                self._late += 1
            else:
                # Sending it again could repeat parts: if its worker dies now, it ends.
                request.redeliveries = 0
                self._deliver(request, status, body, partial=True)
            return
        del self.in_flight[token]
        del worker.held[token]
        if request.ended:
            self._late += 1
        else:
            self._delivered += 1
            request.ended = True
            if self.metrics is not None:
                service = worker.service
                counted = service.counted or self._counted(service)
                counted.outcomes[ERROR if status == Status.ERROR else REPLY] += 1
                counted.duration.observe(now - request.arrived_at)
            self._deliver(request, status, body)
        if not worker.leaving:
            worker.credits += 1
            worker.update_free()
            service = worker.service
            if service.queued:
                self._dispatch_queued(service, now)
        elif not worker.held:  # it was leaving, and this was its last request
            self._forget(worker, now)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Let time pass: dead workers, expired requests, heartbeats due."""
        checked, expired, waited = self.timers.due(now)
        alive: list[Worker] = []
        touched: set[Service] = set()
        for worker in checked:
            # Compared as the timer was armed (a sum), so that a tick at the announced time
            # always finds what it was woken for.
            if worker.judged() and worker.quiet_since() + self.silence <= now:
                touched.add(worker.service)
                self._dead += 1
                self._forget(worker, now, dispatch=False)  # all first: none gets another's
            else:
                alive.append(worker)
        for service in touched:
            self._dispatch_queued(service, now)
        for request in expired:
            if not request.ended:  # a dead worker's request may have ended just above
                self._expire(request, now, Refusal.DEADLINE)
        for request in waited:
            if request.queued:
                service = self.services[request.service]
                self._expire(request, now, Refusal.BUSY if service.workers else Refusal.NO_WORKERS)
        for worker in alive:
            if self.workers.get(worker.id) is worker:
                if worker.last_sent + self.heartbeat_interval <= now:
                    self.command(worker.id, worker.dialect, "heartbeat")
                    worker.last_sent = now
                self._schedule(worker)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do next, if ever."""
        return self.timers.next_wakeup()

    # -- what it knows ---------------------------------------------------------------------

    def statistics(self, mmi_requests: int = 0) -> SchedulerStatistics:
        """A snapshot."""
        return SchedulerStatistics(
            workers=len(self.workers),
            free_credits=sum(worker.credits for worker in self.workers.values()),
            queued=self.queued,
            in_flight=sum(not request.ended for request in self.in_flight.values()),
            delivered=self._delivered,
            refused=self._refused,
            redelivered=self._redelivered,
            late_replies=self._late,
            unknown_replies=self._unknown,
            dead_workers=self._dead,
            services=len(self.services),
            mmi_requests=mmi_requests,
        )

    def gauges(self) -> list[tuple[bytes, ServiceGauges]]:
        """Each service's workers, free credits, queue and requests in flight, now."""
        gauges = []
        for name, service in self.services.items():
            workers = service.workers.values()
            gauges.append(
                (
                    name,
                    ServiceGauges(
                        workers=len(service.workers),
                        credits_free=sum(worker.credits for worker in workers),
                        queued=service.queued,
                        in_flight=sum(
                            not request.ended
                            for worker in workers
                            for request in worker.held.values()
                        ),
                    ),
                )
            )
        return gauges

    # -- internals -------------------------------------------------------------------------

    def _expire(self, request: Request, now: float, reason: Refusal) -> None:
        if request.queued:
            request.queued = False
            service = self.services[request.service]
            service.queued -= 1
            self.queued -= 1
            if request.context and self.waits is not None:
                self.waited(request, now, reason)
            self.refuse(request, reason)
            if len(service.queue) + len(service.again) > 2 * service.queued + 64:
                # What ended while it waited leaves the queues now and then, not only when a
                # worker takes the next request (a service may have none for long).
                service.queue = deque(waiting for waiting in service.queue if waiting.queued)
                service.again = deque(waiting for waiting in service.again if waiting.queued)
            self._retire_if_idle(service)
            return
        # In flight: it ends, but its worker still holds it (and its reply will be late).
        self.refuse(request, reason)
        worker = self.workers.get(request.worker or b"")
        if worker is not None and worker.patient:
            # It may still be at work: its silence counts from now, giving its late reply
            # time to come before it is judged dead.
            worker.grace_from = now
            self._schedule(worker)

    def _forget(
        self, worker: Worker, now: float, *, tell: bool = True, dispatch: bool = True
    ) -> None:
        worker_id, service = worker.id, worker.service
        if self.workers.get(worker_id) is not worker:
            return
        del self.workers[worker_id]
        del service.workers[worker_id]
        worker.check_at = -1.0  # its timer, if any, is skipped when it comes up
        service.free.pop(worker_id, None)
        outbox = self.to_workers
        if outbox:
            # Nothing still in the outbox for it goes out (but its DISCONNECT): the requests
            # there never left the broker, and go back to their queue as they were.
            kept: list[ToWorker] = []
            for entry in outbox:
                if entry[0][0] != worker_id:
                    kept.append(entry)
                elif entry[1] is not None:
                    self._take_back(worker, entry[1], now)
            outbox[:] = kept
        for token in sorted(worker.held):
            request = self.in_flight.pop(token)
            if request.ended:
                continue
            if request.redeliveries > 0:
                request.redeliveries -= 1
                request.redelivery = True
                self._redelivered += 1
                self._requeue(request, now)
            else:
                self.refuse(request, Refusal.WORKER_DIED)
        worker.held.clear()
        if tell:
            self.command(worker_id, worker.dialect, "disconnect")
        if dispatch:
            self._dispatch_queued(service, now)
        else:
            self._retire_if_idle(service)

    def _schedule(self, worker: Worker) -> None:
        """Set when ``worker`` is next looked at (never, for one without heartbeats)."""
        if worker.dialect.heartbeats:
            self.timers.check(worker, worker.next_check(self.heartbeat_interval, self.silence))
