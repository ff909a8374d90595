"""Load-balancing mode's decisions, as pure code: who gets which request, and what time does.

The rules, in one place (the I/O shell only moves frames and calls these methods with ``now``):

1. A worker announces itself *ready* with some credits: how many requests it takes at once. A
   request dispatched to it uses one credit; its reply gives the credit back.
2. A request goes to the least-recently-used live worker with a free credit.
3. With no free credit anywhere, a request waits in a FIFO queue. Past ``queue_limit`` queued
   requests, a new one is refused at once as ``BUSY``; one that waited ``queue_timeout`` seconds
   is refused as ``NO_WORKERS`` if no worker is live, else as ``BUSY``.
4. A request may carry a deadline. Expired while queued, or while in flight, it is refused as
   ``DEADLINE``; a reply that comes after that is dropped and counted (it still returns the
   worker's credit).
5. Any traffic from a worker proves it alive. One silent for ``liveness`` heartbeat intervals is
   dead (a *patient* worker, one that cannot heartbeat while it works, only when it holds no
   request still waiting for its reply): it is forgotten, and each request it held is either
   refused as ``WORKER_DIED`` (at most once, the default) or, for requests that allow it,
   queued again at the front, marked as a redelivery, while its retry budget lasts (at least
   once).
6. The broker sends a worker a heartbeat when it has sent it nothing for one interval.
7. A worker that leaves gracefully takes no new requests; those it holds are treated as in
   rule 5 only if it goes before answering them.

Every request ends exactly once: in one reply, or in one refusal.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

WorkerId = bytes


class Refusal(enum.Enum):
    """Why a request ended without a reply."""

    BUSY = "busy"
    """The queue was full, or the request waited too long for a free worker."""
    NO_WORKERS = "no workers"
    """No live worker could take the request in time."""
    DEADLINE = "deadline"
    """The request's deadline passed."""
    WORKER_DIED = "worker died"
    """The worker holding the request died, and the request may not be sent again."""


@dataclass(slots=True)
class Request:
    """A request as the scheduler tracks it; ``envelope`` and ``body`` are opaque to it."""

    envelope: list[bytes]
    body: list[bytes]
    received_at: float
    deadline: float | None = None
    retries_left: int = 0
    redelivery: bool = False
    ended: bool = False
    enqueued_at: float = -1.0
    """When it last joined the queue (the queue timeout counts from then)."""
    service: bytes = b""
    dialect: str = "plain"
    """How the client spoke (kept for the shell, which answers in kind)."""
    parts: list[bytes] | None = None
    """Parts of a streamed reply held back for a client that takes one reply (the shell's)."""
    held_bytes: int = 0
    broken: str = ""
    """Why the rest of a streamed reply cannot reach the client whole (the shell's)."""

    def __post_init__(self) -> None:
        if self.enqueued_at < 0:
            self.enqueued_at = self.received_at


class Dispatch(NamedTuple):
    """Send ``request`` to ``worker``; its reply will name ``token``."""

    worker: WorkerId
    token: int
    request: Request


class Deliver(NamedTuple):
    """Send ``body`` to the client that sent ``request``, with the worker's ``status``.

    A ``partial`` delivery is one part of a streamed reply: the request goes on.
    """

    request: Request
    body: list[bytes]
    status: int = 0
    partial: bool = False


class Refuse(NamedTuple):
    """Tell the client that sent ``request`` why it ended without a reply."""

    request: Request
    reason: Refusal


class Heartbeat(NamedTuple):
    """Send ``worker`` a heartbeat."""

    worker: WorkerId


class Forget(NamedTuple):
    """``worker`` is dead or gone: the shell may tell it so (DISCONNECT) and forget it."""

    worker: WorkerId


Action = Dispatch | Deliver | Refuse | Heartbeat | Forget


class SchedulerStatistics(NamedTuple):
    """A snapshot of the scheduler's state and counters."""

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


@dataclass(slots=True)
class _Worker:
    credits: int
    last_heard: float
    last_sent: float
    heartbeats: bool = True
    patient: bool = False  # silent while it works (Majordomo workers): judged only when idle
    grace_from: float = 0.0  # for a patient worker: when the last request it holds ended
    held: set[int] = field(default_factory=set)
    leaving: bool = False
    full: bool = False  # its socket queue took no more: no requests until it is heard from


@dataclass(slots=True)
class _InFlight:
    worker: WorkerId
    request: Request
    sent_at: float
    ended: bool = False  # refused (deadline) while the worker still holds it


class Scheduler:
    """The load balancer's state; every method takes the current time and returns actions."""

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
        if queue_limit < 0 or queue_timeout < 0:
            raise ValueError("queue_limit and queue_timeout cannot be negative")
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.queue_limit = queue_limit
        self.queue_timeout = queue_timeout
        self._workers: dict[WorkerId, _Worker] = {}
        # Workers with a free credit, least recently used first.
        self._free: OrderedDict[WorkerId, None] = OrderedDict()
        self._queue: deque[Request] = deque()
        # Requests that go again (their worker died, or they could not be sent) wait here, and
        # are dispatched before new ones. Each deque is in the order requests joined it, so its
        # first request is the next to time out.
        self._again: deque[Request] = deque()
        self._in_flight: dict[int, _InFlight] = {}
        # Pass a random first token: a reply a worker sends late, for a request of the
        # broker's previous life, then names no request of this one.
        self._next_token = first_token
        # (deadline, sequence, request) of requests with a deadline, ended ones skipped lazily.
        self._deadlines: list[tuple[float, int, Request]] = []
        self._sequence = 0
        self._delivered = 0
        self._refused = 0
        self._redelivered = 0
        self._late = 0
        self._unknown = 0
        self._dead = 0

    # -- workers ---------------------------------------------------------------------------

    def ready(
        self,
        worker: WorkerId,
        credits: int,
        now: float,
        *,
        heartbeats: bool = True,
        patient: bool = False,
    ) -> list[Action]:
        """``worker`` announces itself with ``credits`` (again: its credits are reset).

        A worker without ``heartbeats`` (the guide's REQ workers) is never declared dead for
        its silence, and is sent no heartbeats. A ``patient`` one is judged by its silence
        only while it holds no request still waiting for a reply (Majordomo workers send
        nothing while their handler runs).
        """
        if credits < 1:
            raise ValueError("a ready worker needs at least one credit")
        known = self._workers.get(worker)
        if known is None:
            self._workers[worker] = _Worker(credits, now, now, heartbeats, patient)
        else:
            known.credits = max(0, credits - len(known.held))
            known.last_heard = now
            known.leaving = False
        self._update_free(worker)
        return list(self._dispatch_queued(now))

    def heard_from(self, worker: WorkerId, now: float) -> None:
        """Any message from ``worker`` proves it alive (and able to take requests again)."""
        known = self._workers.get(worker)
        if known is not None:
            known.last_heard = now
            if known.full:
                known.full = False
                self._update_free(worker)

    def heartbeat(self, worker: WorkerId, now: float) -> None:
        """``worker`` sent a heartbeat, so it is alive.

        A patient worker that heartbeats while it works on a request is not patient after
        all: from then on its silence counts, busy or not. "While it works" means at least an
        interval after the request was sent: a heartbeat sent just before the worker saw the
        request (the guide's worker sends one right after a reply) proves nothing.
        """
        self.heard_from(worker, now)
        known = self._workers.get(worker)
        if known is None or not known.patient:
            return
        in_flight, interval = self._in_flight, self.heartbeat_interval
        for token in known.held:
            entry = in_flight[token]
            if not entry.ended and now - entry.sent_at >= interval:
                known.patient = False
                return

    def holds(self, worker: WorkerId, token: int) -> bool:
        """Whether ``worker`` is still to be sent, or to answer, request ``token``."""
        entry = self._in_flight.get(token)
        return entry is not None and entry.worker == worker and not entry.ended

    def full(self, worker: WorkerId, token: int, now: float) -> list[Action]:
        """``worker``'s queue could not take request ``token``: it goes to another worker.

        The worker keeps its place and its credit, but gets no request until it is heard from.
        """
        entry = self._in_flight.pop(token, None)
        known = self._workers.get(worker)
        if known is not None:
            known.held.discard(token)
            known.credits += 1
            known.full = True
            self._free.pop(worker, None)
        if entry is not None and not entry.ended:
            entry.request.enqueued_at = now
            self._again.append(entry.request)
        return list(self._dispatch_queued(now))

    def is_known(self, worker: WorkerId) -> bool:
        """Whether ``worker`` is a live worker the scheduler counts on."""
        return worker in self._workers

    def reply(
        self, worker: WorkerId, token: int, body: list[bytes], now: float, *, status: int = 0
    ) -> list[Action]:
        """``worker`` answered the request it got as ``token`` (``status`` passes through)."""
        self.heard_from(worker, now)
        entry = self._in_flight.get(token)
        if entry is None or entry.worker != worker:
            self._unknown += 1
            return []
        del self._in_flight[token]
        actions: list[Action] = []
        if entry.ended:
            self._late += 1
        else:
            self._delivered += 1
            entry.request.ended = True
            actions.append(Deliver(entry.request, body, status))
        known = self._workers.get(worker)
        if known is not None:
            known.held.discard(token)
            if not known.leaving:
                known.credits += 1
                self._update_free(worker)
            elif not known.held:  # it was leaving, and this was its last request
                actions.extend(self._forget(worker, now))
        actions.extend(self._dispatch_queued(now))
        return actions

    def partial(self, worker: WorkerId, token: int, body: list[bytes], now: float) -> list[Action]:
        """``worker`` sent one part of a streamed reply to the request it got as ``token``.

        The request stays with the worker. Once a part came, sending the request again could
        repeat parts: if its worker dies now, the request ends as ``WORKER_DIED`` (even for a
        client whose parts the broker still holds back, to join them into one reply).
        """
        self.heard_from(worker, now)
        entry = self._in_flight.get(token)
        if entry is None or entry.worker != worker:
            self._unknown += 1
            return []
        if entry.ended:
            self._late += 1
            return []
        entry.request.retries_left = 0
        return [Deliver(entry.request, body, 0, partial=True)]

    @property
    def queued(self) -> int:
        """Requests waiting for a worker."""
        return len(self._queue) + len(self._again)

    def has_free_worker(self) -> bool:
        """Whether a request would be dispatched at once."""
        return bool(self._free)

    def offers(self) -> bool:
        """Whether a live worker that is not leaving serves here (what ``mmi.service`` says)."""
        return any(not known.leaving for known in self._workers.values())

    def idle(self) -> bool:
        """Whether this scheduler holds nothing: no worker, no request."""
        return not (self._workers or self._queue or self._again or self._in_flight)

    def leave(self, worker: WorkerId, now: float) -> list[Action]:
        """``worker`` takes no new requests; it keeps those it holds until it answers them."""
        known = self._workers.get(worker)
        if known is None:
            return []
        known.leaving = True
        known.credits = 0
        self._free.pop(worker, None)
        if not known.held:
            return self._forget(worker, now)
        return []

    def unsent(self, worker: WorkerId, token: int, now: float) -> list[Action]:
        """The request dispatched as ``token`` could not be sent to ``worker``, which is gone.

        The request never left the broker: it goes back to the front of the queue as it was
        (no redelivery is used), and the worker is forgotten.
        """
        entry = self._in_flight.pop(token, None)
        known = self._workers.get(worker)
        if known is not None:
            known.held.discard(token)
        if entry is not None and not entry.ended:
            entry.request.enqueued_at = now
            self._again.append(entry.request)
        return self.gone(worker, now)

    def gone(self, worker: WorkerId, now: float) -> list[Action]:
        """``worker`` is gone (disconnected, or dead): its requests end or are queued again."""
        if worker not in self._workers:
            return []
        return self._forget(worker, now)

    # -- requests --------------------------------------------------------------------------

    def request(
        self,
        envelope: list[bytes],
        body: list[bytes],
        now: float,
        *,
        deadline: float | None = None,
        retries: int = 0,
        service: bytes = b"",
        dialect: str = "plain",
    ) -> list[Action]:
        """A client asks; ``retries`` > 0 lets the request be sent again if its worker dies."""
        request = Request(envelope, body, now, deadline, retries, service=service, dialect=dialect)
        if deadline is not None:
            if deadline <= now:
                return [self._refuse(request, Refusal.DEADLINE)]
            self._sequence += 1
            deadlines = self._deadlines
            pending = len(self._in_flight) + len(self._queue) + len(self._again)
            if len(deadlines) > 2 * pending + 1024:
                # Answered requests leave their entries behind: drop them now and then, so
                # the heap (and the bodies it holds) stays the size of what is pending.
                deadlines[:] = [entry for entry in deadlines if not entry[2].ended]
                heapq.heapify(deadlines)
            heapq.heappush(deadlines, (deadline, self._sequence, request))
        if self._free:
            return [self._dispatch(request, now)]
        if len(self._queue) + len(self._again) >= self.queue_limit:
            return [self._refuse(request, Refusal.BUSY)]
        self._queue.append(request)
        return []

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Let time pass: dead workers, expired requests, heartbeats due."""
        actions: list[Action] = []
        silence = self.heartbeat_interval * self.liveness
        silent = [
            worker_id
            for worker_id, known in self._workers.items()
            if known.heartbeats
            and now - self._quiet_since(known) >= silence
            and self._judged(known)
        ]
        for worker_id in silent:  # all of them first: none may get another's requests
            self._dead += 1
            actions.extend(self._forget(worker_id, now, dispatch=False))
        actions.extend(self._dispatch_queued(now))
        actions.extend(self._expire_queued(now))
        for entry in self._in_flight.values():
            deadline = entry.request.deadline
            if not entry.ended and deadline is not None and deadline <= now:
                entry.ended = True
                actions.append(self._refuse(entry.request, Refusal.DEADLINE))
                known = self._workers.get(entry.worker)
                if known is not None and known.patient:
                    # It may still be at work: its silence counts from now, giving its late
                    # reply time to come before it is judged dead.
                    known.grace_from = now
        for worker_id, known in self._workers.items():
            if known.heartbeats and now - known.last_sent >= self.heartbeat_interval:
                known.last_sent = now
                actions.append(Heartbeat(worker_id))
        return actions

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do next, if ever."""
        times: list[float] = []
        silence = self.heartbeat_interval * self.liveness
        for known in self._workers.values():
            if known.heartbeats:
                if self._judged(known):  # else a deadline of what it holds comes first
                    times.append(self._quiet_since(known) + silence)
                times.append(known.last_sent + self.heartbeat_interval)
        times.extend(
            waiting[0].enqueued_at + self.queue_timeout
            for waiting in (self._again, self._queue)
            if waiting
        )
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].ended:
            heapq.heappop(deadlines)
        if deadlines:
            times.append(deadlines[0][0])
        return min(times, default=None)

    def sent_to(self, worker: WorkerId, now: float) -> None:
        """Something was sent to ``worker`` (counts as a heartbeat)."""
        known = self._workers.get(worker)
        if known is not None:
            known.last_sent = now

    def statistics(self) -> SchedulerStatistics:
        """A snapshot."""
        return SchedulerStatistics(
            workers=len(self._workers),
            free_credits=sum(known.credits for known in self._workers.values()),
            queued=len(self._queue) + len(self._again),
            in_flight=sum(not entry.ended for entry in self._in_flight.values()),
            delivered=self._delivered,
            refused=self._refused,
            redelivered=self._redelivered,
            late_replies=self._late,
            unknown_replies=self._unknown,
            dead_workers=self._dead,
        )

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _quiet_since(known: _Worker) -> float:
        return max(known.last_heard, known.grace_from)

    def _judged(self, known: _Worker) -> bool:
        """Whether ``known``'s silence counts now."""
        if not known.patient:
            return True
        in_flight = self._in_flight
        return all(in_flight[token].ended for token in known.held)

    def _update_free(self, worker: WorkerId) -> None:
        known = self._workers[worker]
        if known.credits > 0 and not known.leaving and not known.full:
            if worker not in self._free:
                self._free[worker] = None  # newly free: the most recently used end
        else:
            self._free.pop(worker, None)

    def _dispatch(self, request: Request, now: float) -> Dispatch:
        worker_id = next(iter(self._free))  # the least recently used
        known = self._workers[worker_id]
        known.credits -= 1
        self._free.move_to_end(worker_id)
        if known.credits == 0:
            del self._free[worker_id]
        token = self._next_token
        self._next_token = (token + 1) % (1 << 64)
        known.held.add(token)
        known.last_sent = now
        self._in_flight[token] = _InFlight(worker_id, request, now)
        return Dispatch(worker_id, token, request)

    def _dispatch_queued(self, now: float) -> Iterator[Action]:
        for waiting in (self._again, self._queue):
            while waiting and self._free:
                request = waiting.popleft()
                if request.deadline is not None and request.deadline <= now:
                    yield self._refuse(request, Refusal.DEADLINE)
                else:
                    yield self._dispatch(request, now)

    def _expire_queued(self, now: float) -> Iterator[Action]:
        for waiting in (self._again, self._queue):
            kept: deque[Request] = deque()
            for request in waiting:
                if request.deadline is not None and request.deadline <= now:
                    yield self._refuse(request, Refusal.DEADLINE)
                elif now - request.enqueued_at >= self.queue_timeout:
                    reason = Refusal.BUSY if self._workers else Refusal.NO_WORKERS
                    yield self._refuse(request, reason)
                else:
                    kept.append(request)
            waiting.clear()
            waiting.extend(kept)

    def _forget(self, worker: WorkerId, now: float, *, dispatch: bool = True) -> list[Action]:
        known = self._workers.pop(worker)
        self._free.pop(worker, None)
        actions: list[Action] = [Forget(worker)]
        again: list[Request] = []
        for token in sorted(known.held):
            entry = self._in_flight.pop(token)
            if entry.ended:
                continue
            request = entry.request
            if request.retries_left > 0:
                request.retries_left -= 1
                request.redelivery = True
                self._redelivered += 1
                again.append(request)
            else:
                actions.append(self._refuse(request, Refusal.WORKER_DIED))
        for request in again:
            request.enqueued_at = now
        self._again.extend(again)
        if dispatch:
            actions.extend(self._dispatch_queued(now))
        return actions

    def _refuse(self, request: Request, reason: Refusal) -> Refuse:
        self._refused += 1
        request.ended = True
        return Refuse(request, reason)
