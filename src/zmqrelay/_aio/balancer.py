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
from zmqrelay._core import lbwire, tag
from zmqrelay._core.envelope import DELIMITER
from zmqrelay._core.scheduler import (
    Action,
    Deliver,
    Dispatch,
    Forget,
    Heartbeat,
    Refusal,
    Refuse,
    Request,
    Scheduler,
)
from zmqrelay._core.worker import plain_error_reply
from zmqrelay.errors import RemoteProtocolError

logger = logging.getLogger("zmqrelay.broker")

_STATUS = {
    Refusal.BUSY: tag.Status.BUSY,
    Refusal.NO_WORKERS: tag.Status.NO_WORKERS,
    Refusal.DEADLINE: tag.Status.DEADLINE,
    Refusal.WORKER_DIED: tag.Status.WORKER_DIED,
}
_ERROR_NAME = {
    Refusal.BUSY: "BrokerBusy",
    Refusal.NO_WORKERS: "NoWorkers",
    Refusal.DEADLINE: "DeadlineExceeded",
    Refusal.WORKER_DIED: "WorkerDied",
}


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
        scheduler: Scheduler,
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
            try:
                index = frames.index(DELIMITER, 1)
            except ValueError:
                index = -1
            if index < 1 or index == len(frames) - 1:
                self.counters.malformed_requests += 1
                continue
            asked = tag.decode(frames[index - 1])
            timeout, retries = self.request_timeout, self.redeliveries
            if asked is not None:
                timeout = asked.timeout if asked.timeout is not None else timeout
                retries = max(retries, asked.redeliveries)
            deadline = None if timeout is None else now + timeout
            actions = self.scheduler.request(
                frames[:index], frames[index + 1 :], now, deadline=deadline, retries=retries
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
            try:
                event = lbwire.decode_backend(frames, known=scheduler.is_known(worker))
            except RemoteProtocolError as exc:
                self._violation(worker, exc, now)
                continue
            if not isinstance(event, lbwire.Ready) and not scheduler.is_known(worker):
                # A zmqrelay worker this broker does not know (it restarted, or forgot the
                # worker): tell it to register again, rather than let it wait for silence.
                if isinstance(event, lbwire.Reply):
                    scheduler.reply(worker, event.token, event.body, now)  # counted as unknown
                if event_dialect(event) == "zmqrelay":
                    self._to_worker(worker, lbwire.encode_command(worker, lbwire.DISCONNECT), now)
                continue
            if isinstance(event, lbwire.Reply):
                actions = scheduler.reply(
                    worker, event.token, event.body, now, status=event.status
                )
            elif isinstance(event, lbwire.Ready):
                if event.dialect == "guide" and scheduler.is_known(worker):
                    # A guide worker says READY once, when it starts: it restarted, and what
                    # it held before is lost with its previous life.
                    self._perform(scheduler.gone(worker, now), now)
                self.dialects[worker] = event.dialect
                actions = scheduler.ready(
                    worker, event.credits, now, heartbeats=event.dialect == "zmqrelay"
                )
                if event.dialect == "zmqrelay":  # acknowledges the registration at once
                    actions = [Heartbeat(worker), *actions]
            elif isinstance(event, lbwire.Heartbeat):
                scheduler.heard_from(worker, now)
                continue
            elif isinstance(event, lbwire.Leaving):
                scheduler.heard_from(worker, now)
                actions = scheduler.leave(worker, now)
            else:
                actions = scheduler.gone(worker, now)
            self._perform(actions, now)
        return True

    def _violation(self, worker: bytes, error: RemoteProtocolError, now: float) -> None:
        self.counters.protocol_violations += 1
        logger.debug("worker %r broke the protocol: %s", worker, error)
        if self.scheduler.is_known(worker):  # it is forgotten (and told so, if it can hear)
            self._perform(self.scheduler.gone(worker, now), now)

    def _perform(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action, now)
            elif isinstance(action, Deliver):
                self._to_client(action.request, action.status, action.body)
                self._settle()
            elif isinstance(action, Refuse):
                self._refuse(action.request, action.reason)
                self._settle()
            elif isinstance(action, Heartbeat) and self.dialects.get(action.worker) == "zmqrelay":
                message = lbwire.encode_command(action.worker, lbwire.HEARTBEAT)
                self._to_worker(action.worker, message, now)
            elif (
                isinstance(action, Forget) and self.dialects.pop(action.worker, None) == "zmqrelay"
            ):
                message = lbwire.encode_command(action.worker, lbwire.DISCONNECT)
                self._to_worker(action.worker, message, now)

    def _settle(self) -> None:
        self.settled.set()
        self.settled = anyio.Event()

    def _dispatch(self, action: Dispatch, now: float) -> None:
        worker, request = action.worker, action.request
        dialect = self.dialects.get(worker)
        if dialect is None or not self.scheduler.holds(worker, action.token):
            return  # an earlier action of the same batch forgot the worker or the request
        timeout = None if request.deadline is None else request.deadline - now
        message = lbwire.encode_request(
            worker,
            dialect,
            action.token,
            request.body,
            redelivery=request.redelivery,
            timeout=timeout,
        )
        try:
            sent = sockets.send_message(self._back, message)
        except zmq.ZMQError as exc:
            if exc.errno != sockets.EHOSTUNREACH:
                raise
            # The worker went away unseen: this request goes back to the queue, what the
            # worker held before ends or goes to another.
            self._perform(self.scheduler.unsent(worker, action.token, now), now)
            return
        if sent:
            self.scheduler.sent_to(worker, now)
            self.counters.requests_forwarded += 1
        else:  # its queue is full: the request goes to another worker
            self._perform(self.scheduler.full(worker, action.token, now), now)

    def _to_worker(self, worker: bytes, message: list[bytes], now: float) -> bool:
        try:
            sent = sockets.send_message(self._back, message)
        except zmq.ZMQError as exc:
            if exc.errno != sockets.EHOSTUNREACH:
                raise
            sent = False
        if sent:
            self.scheduler.sent_to(worker, now)
        return sent

    def _to_client(self, request: Request, status: int, body: list[bytes]) -> None:
        envelope = request.envelope
        self.counters.replies_forwarded += 1
        if not status:
            self._send_to_client([*envelope, DELIMITER, *body])
        elif tag.decode(envelope[-1]) is not None:
            marked = tag.with_status(envelope[-1], tag.Status(status))
            self._send_to_client([*envelope[:-1], marked, DELIMITER, *body])
        else:  # an error reply for a plain client: one documented frame
            type_name = body[0].decode("utf-8", "replace") if body else "Exception"
            message = body[1].decode("utf-8", "replace") if len(body) > 1 else ""
            self._send_to_client([*envelope, DELIMITER, plain_error_reply(type_name, message)])

    def _refuse(self, request: Request, reason: Refusal) -> None:
        envelope, message = request.envelope, f"the broker refused the request: {reason.value}"
        if tag.decode(envelope[-1]) is not None:
            marked = tag.with_status(envelope[-1], _STATUS[reason])
            frames = [*envelope[:-1], marked, DELIMITER, message.encode()]
        else:
            frames = [*envelope, DELIMITER, plain_error_reply(_ERROR_NAME[reason], message)]
        self._send_to_client(frames)

    def _send_to_client(self, frames: list[bytes]) -> None:
        try:
            sent = sockets.send_message(self._front, frames)
        except zmq.ZMQError as exc:
            if exc.errno != sockets.EHOSTUNREACH:
                raise
            self.counters.unroutable_replies += 1
            return
        if not sent:
            self.counters.congested_replies += 1


def event_dialect(event: lbwire.WorkerEvent) -> lbwire.Dialect:
    """The dialect a worker's message was in (only guide workers send guide replies)."""
    if isinstance(event, lbwire.Ready | lbwire.Reply):
        return event.dialect
    return "zmqrelay"
