"""Load-balancing mode as one object: what each socket read goes in, what to send comes out.

Like h11's ``Connection``, a :class:`Balancer` does no I/O and reads no clock. The socket loop
feeds it every message it reads (:meth:`~Balancer.from_client`, :meth:`~Balancer.from_worker`)
with the time, lets time pass (:meth:`~Balancer.tick` at :meth:`~Balancer.next_wakeup`), and
sends what it finds in the two outboxes (:attr:`~Balancer.to_clients`,
:attr:`~Balancer.to_workers`). A send that fails is one more input
(:meth:`~Balancer.client_unreachable`, :meth:`~Balancer.worker_unreachable`). Nothing calls
back into the loop, and the loop never asks about a decision the balancer made.

The balancer owns everything load-balancing mode decides:

- the services, workers and requests (:mod:`zmqrelay._core.scheduler`): credits, the least
  recently used worker, queues, deadlines, liveness, redelivery;
- each worker's dialect, read off its READY, in which it is answered from then on;
- protocol policy: a worker that breaks its protocol is told DISCONNECT (when its dialect can
  say it) and forgotten; one the broker does not know is told to register again; nothing is
  sent to a worker after it said DISCONNECT; a guide worker saying READY again has restarted;
- both codecs: the clients' (:mod:`zmqrelay._core.frontend`) and the workers'
  (:mod:`zmqrelay._core.dialects`);
- service discovery (spec 8/MMI), answered by the broker itself;
- what it counted, as :class:`~zmqrelay._core.relay.BrokerStatistics`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from zmqrelay._core import dialects, frontend, mdp
from zmqrelay._core.dispatch import ToClient, ToWorker, Waited
from zmqrelay._core.metrics import RequestMetrics
from zmqrelay._core.policy import Policy
from zmqrelay._core.refusal import Refusal
from zmqrelay._core.request import Request
from zmqrelay._core.scheduler import Scheduler, SchedulerStatistics
from zmqrelay._core.security import SecurityStatistics
from zmqrelay._core.workers import Worker

Unreachable = Literal["full", "gone"]
"""Why a send failed: the peer's queue takes no more now, or no peer has that routing id."""

__all__ = ["Balancer", "BalancerStatistics", "ToClient", "ToWorker", "Unreachable", "Waited"]


class BalancerStatistics(NamedTuple):
    """A snapshot of a load-balancing :class:`~zmqrelay.Broker`'s counters.

    (A relay broker's are a :class:`~zmqrelay.BrokerStatistics`; :attr:`mode` tells them
    apart, and narrows the type for a type checker.)
    """

    mode: Literal["load-balancing"]
    """The routing mode."""
    requests_forwarded: int
    """Requests handed to workers (a request sent again counts again)."""
    replies_forwarded: int
    """Replies passed to clients (each part of a streamed reply counts), service discovery's
    answers included."""
    malformed_requests: int
    """Frontend messages dropped because they were in no client dialect."""
    malformed_replies: int
    """Backend messages that broke their dialect's rules, and replies naming a request their
    worker does not hold."""
    unroutable_replies: int
    """Replies and refusals dropped because their client is not connected (any more)."""
    congested_replies: int
    """Replies and refusals dropped because their client's queue was full."""
    undelivered_requests: int
    """Requests still queued or in flight when the broker closed."""
    requests_held: int
    """Requests waiting, now, for a worker to take them."""
    scheduler: SchedulerStatistics
    """Workers, credits, the queue and how requests ended."""
    forbidden_requests: int = 0
    """Requests refused as :class:`~zmqrelay.Forbidden`: the authorisation policy does not let
    their client call their service, or the client's key is no longer allowed."""
    forbidden_workers: int = 0
    """Workers told DISCONNECT because the policy does not let them serve the service they
    registered for, or their key is no longer allowed."""
    security: SecurityStatistics | None = None
    """What CURVE refused; ``None`` when the broker does not use CURVE."""


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
        secured: whether peers are authenticated: each message then comes with the name of
            its sender's key, or ``None`` when that key is not (any longer) allowed, and a
            request or a worker is checked against :attr:`policy`.
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
        secured: bool = False,
    ) -> None:
        if redeliveries < 0:
            raise ValueError("redeliveries cannot be negative")
        self.scheduler = scheduler = Scheduler(
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
            first_token=first_token,
        )
        self.redeliveries = redeliveries
        self.request_timeout = request_timeout
        self._workers = scheduler.workers
        self.to_clients: list[ToClient] = scheduler.to_clients
        """Messages for clients, in order. The socket loop sends and clears them (the list
        stays the same object)."""
        self.to_workers: list[ToWorker] = scheduler.to_workers
        """Messages for workers, in order, as :attr:`to_clients`."""
        self._malformed_requests = 0
        self._protocol_violations = 0
        self._unroutable_replies = 0
        self._undelivered = 0
        self._mmi_requests = 0
        self.secured = secured
        self.policy: Policy | None = None
        """Who may call and serve which services (secured brokers); ``None``: anyone allowed."""
        self._forbidden_requests = 0
        self._forbidden_workers = 0
        self.last_violation: tuple[bytes, str] | None = None
        """The last worker to break its protocol, and how (for the log)."""
        self.last_forbidden_request: tuple[str | None, bytes] | None = None
        """The key name and the service of the last request the policy refused."""
        self.last_forbidden_worker: tuple[str | None, bytes | None] | None = None
        """The key name and the service (if known) of the last worker the policy refused."""

    def __repr__(self) -> str:
        return f"<Balancer workers={len(self._workers)} pending={self.pending}>"

    # -- inputs ----------------------------------------------------------------------------

    def from_client(self, frames: list[bytes], now: float, client: str | None = None) -> None:
        """A message read from the frontend ROUTER (its first frame is the client's id).

        ``client`` names the sender's key, in a secured broker (see ``secured``).
        """
        request = frontend.read_request(
            frames, now, request_timeout=self.request_timeout, redeliveries=self.redeliveries
        )
        if request is None:
            self._malformed_requests += 1
        elif self.secured and (client is None or not self._may_call(client, request)):
            self._forbidden_requests += 1
            self.last_forbidden_request = (client, request.service)
            self.scheduler.refuse(request, Refusal.FORBIDDEN)
        elif mdp.is_mmi(request.service):
            self._mmi(request, client)
        else:
            self.scheduler.request(request, now)

    def from_worker(self, frames: list[bytes], now: float, worker_key: str | None = None) -> None:
        """A message read from the backend ROUTER (its first frame is the worker's id).

        ``worker_key`` names the sender's key, in a secured broker (see ``secured``).
        """
        worker_id = frames[0] if frames else b""
        worker = self._workers.get(worker_id)
        dialect, event = dialects.read(frames, known=worker is not None)
        scheduler = self.scheduler
        if self.secured and not self._may_serve(worker_key, worker, event):
            # Its key is no longer allowed, or it registers for a service it may not serve.
            self._forbidden_workers += 1
            self.last_forbidden_worker = (worker_key, _service_of(worker, event))
            if worker is not None:
                scheduler.gone(worker, now)
            else:
                self._disconnect(worker_id, dialect)
        elif type(event) is dialects.Answer:
            if worker is not None:
                scheduler.reply(worker, event.token, event.status, event.body, event.partial, now)
            else:
                scheduler.reply_unknown()  # for a request of another broker, or life of this
                assert dialect is not None
                if dialect.reply_is_ready:
                    scheduler.ready(worker_id, dialect, b"", 1, now)
                else:
                    self._disconnect(worker_id, dialect)
        elif type(event) is dialects.Ready:
            assert dialect is not None
            if worker is not None and dialect.starts_with_ready:
                scheduler.gone(worker, now)  # it restarted: what it held is lost
            scheduler.ready(worker_id, dialect, event.service, event.credits, now)
        elif type(event) is dialects.Violation:
            # It broke its protocol: it is told DISCONNECT (if it can hear) and forgotten.
            self._protocol_violations += 1
            self.last_violation = (worker_id, event.reason)
            if worker is not None:
                scheduler.gone(worker, now)
            else:
                self._disconnect(worker_id, dialect)
        elif worker is None:
            # A worker this broker does not know (it restarted, or was forgotten): it is told
            # to register again, rather than left to wait for silence.
            if event != "disconnect":
                self._disconnect(worker_id, dialect)
        elif event == "heartbeat":
            scheduler.heartbeat(worker, now)
        elif event == "leaving":
            scheduler.leave(worker, now)
        else:
            # It said DISCONNECT: it is sent nothing more, not even DISCONNECT (spec 7/MDP).
            scheduler.gone(worker, now, tell=False)

    def tick(self, now: float) -> None:
        """Let time pass: dead workers, expired requests, heartbeats due.

        Answers that waited for a client's queue are tried again.
        """
        self.scheduler.tick(now)
        backlog = self.scheduler.backlog
        if backlog.retry_at is not None and backlog.retry_at <= now:
            backlog.release(self.to_clients, now)

    def next_wakeup(self) -> float | None:
        """When :meth:`tick` has something to do next, if ever."""
        wake = self.scheduler.next_wakeup()
        retry = self.scheduler.backlog.retry_at
        if retry is None or (wake is not None and wake < retry):
            return wake
        return retry

    def client_unreachable(
        self, message: list[bytes], why: Unreachable, stream: Request | None, now: float
    ) -> None:
        """``message``, of :attr:`to_clients`, could not be sent.

        To a client gone, it is dropped and counted, with what waited for it. To a full
        client queue, it waits, with the client's other answers, until the queue drains
        (:mod:`zmqrelay._core.backlog`); ``stream`` is the request whose part it is, if it is.
        """
        if why == "gone":
            self._unroutable_replies += 1 + self.scheduler.backlog.gone(message[0])
        else:
            self.scheduler.backlog.full((message, stream), self.to_clients, now)

    def worker_unreachable(
        self, worker: bytes, why: Unreachable, token: bytes | None, now: float
    ) -> None:
        """A message of :attr:`to_workers` could not be sent to ``worker``.

        A request (``token``) that met a full queue goes to another worker; one that met a
        worker gone unseen goes back to the queue, and what the worker held before ends or
        goes to another worker. A command that could not be sent changes nothing: silence
        tells whether the worker lives.
        """
        if token is None:
            return
        if why == "full":
            self.scheduler.full(worker, token, now)
        else:
            self.scheduler.unsent(worker, token, now)

    def abandon(self) -> None:
        """The broker closes: count what is still queued or in flight as undelivered."""
        self._undelivered += self.pending

    # -- what it knows ---------------------------------------------------------------------

    @property
    def send_now(self) -> bool:
        """Whether the outboxes must be sent before the next message is fed.

        They must when they end with a part of a streamed reply: whether it could be sent
        decides what becomes of the next part (after a full client queue, the later parts are
        dropped and the reply ends in a refusal, never sent on after a gap). Otherwise the
        loop sends once per batch, which lets libzmq wake its I/O thread once for many.
        """
        to_clients = self.to_clients
        return bool(to_clients) and to_clients[-1][1] is not None

    @property
    def pending(self) -> int:
        """Requests queued or in flight, or ended with an answer still to reach its client."""
        return self.scheduler.pending + self.scheduler.backlog.answers()

    def drops(self) -> dict[str, int]:
        """What was dropped or refused so far, by kind: the counters a throttled log reads.

        Cheap, unlike :meth:`statistics`: it counts nothing over workers or requests.
        ``protocol_violations`` and ``unknown_replies`` together are the statistics'
        ``malformed_replies``.
        """
        scheduler = self.scheduler
        return {
            "malformed_requests": self._malformed_requests,
            "protocol_violations": self._protocol_violations,
            "unknown_replies": scheduler.unknown_replies,
            "late_replies": scheduler.late_replies,
            "unroutable_replies": self._unroutable_replies,
            "congested_replies": scheduler.backlog.dropped,
            "forbidden_requests": self._forbidden_requests,
            "forbidden_workers": self._forbidden_workers,
            "busy_refusals": scheduler.refusals[Refusal.BUSY],
            "no_workers_refusals": scheduler.refusals[Refusal.NO_WORKERS],
            "deadline_refusals": scheduler.refusals[Refusal.DEADLINE],
            "worker_died_refusals": scheduler.refusals[Refusal.WORKER_DIED],
        }

    def statistics(self) -> BalancerStatistics:
        """A snapshot of the counters."""
        scheduler = self.scheduler
        counts: SchedulerStatistics = scheduler.statistics(self._mmi_requests)
        return BalancerStatistics(
            mode="load-balancing",
            requests_forwarded=scheduler.requests_forwarded,
            replies_forwarded=scheduler.replies_forwarded,
            malformed_requests=self._malformed_requests,
            malformed_replies=self._protocol_violations + counts.unknown_replies,
            unroutable_replies=self._unroutable_replies,
            congested_replies=self.scheduler.backlog.dropped,
            undelivered_requests=self._undelivered,
            requests_held=counts.queued,
            scheduler=counts,
            forbidden_requests=self._forbidden_requests,
            forbidden_workers=self._forbidden_workers,
        )

    @property
    def metrics(self) -> RequestMetrics | None:
        """Per-service counters (outcomes, durations, queue waits), if they are kept."""
        return self.scheduler.metrics

    def measure(self) -> RequestMetrics:
        """Keep per-service counters from now on (for a metrics endpoint); returns them."""
        if self.scheduler.metrics is None:
            self.scheduler.metrics = RequestMetrics()
            for name in self.scheduler.services:
                if self.scheduler.services[name].workers:
                    self.scheduler.metrics.offer(name)
        return self.scheduler.metrics

    def record_waits(self) -> list[Waited]:
        """Record how long each request with a trace context waits, from now on.

        For a tracing broker: returns the list the socket loop takes them from.
        """
        if self.scheduler.waits is None:
            self.scheduler.waits = []
        return self.scheduler.waits

    # -- rules -----------------------------------------------------------------------------

    def _may_call(self, client: str, request: Request) -> bool:
        policy = self.policy
        # Asking about services is allowed; the answer hides those the client may not call.
        return (
            policy is None
            or mdp.is_mmi(request.service)
            or policy.may_call(client, request.service)
        )

    def _may_serve(self, key: str | None, worker: Worker | None, event: object) -> bool:
        """Whether a secured broker takes this message from a worker with the key ``key``."""
        if key is None:
            return False
        policy = self.policy
        if policy is None:
            return True
        if type(event) is dialects.Ready:
            return policy.may_serve(key, event.service)
        if worker is not None:  # registered already: its key's rights may have changed
            return policy.may_serve(key, worker.service.name)
        if type(event) is dialects.Answer:  # a guide worker's reply is its READY
            return policy.may_serve(key, b"")
        return True

    def _mmi(self, request: Request, client: str | None = None) -> None:
        """Service discovery: ``mmi.service`` says whether a live worker offers a service.

        It hides, as not there, a service the asking client may not call.
        """
        self._mmi_requests += 1
        request.ended = True
        if request.service != mdp.MMI_SERVICE:
            answer = b"501"
        else:
            asked = request.body[0] if request.body else b""
            callable_ = self.policy is None or (
                client is not None and self.policy.may_call(client, asked)
            )
            answer = b"200" if callable_ and self.scheduler.offers(asked) else b"404"
        self.scheduler.replies_forwarded += 1
        self.scheduler.to_client(frontend.answer(request, [answer]), None)

    def _disconnect(self, worker_id: bytes, dialect: dialects.Dialect | None) -> None:
        """Tell a worker the broker does not know that it should register again."""
        if dialect is not None:
            self.scheduler.command(worker_id, dialect, "disconnect")


def _service_of(worker: Worker | None, event: object) -> bytes | None:
    """The service a worker registers for, or serves; ``None`` if the message does not say."""
    if type(event) is dialects.Ready:
        return event.service
    return None if worker is None else worker.service.name
