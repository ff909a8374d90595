"""Load-balancing mode's socket loop: frames in, scheduler decisions out, both sockets in one task.

All decisions are the pure :class:`~zmqrelay._core.scheduler.Scheduler`'s; this loop decodes
what each socket reads (:mod:`zmqrelay._core.lbwire` for workers), hands it to the scheduler
with the time, sends what the scheduler decides, and wakes for the scheduler's next deadline.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import anyio
import zmq
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._core import lbclient, lbwire, mdp
from zmqrelay._core.scheduler import (
    Action,
    Deliver,
    Dispatch,
    Forget,
    Heartbeat,
    Refuse,
)
from zmqrelay._core.services import Services

logger = logging.getLogger("zmqrelay.broker")


@dataclass(slots=True)
class BalancerCounters:
    """What the socket loop counted (the scheduler counts the rest)."""

    requests_forwarded: int = 0
    replies_forwarded: int = 0
    malformed_requests: int = 0
    protocol_violations: int = 0
    unroutable_replies: int = 0
    congested_replies: int = 0


class Balancer:
    """Relays between clients (frontend ROUTER) and workers (backend ROUTER) by scheduler."""

    def __init__(
        self,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        scheduler: Services,
        *,
        batch_size: int,
        redeliveries: int,
        request_timeout: float | None = None,
    ) -> None:
        self.frontend = frontend
        self.backend = backend
        self.scheduler = scheduler
        self.counters = BalancerCounters()
        self.batch = range(batch_size)
        self.redeliveries = redeliveries
        self.request_timeout = request_timeout
        self.dialects: dict[bytes, lbwire.Dialect] = {}
        self.settled = anyio.Event()
        """Set (and replaced) whenever a request ends: a draining broker waits on it."""
        self._front = sockets.shadow(frontend)
        self._back = sockets.shadow(backend)

    async def run(self, intake: bool) -> None:
        """Serve until cancelled; with ``intake`` false, take no new requests (draining)."""
        loop = asyncio.get_running_loop()
        front_events, back_events = self._front.getsockopt, self._back.getsockopt
        async with sockets.Readiness(self._front, self._back) as readiness:
            while True:
                now = loop.time()
                busy = self._workers(now)
                if intake:
                    busy = self._clients(now) or busy
                wake = self.scheduler.next_wakeup()
                if wake is not None and wake <= now:
                    self._perform(self.scheduler.tick(now), now)
                    continue
                if busy:
                    await checkpoint()
                    continue
                # Reading EVENTS also clears the descriptors' edge: wait only if nothing is
                # ready by now, or a wake-up would be lost.
                ready = int(back_events(zmq.EVENTS)) & sockets.POLLIN
                # Read even while not taking requests: it clears the frontend's signal, which
                # would otherwise wake this loop again and again.
                front_ready = int(front_events(zmq.EVENTS)) & sockets.POLLIN
                if intake:
                    ready |= front_ready
                if ready:
                    continue
                await readiness.wait(until=wake)

    def _clients(self, now: float) -> bool:
        """Take requests from clients; true when a whole batch came (there may be more)."""
        for _ in self.batch:
            frames = sockets.recv_message(self._front)
            if frames is None:
                return False
            request = lbclient.read_request(
                frames, now, request_timeout=self.request_timeout, redeliveries=self.redeliveries
            )
            if request is None:
                self.counters.malformed_requests += 1
                continue
            actions = self.scheduler.request(
                request.service,
                request.envelope,
                request.body,
                now,
                deadline=request.deadline,
                retries=request.retries,
                dialect=request.dialect,
            )
            self._perform(actions, now)
        return True

    def _workers(self, now: float) -> bool:
        """Take what workers say; true when a whole batch came (there may be more)."""
        scheduler = self.scheduler
        for _ in self.batch:
            frames = sockets.recv_message(self._back)
            if frames is None:
                return False
            worker = frames[0]
            event = mdp.decode_backend(frames, known=scheduler.is_known(worker))
            if isinstance(event, mdp.Violation):
                self._violation(event, now)
                continue
            if not isinstance(event, lbwire.Ready) and not scheduler.is_known(worker):
                # A worker this broker does not know (it restarted, or forgot the worker):
                # tell it to register again, rather than let it wait for silence.
                if isinstance(event, lbwire.Reply):
                    scheduler.reply(worker, event.token, event.body, now)  # counted as unknown
                if not isinstance(event, lbwire.Disconnect):
                    self._disconnect(worker, event.dialect, now)
                continue
            if isinstance(event, lbwire.Reply):
                actions = scheduler.reply(
                    worker,
                    event.token,
                    event.body,
                    now,
                    status=event.status,
                    partial=event.partial,
                )
            elif isinstance(event, lbwire.Ready):
                if event.dialect == "guide" and scheduler.is_known(worker):
                    # A guide worker says READY once, when it starts: it restarted, and what
                    # it held before is lost with its previous life.
                    self._perform(scheduler.gone(worker, now), now)
                self.dialects[worker] = event.dialect
                actions = scheduler.ready(
                    worker,
                    event.service,
                    event.credits,
                    now,
                    heartbeats=event.dialect != "guide",
                    # Majordomo workers may say nothing while they work (majortomo's don't).
                    patient=mdp.as_variant(event.dialect) is not None,
                )
                if event.dialect == "zmqrelay":  # acknowledges the registration at once
                    actions = [Heartbeat(worker), *actions]
            elif isinstance(event, lbwire.Heartbeat):
                scheduler.heartbeat(worker, now)
                continue
            elif isinstance(event, lbwire.Leaving):
                scheduler.heard_from(worker, now)
                actions = scheduler.leave(worker, now)
            else:
                # It said DISCONNECT: the broker sends it nothing more, not even DISCONNECT
                # (spec 7/MDP), so its dialect goes before its Forget is performed.
                self.dialects.pop(worker, None)
                actions = scheduler.gone(worker, now)
            self._perform(actions, now)
        return True

    def _violation(self, violation: mdp.Violation, now: float) -> None:
        """A worker broke its protocol: it is told DISCONNECT (if it can hear) and forgotten."""
        self.counters.protocol_violations += 1
        worker = violation.worker
        logger.debug("worker %r broke the protocol: %s", worker, violation.reason)
        if self.scheduler.is_known(worker):
            self._perform(self.scheduler.gone(worker, now), now)  # sends DISCONNECT
        elif violation.dialect is not None:
            self._disconnect(worker, violation.dialect, now)

    def _disconnect(self, worker: bytes, dialect: lbwire.Dialect, now: float) -> None:
        message = mdp.encode_backend_command(worker, dialect, "disconnect")
        if message is not None:
            self._to_worker(worker, message, now)

    def _perform(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action, now)
            elif isinstance(action, Deliver):
                request = action.request
                frames = lbclient.reply_frames(
                    request, action.status, action.body, partial=action.partial
                )
                if frames is not None:
                    self.counters.replies_forwarded += 1
                    routed = self._to_client(frames)
                    if routed == "full" and action.partial:  # the rest cannot come whole
                        request.broken = lbclient.LOST_PARTS
                if not action.partial:
                    self._settle()
            elif isinstance(action, Refuse):
                self._to_client(lbclient.refusal_frames(action.request, action.reason))
                self._settle()
            elif isinstance(action, Heartbeat):
                self._heartbeat(action.worker, now)
            elif isinstance(action, Forget):
                dialect = self.dialects.pop(action.worker, None)
                if dialect is not None:
                    self._disconnect(action.worker, dialect, now)

    def _heartbeat(self, worker: bytes, now: float) -> None:
        dialect = self.dialects.get(worker)
        message = (
            None if dialect is None else mdp.encode_backend_command(worker, dialect, "heartbeat")
        )
        if message is not None:
            self._to_worker(worker, message, now)

    def _settle(self) -> None:
        self.settled.set()
        self.settled = anyio.Event()

    def _dispatch(self, action: Dispatch, now: float) -> None:
        worker, request = action.worker, action.request
        dialect = self.dialects.get(worker)
        if dialect is None or not self.scheduler.holds(worker, action.token):
            return  # an earlier action of the same batch forgot the worker or the request
        timeout = None if request.deadline is None else request.deadline - now
        message = mdp.encode_backend_request(
            worker,
            dialect,
            action.token,
            request.body,
            redelivery=request.redelivery,
            timeout=timeout,
        )
        routed = self._to_worker(worker, message, now)
        if routed == "sent":
            self.counters.requests_forwarded += 1
        elif routed == "full":  # its queue takes no more: the request goes to another worker
            self._perform(self.scheduler.full(worker, action.token, now), now)
        else:
            # The worker went away unseen: this request goes back to the queue, what the
            # worker held before ends or goes to another.
            self._perform(self.scheduler.unsent(worker, action.token, now), now)

    def _to_worker(self, worker: bytes, message: list[bytes], now: float) -> sockets.Routed:
        routed = sockets.route(self._back, message)
        if routed == "sent":
            self.scheduler.sent_to(worker, now)
        return routed

    def _to_client(self, frames: list[bytes]) -> sockets.Routed:
        routed = sockets.route(self._front, frames)
        if routed == "gone":
            self.counters.unroutable_replies += 1
        elif routed == "full":
            self.counters.congested_replies += 1
        return routed
