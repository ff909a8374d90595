"""Load-balancing mode as one object: what each socket read goes in, what to send comes out.

Like h11's ``Connection``, a :class:`Balancer` does no I/O and reads no clock. The socket loop
feeds it every message it reads (:meth:`~Balancer.from_client`, :meth:`~Balancer.from_worker`)
with the time, lets time pass (:meth:`~Balancer.tick` at :meth:`~Balancer.next_wakeup`), and
sends what it finds in the two outboxes (:attr:`~Balancer.to_clients`,
:attr:`~Balancer.to_workers`). A send that fails is one more input
(:meth:`~Balancer.client_unreachable`, :meth:`~Balancer.worker_unreachable`). Nothing calls
back into the loop, and the loop never asks about a decision the balancer made.

The balancer owns everything load-balancing mode decides:

- the services and their schedulers (:mod:`zmqrelay._core.services`): credits, the least
  recently used worker, queues, deadlines, liveness, redelivery;
- each worker's dialect, read off its READY, in which it is answered from then on;
- protocol policy: a worker that breaks its protocol is told DISCONNECT (when its dialect can
  say it) and forgotten; one the broker does not know is told to register again; nothing is
  sent to a worker after it said DISCONNECT; a guide worker saying READY again has restarted;
- both codecs: the clients' (:mod:`zmqrelay._core.lbclient`) and the workers'
  (:mod:`zmqrelay._core.mdp`, :mod:`zmqrelay._core.lbwire`);
- what it counted, as :class:`~zmqrelay._core.relay.BrokerStatistics`.
"""

from __future__ import annotations

from typing import Literal

from zmqrelay._core import lbclient, lbwire, mdp
from zmqrelay._core.relay import BrokerStatistics
from zmqrelay._core.scheduler import (
    Action,
    Deliver,
    Dispatch,
    Forget,
    Heartbeat,
    Refuse,
    Request,
)
from zmqrelay._core.services import Services

Unreachable = Literal["full", "gone"]
"""Why a send failed: the peer's queue takes no more now, or no peer has that routing id."""

ToClient = tuple[list[bytes], Request | None]
"""A message for the frontend ROUTER, and the request when it is one part of a stream."""
ToWorker = tuple[list[bytes], int | None]
"""A message for the backend ROUTER (its first frame names the worker), and the token of the
request it dispatches, if it does."""


class Balancer:
    """The load-balancing broker's state and rules, fed with frames and the time.

    Args:
        heartbeat_interval: seconds between heartbeats to and from workers.
        liveness: heartbeat intervals of silence after which a worker is dead.
        queue_limit: requests that may wait for a worker, in all services together.
        queue_timeout: seconds a request may wait for a worker.
        redeliveries: times a request whose worker died is sent again (a client may ask more).
        request_timeout: the deadline of a request whose client set none (``None``: none).
        first_token: the first request token; pass a random one, so that a late reply meant
            for a previous life of the broker names no request of this one.
    """

    def __init__(
        self,
        *,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        queue_limit: int = 10_000,
        queue_timeout: float = 5.0,
        redeliveries: int = 0,
        request_timeout: float | None = None,
        first_token: int = 1,
    ) -> None:
        if redeliveries < 0:
            raise ValueError("redeliveries cannot be negative")
        self.services = Services(
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
            first_token=first_token,
        )
        self.redeliveries = redeliveries
        self.request_timeout = request_timeout
        self.to_clients: list[ToClient] = []
        """Messages for clients, in order; the loop empties it."""
        self.to_workers: list[ToWorker] = []
        """Messages for workers, in order; the loop empties it."""
        self._dialects: dict[bytes, lbwire.Dialect] = {}
        self._requests_forwarded = 0
        self._replies_forwarded = 0
        self._malformed_requests = 0
        self._protocol_violations = 0
        self._unroutable_replies = 0
        self._congested_replies = 0
        self._undelivered = 0

    def __repr__(self) -> str:
        return f"<Balancer workers={len(self._dialects)} pending={self.pending}>"

    # -- inputs ----------------------------------------------------------------------------

    def from_client(self, frames: list[bytes], now: float) -> None:
        """A message read from the frontend ROUTER (its first frame is the client's id)."""
        request = lbclient.read_request(
            frames, now, request_timeout=self.request_timeout, redeliveries=self.redeliveries
        )
        if request is None:
            self._malformed_requests += 1
            return
        self._perform(
            self.services.request(
                request.service,
                request.envelope,
                request.body,
                now,
                deadline=request.deadline,
                retries=request.retries,
                dialect=request.dialect,
            ),
            now,
        )

    def from_worker(self, frames: list[bytes], now: float) -> None:
        """A message read from the backend ROUTER (its first frame is the worker's id)."""
        services = self.services
        worker = frames[0] if frames else b""
        known = services.is_known(worker)
        event = mdp.decode_backend(frames, known=known)
        if isinstance(event, lbwire.Reply):
            if known:
                self._perform(
                    services.reply(
                        worker,
                        event.token,
                        event.body,
                        now,
                        status=event.status,
                        partial=event.partial,
                    ),
                    now,
                )
            else:
                services.reply(worker, event.token, event.body, now)  # counted as unknown
                self._disconnect(worker, event.dialect)
        elif isinstance(event, lbwire.Ready):
            self._ready(event, now)
        elif isinstance(event, lbwire.Heartbeat):
            if known:
                services.heartbeat(worker, now)
            else:
                self._disconnect(worker, event.dialect)
        elif isinstance(event, lbwire.Leaving):
            if known:
                services.heard_from(worker, now)
                self._perform(services.leave(worker, now), now)
            else:
                self._disconnect(worker, event.dialect)
        elif isinstance(event, lbwire.Disconnect):
            # It said DISCONNECT: it is sent nothing more, not even DISCONNECT (spec 7/MDP),
            # so its dialect goes before its Forget is performed.
            self._dialects.pop(worker, None)
            self._perform(services.gone(worker, now), now)
        else:
            self._violation(event, now)

    def tick(self, now: float) -> None:
        """Let time pass: dead workers, expired requests, heartbeats due."""
        self._perform(self.services.tick(now), now)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do next, if ever."""
        return self.services.next_wakeup()

    def client_unreachable(self, why: Unreachable, stream: Request | None) -> None:
        """A message of :attr:`to_clients` could not be sent.

        ``stream`` is the request whose part it was: the rest of that reply cannot reach the
        client whole, so its later parts are dropped and it ends in a refusal.
        """
        if why == "gone":
            self._unroutable_replies += 1
        else:
            self._congested_replies += 1
            if stream is not None:
                stream.broken = lbclient.LOST_PARTS

    def worker_unreachable(
        self, worker: bytes, why: Unreachable, token: int | None, now: float
    ) -> None:
        """A message of :attr:`to_workers` could not be sent to ``worker``.

        A request (``token``) that met a full queue goes to another worker; one that met a
        worker gone unseen goes back to the queue, and what the worker held before ends or
        goes to another worker.
        """
        if token is None:  # a command: silence will tell whether the worker lives
            return
        self._requests_forwarded -= 1  # counted when it was put in the outbox
        if why == "full":
            self._perform(self.services.full(worker, token, now), now)
        else:
            self._perform(self.services.unsent(worker, token, now), now)

    def abandon(self) -> None:
        """The broker closes: count what is still queued or in flight as undelivered."""
        left = self.services.statistics()
        self._undelivered += left.queued + left.in_flight

    # -- what it knows ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests queued or in flight, whose client still waits."""
        left = self.services.statistics()
        return left.queued + left.in_flight

    def statistics(self) -> BrokerStatistics:
        """A snapshot of the counters."""
        scheduler = self.services.statistics()
        return BrokerStatistics(
            mode="load-balancing",
            engine="python",
            requests_forwarded=self._requests_forwarded,
            replies_forwarded=self._replies_forwarded,
            malformed_requests=self._malformed_requests,
            malformed_replies=self._protocol_violations + scheduler.unknown_replies,
            unroutable_replies=self._unroutable_replies,
            congested_replies=self._congested_replies,
            undelivered_requests=self._undelivered,
            requests_held=scheduler.queued,
            request_frames=None,
            request_bytes=None,
            reply_frames=None,
            reply_bytes=None,
            scheduler=scheduler,
        )

    # -- rules -----------------------------------------------------------------------------

    def _ready(self, event: lbwire.Ready, now: float) -> None:
        services, worker = self.services, event.worker
        if event.dialect == "guide" and services.is_known(worker):
            # A guide worker says READY once, when it starts: it restarted, and what it held
            # before is lost with its previous life.
            self._perform(services.gone(worker, now), now)
        self._dialects[worker] = event.dialect
        actions = services.ready(
            worker,
            event.service,
            event.credits,
            now,
            heartbeats=event.dialect != "guide",
            # Majordomo workers may say nothing while they work (majortomo's don't).
            patient=mdp.as_variant(event.dialect) is not None,
        )
        if event.dialect == "zmqrelay":  # acknowledges the registration at once
            self._to_worker(worker, lbwire.encode_command(worker, lbwire.HEARTBEAT), now)
        self._perform(actions, now)

    def _violation(self, violation: mdp.Violation, now: float) -> None:
        """A worker broke its protocol: it is told DISCONNECT (if it can hear) and forgotten."""
        self._protocol_violations += 1
        worker = violation.worker
        if self.services.is_known(worker):
            self._perform(self.services.gone(worker, now), now)  # tells it DISCONNECT
        elif violation.dialect is not None:
            self._disconnect(worker, violation.dialect)

    def _disconnect(self, worker: bytes, dialect: lbwire.Dialect) -> None:
        """Tell a worker the broker does not know it (it should register again)."""
        message = mdp.encode_backend_command(worker, dialect, "disconnect")
        if message is not None:
            self.to_workers.append((message, None))

    def _to_worker(self, worker: bytes, message: list[bytes], now: float) -> None:
        self.to_workers.append((message, None))
        self.services.sent_to(worker, now)

    def _perform(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action, now)
            elif isinstance(action, Deliver):
                self._deliver(action)
            elif isinstance(action, Refuse):
                frames = lbclient.refusal_frames(action.request, action.reason)
                self.to_clients.append((frames, None))
            elif isinstance(action, Heartbeat):
                worker = action.worker
                dialect = self._dialects.get(worker)
                message = (
                    None
                    if dialect is None
                    else mdp.encode_backend_command(worker, dialect, "heartbeat")
                )
                if message is not None:
                    self._to_worker(worker, message, now)
            elif isinstance(action, Forget):
                self._forget(action.worker)

    def _dispatch(self, action: Dispatch, now: float) -> None:
        worker, request = action.worker, action.request
        dialect = self._dialects[worker]
        timeout = None if request.deadline is None else request.deadline - now
        message = mdp.encode_backend_request(
            worker,
            dialect,
            action.token,
            request.body,
            redelivery=request.redelivery,
            timeout=timeout,
        )
        self._requests_forwarded += 1
        self.to_workers.append((message, action.token))

    def _deliver(self, action: Deliver) -> None:
        request = action.request
        frames = lbclient.reply_frames(request, action.status, action.body, partial=action.partial)
        if frames is not None:
            self._replies_forwarded += 1
            self.to_clients.append((frames, request if action.partial else None))

    def _forget(self, worker: bytes) -> None:
        """``worker`` is dead or gone: nothing queued for it goes out but its DISCONNECT."""
        outbox = self.to_workers
        if outbox:
            kept = [entry for entry in outbox if entry[0][0] != worker]
            self._requests_forwarded -= sum(
                1 for entry in outbox if entry[0][0] == worker and entry[1] is not None
            )
            outbox[:] = kept
        dialect = self._dialects.pop(worker, None)
        if dialect is not None:
            self._disconnect(worker, dialect)
