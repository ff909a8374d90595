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

from zmqrelay._core import mdp
from zmqrelay._core.scheduler import (
    Action,
    Deliver,
    Forget,
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
        self._retired = SchedulerStatistics(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self.mmi_requests = 0

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats."""
        return self._template.heartbeat_interval

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

    def _after(self, service: bytes, scheduler: Scheduler, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, Forget):
                self._service_of.pop(action.worker, None)
        if scheduler.idle() and self._schedulers.get(service) is scheduler:
            self._retire(service, scheduler)
        return actions

    def _retire(self, service: bytes, scheduler: Scheduler) -> None:
        # Keep its counters: statistics count since the broker started, not per life of a service.
        gone = scheduler.statistics()
        retired = self._retired
        self._retired = retired._replace(
            delivered=retired.delivered + gone.delivered,
            refused=retired.refused + gone.refused,
            redelivered=retired.redelivered + gone.redelivered,
            late_replies=retired.late_replies + gone.late_replies,
            unknown_replies=retired.unknown_replies + gone.unknown_replies,
            dead_workers=retired.dead_workers + gone.dead_workers,
        )
        del self._schedulers[service]

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
            moved = [action for action in self.gone(worker, now) if action != Forget(worker)]
        scheduler = self._scheduler(service)
        self._service_of[worker] = service
        actions = scheduler.ready(worker, credits, now, heartbeats=heartbeats, patient=patient)
        return [*moved, *self._after(service, scheduler, actions)]

    def heard_from(self, worker: WorkerId, now: float) -> None:
        """Any message from ``worker`` proves it alive."""
        found = self._of(worker)
        if found is not None:
            found[1].heard_from(worker, now)

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
            self._retired = self._retired._replace(
                unknown_replies=self._retired.unknown_replies + 1
            )
            return []
        service, scheduler = found
        if partial:
            return scheduler.partial(worker, token, body, now)
        return self._after(
            service, scheduler, scheduler.reply(worker, token, body, now, status=status)
        )

    def leave(self, worker: WorkerId, now: float) -> list[Action]:
        """``worker`` takes no new requests."""
        found = self._of(worker)
        if found is None:
            return []
        return self._after(found[0], found[1], found[1].leave(worker, now))

    def gone(self, worker: WorkerId, now: float) -> list[Action]:
        """``worker`` is gone: its requests end or go to another worker of its service."""
        found = self._of(worker)
        if found is None:
            return []
        return self._after(found[0], found[1], found[1].gone(worker, now))

    def full(self, worker: WorkerId, token: int, now: float) -> list[Action]:
        """``worker``'s queue could not take request ``token``."""
        found = self._of(worker)
        if found is None:
            return []
        return self._after(found[0], found[1], found[1].full(worker, token, now))

    def unsent(self, worker: WorkerId, token: int, now: float) -> list[Action]:
        """Request ``token`` could not be sent to ``worker``, which is gone."""
        found = self._of(worker)
        if found is None:
            return []
        return self._after(found[0], found[1], found[1].unsent(worker, token, now))

    def sent_to(self, worker: WorkerId, now: float) -> None:
        """Something was sent to ``worker`` (counts as a heartbeat)."""
        found = self._of(worker)
        if found is not None:
            found[1].sent_to(worker, now)

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
        scheduler = self._scheduler(service)
        actions = scheduler.request(
            envelope,
            body,
            now,
            deadline=deadline,
            retries=retries,
            service=service,
            dialect=dialect,
        )
        return self._after(service, scheduler, actions)

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Let time pass in every service."""
        actions: list[Action] = []
        for service, scheduler in list(self._schedulers.items()):
            actions.extend(self._after(service, scheduler, scheduler.tick(now)))
        return actions

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do next, if ever."""
        times = (scheduler.next_wakeup() for scheduler in self._schedulers.values())
        return min((when for when in times if when is not None), default=None)

    def statistics(self) -> SchedulerStatistics:
        """The sum over services (counters include services since dropped)."""
        total = self._retired._replace(services=len(self._schedulers))
        for scheduler in self._schedulers.values():
            one = scheduler.statistics()
            summed = (a + b for a, b in zip(total[:-1], one[:-1], strict=True))
            total = SchedulerStatistics._make([*summed, total.services])
        return total
