"""Named services: one :class:`~zmqrelay._core.scheduler.Scheduler` per service name.

Each worker offers one service (``b""`` is the default service, for workers and clients that
name none); each request names one. Everything the scheduler does (credits, the least recently
used worker, the bounded queue, deadlines, liveness, heartbeats, redelivery) therefore applies
per service. A request for a service no live worker offers waits in that service's queue, and
ends as ``NO_WORKERS`` after the queue timeout if none comes.

The ``mmi.`` namespace is the broker's own (spec 8/MMI): such requests are answered at once,
and are never queued. A service that holds neither workers nor requests is dropped, so that
requests naming ever new services leave nothing behind once they end (``queue_limit`` bounds
each service's queue, and ``queue_timeout`` how long a request waits in it).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from functools import partial

from zmqrelay._core import mdp
from zmqrelay._core.scheduler import (
    Action,
    Deliver,
    Forget,
    Refusal,
    Refuse,
    Request,
    Scheduler,
    SchedulerStatistics,
    WorkerId,
)

# Apart enough that tokens of two services never meet, should a reply reach the wrong one.
_TOKEN_STRIDE = 1 << 40


class Services:
    """Load-balancing state for every service; the methods mirror the scheduler's."""

    def __init__(
        self,
        *,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        queue_limit: int = 10_000,
        queue_timeout: float = 5.0,
        first_token: int = 1,
    ) -> None:
        # Checks the settings once, and is the pattern every service's scheduler copies.
        self._template = Scheduler(
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
        )
        self._schedulers: dict[bytes, Scheduler] = {}
        self._service_of: dict[WorkerId, bytes] = {}
        self._next_token = first_token
        # Counters kept outside the live schedulers: those of services since dropped, and of
        # requests refused before reaching one.
        self._outside = SchedulerStatistics(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, services=0)
        self._queued = 0  # requests waiting, in all services
        # When each service's scheduler next has something to do, in a heap (with stale
        # entries, skipped), kept up to date for the services touched since it was last read:
        # a loop turn costs what changed, not what exists.
        self._wakes: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._dirty: set[bytes] = set()
        self.mmi_requests = 0

    def _scheduler(self, service: bytes) -> Scheduler:
        scheduler = self._schedulers.get(service)
        if scheduler is None:
            template = self._template
            scheduler = Scheduler(
                heartbeat_interval=template.heartbeat_interval,
                liveness=template.liveness,
                queue_limit=template.queue_limit,
                queue_timeout=template.queue_timeout,
                first_token=self._next_token,
            )
            self._next_token = (self._next_token + _TOKEN_STRIDE) % (1 << 64)
            self._schedulers[service] = scheduler
        return scheduler

    def _of(self, worker: WorkerId) -> tuple[bytes, Scheduler] | None:
        service = self._service_of.get(worker)
        if service is None:
            return None
        return service, self._schedulers[service]

    def _run(
        self, service: bytes, scheduler: Scheduler, call: Callable[[], list[Action]]
    ) -> list[Action]:
        """Call one of ``scheduler``'s methods, and keep the books on what it changed."""
        before = scheduler.queued
        return self._books(service, scheduler, before, call())

    def _books(
        self, service: bytes, scheduler: Scheduler, before: int, actions: list[Action]
    ) -> list[Action]:
        """Keep the books on what a call of ``scheduler`` changed (``before``: its queue)."""
        self._queued += scheduler.queued - before
        self._dirty.add(service)
        for action in actions:
            if isinstance(action, Forget):
                self._service_of.pop(action.worker, None)
        if scheduler.idle() and self._schedulers.get(service) is scheduler:
            self._retire(service, scheduler)
        return actions

    def _retire(self, service: bytes, scheduler: Scheduler) -> None:
        # Keep its counters: statistics count since the broker started, not per life of a service.
        gone = scheduler.statistics()
        retired = self._outside
        self._outside = retired._replace(
            delivered=retired.delivered + gone.delivered,
            refused=retired.refused + gone.refused,
            redelivered=retired.redelivered + gone.redelivered,
            late_replies=retired.late_replies + gone.late_replies,
            unknown_replies=retired.unknown_replies + gone.unknown_replies,
            dead_workers=retired.dead_workers + gone.dead_workers,
        )
        del self._schedulers[service]
        self._wakes.pop(service, None)

    def _of_worker(
        self, worker: WorkerId, call: Callable[[Scheduler], list[Action]]
    ) -> list[Action]:
        """Call ``worker``'s scheduler (nothing happens for a worker not registered)."""
        found = self._of(worker)
        if found is None:
            return []
        service, scheduler = found
        return self._run(service, scheduler, lambda: call(scheduler))

    # -- workers ---------------------------------------------------------------------------

    def is_known(self, worker: WorkerId) -> bool:
        """Whether ``worker`` is a live, registered worker."""
        return worker in self._service_of

    def service_of(self, worker: WorkerId) -> bytes | None:
        """The service ``worker`` offers, if it is registered."""
        return self._service_of.get(worker)

    def ready(
        self,
        worker: WorkerId,
        service: bytes,
        credits: int,
        now: float,
        *,
        heartbeats: bool = True,
        patient: bool = False,
    ) -> list[Action]:
        """``worker`` offers ``service`` with ``credits``; saying so again resets its credits.

        ``heartbeats`` and ``patient`` are as for :meth:`Scheduler.ready`.

        A worker that registers for another service leaves its old one first (what it held
        there ends, or goes again, as when a worker dies).

        Raises:
            ValueError: ``service`` is an ``mmi.`` name, or ``credits`` is below one.
        """
        if mdp.is_mmi(service):
            raise ValueError("workers may not offer mmi.* services")
        moved: list[Action] = []
        found = self._of(worker)
        if found is not None and found[0] != service:
            # It leaves its old service, but it is not forgotten: no Forget reaches the shell
            # (which would tell it DISCONNECT), and none may unregister it from the new one.
            moved = [
                action
                for action in self.gone(worker, now)
                if not (isinstance(action, Forget) and action.worker == worker)
            ]
        scheduler = self._scheduler(service)
        self._service_of[worker] = service
        actions = self._run(
            service,
            scheduler,
            lambda: scheduler.ready(worker, credits, now, heartbeats=heartbeats, patient=patient),
        )
        return [*moved, *actions]

    def heard_from(self, worker: WorkerId, now: float) -> None:
        """Any message from ``worker`` proves it alive."""
        found = self._of(worker)
        if found is not None:
            found[1].heard_from(worker, now)
            self._dirty.add(found[0])

    def heartbeat(self, worker: WorkerId, now: float) -> None:
        """``worker`` sent a heartbeat (see :meth:`Scheduler.heartbeat`)."""
        found = self._of(worker)
        if found is not None:
            found[1].heartbeat(worker, now)
            self._dirty.add(found[0])

    def holds(self, worker: WorkerId, token: int) -> bool:
        """Whether ``worker`` is still to be sent, or to answer, request ``token``."""
        found = self._of(worker)
        return found is not None and found[1].holds(worker, token)

    def reply(
        self,
        worker: WorkerId,
        token: int,
        body: list[bytes],
        now: float,
        *,
        status: int = 0,
        partial: bool = False,
    ) -> list[Action]:
        """``worker`` answered request ``token`` (a ``partial`` answer: one part of it)."""
        found = self._of(worker)
        if found is None:
            self._outside = self._outside._replace(
                unknown_replies=self._outside.unknown_replies + 1
            )
            return []
        service, scheduler = found
        if partial:
            return self._run(
                service, scheduler, lambda: scheduler.partial(worker, token, body, now)
            )
        before = scheduler.queued  # as _run does, without a closure on this hot path
        actions = scheduler.reply(worker, token, body, now, status=status)
        return self._books(service, scheduler, before, actions)

    def leave(self, worker: WorkerId, now: float) -> list[Action]:
        """``worker`` takes no new requests."""
        return self._of_worker(worker, lambda scheduler: scheduler.leave(worker, now))

    def gone(self, worker: WorkerId, now: float) -> list[Action]:
        """``worker`` is gone: its requests end or go to another worker of its service."""
        return self._of_worker(worker, lambda scheduler: scheduler.gone(worker, now))

    def full(self, worker: WorkerId, token: int, now: float) -> list[Action]:
        """``worker``'s queue could not take request ``token``."""
        return self._of_worker(worker, lambda scheduler: scheduler.full(worker, token, now))

    def unsent(self, worker: WorkerId, token: int, now: float) -> list[Action]:
        """Request ``token`` could not be sent to ``worker``, which is gone."""
        return self._of_worker(worker, lambda scheduler: scheduler.unsent(worker, token, now))

    def sent_to(self, worker: WorkerId, now: float) -> None:
        """Something was sent to ``worker`` (counts as a heartbeat)."""
        found = self._of(worker)
        if found is not None:
            found[1].sent_to(worker, now)
            self._dirty.add(found[0])

    # -- requests --------------------------------------------------------------------------

    def offers(self, service: bytes) -> bool:
        """Whether a live worker offers ``service`` now."""
        scheduler = self._schedulers.get(service)
        return scheduler is not None and scheduler.offers()

    def request(
        self,
        service: bytes,
        envelope: list[bytes],
        body: list[bytes],
        now: float,
        *,
        deadline: float | None = None,
        retries: int = 0,
        dialect: str = "plain",
    ) -> list[Action]:
        """A client asks ``service``; ``mmi.`` services are answered at once."""
        if mdp.is_mmi(service):
            self.mmi_requests += 1
            asked = body[0] if body else b""
            request = Request(envelope, body, now, service=service, dialect=dialect, ended=True)
            return [Deliver(request, mdp.mmi_reply(service, self.offers(asked)))]
        if self._queued >= self._template.queue_limit and not self.offers_free(service):
            # The queue limit holds for all services together, so that requests naming ever
            # new services cannot pile up without bound.
            request = Request(envelope, body, now, service=service, dialect=dialect, ended=True)
            self._outside = self._outside._replace(refused=self._outside.refused + 1)
            return [Refuse(request, Refusal.BUSY)]
        scheduler = self._scheduler(service)
        before = scheduler.queued  # as _run does, without a closure on this hot path
        actions = scheduler.request(
            envelope,
            body,
            now,
            deadline=deadline,
            retries=retries,
            service=service,
            dialect=dialect,
        )
        return self._books(service, scheduler, before, actions)

    def offers_free(self, service: bytes) -> bool:
        """Whether a worker of ``service`` could take a request at once."""
        scheduler = self._schedulers.get(service)
        return scheduler is not None and scheduler.has_free_worker()

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Let time pass in the services that have something to do by ``now``."""
        self._settle()
        heap, wakes = self._heap, self._wakes
        due: list[bytes] = []
        while heap and heap[0][0] <= now:
            when, service = heapq.heappop(heap)
            if wakes.get(service) == when:
                del wakes[service]
                due.append(service)
        actions: list[Action] = []
        for service in due:
            scheduler = self._schedulers.get(service)
            if scheduler is not None:
                actions.extend(self._run(service, scheduler, partial(scheduler.tick, now)))
        return actions

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do next, if ever."""
        self._settle()
        heap, wakes = self._heap, self._wakes
        while heap and wakes.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: that service's time changed since
        return heap[0][0] if heap else None

    def _settle(self) -> None:
        """Bring the wake-up times of the services touched since up to date."""
        heap, wakes = self._heap, self._wakes
        for service in self._dirty:
            scheduler = self._schedulers.get(service)
            when = None if scheduler is None else scheduler.next_wakeup()
            if when is None:
                wakes.pop(service, None)
            elif wakes.get(service) != when:
                wakes[service] = when
                heapq.heappush(heap, (when, service))
        self._dirty.clear()
        if len(heap) > 2 * len(wakes) + 1024:  # mostly stale entries: start afresh
            heap[:] = [(when, service) for service, when in wakes.items()]
            heapq.heapify(heap)

    def statistics(self) -> SchedulerStatistics:
        """The sum over services (counters include services since dropped)."""
        total = self._outside
        for scheduler in self._schedulers.values():
            one = scheduler.statistics()
            total = SchedulerStatistics._make(a + b for a, b in zip(total, one, strict=True))
        return total._replace(services=len(self._schedulers), mmi_requests=self.mmi_requests)
