"""Load-balancing rules, driven through the Balancer with frames and made-up time.

No sockets, no clock: workers of each dialect and clients are frames fed to a
:class:`~zmqrelay._core.balancer.Balancer`, time is a number passed in, and what the balancer
decides is read back off its two outboxes. The helpers here (:class:`Peer`, :func:`ask`,
:func:`take`, :class:`Wire`) also serve ``test_core_services``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zmqrelay._core import lbwire, mdp, tag, timers
from zmqrelay._core.balancer import Balancer, Unreachable
from zmqrelay._core.dialects import DialectName
from zmqrelay._core.refusal import BY_ERROR_NAME, BY_STATUS, Refusal
from zmqrelay._core.request import Request
from zmqrelay._core.scheduler import SchedulerStatistics
from zmqrelay._core.worker import PLAIN_ERROR_PREFIX

# -- peers on the wire ---------------------------------------------------------------------

T = TypeVar("T")
Command = Literal["heartbeat", "leaving", "disconnect"]
_ZRW_COMMANDS = {
    "heartbeat": lbwire.HEARTBEAT,
    "leaving": lbwire.LEAVING,
    "disconnect": lbwire.DISCONNECT,
}


@dataclass(frozen=True)
class Peer:
    """A worker, as the frames it sends the broker's backend in its dialect."""

    id: bytes
    dialect: DialectName = "zmqrelay"

    @property
    def variant(self) -> mdp.Variant:
        variant = mdp.as_variant(self.dialect)
        assert variant is not None, f"{self.dialect} is no Majordomo dialect"
        return variant

    @property
    def zmqrelay(self) -> bool:
        """Whether it speaks zmqrelay's worker protocol (either version)."""
        return self.dialect in ("zmqrelay", "zmqrelay-1")

    def can(self, command: Command) -> bool:
        """Whether its dialect has ``command``."""
        return self.zmqrelay or (self.dialect != "guide" and command != "leaving")

    def ready(self, service: bytes = b"", credits: int = 1) -> list[bytes]:
        if self.dialect == "guide":
            return [self.id, b"", b"READY"]
        if self.dialect == "zmqrelay":
            return [self.id, *lbwire.encode_ready(credits, service)]
        if self.dialect == "zmqrelay-1":
            named = [service] if service else []
            return [self.id, *ZRW1_HEADER, lbwire.READY, b"%d" % credits, *named]
        return [self.id, *mdp.encode_ready(self.variant, service)]

    def say(self, command: Command) -> list[bytes]:
        assert self.can(command)
        if self.dialect == "zmqrelay":
            return [self.id, *lbwire.encode_command_to_broker(_ZRW_COMMANDS[command])]
        if self.dialect == "zmqrelay-1":
            return [self.id, *ZRW1_HEADER, _ZRW_COMMANDS[command]]
        return [self.id, *mdp.encode_to_broker(self.variant, command)]

    def reply(
        self, token: bytes, body: Iterable[bytes] = (b"r",), *, partial: bool = False
    ) -> list[bytes]:
        if self.dialect == "guide":
            assert not partial
            return [self.id, b"", token, b"", *body]
        status = tag.Status.PARTIAL if partial else tag.Status.OK
        if self.dialect == "zmqrelay":
            return [self.id, *lbwire.encode_reply(token, status, list(body))]
        if self.dialect == "zmqrelay-1":
            return [self.id, *ZRW1_HEADER, lbwire.REPLY, token, bytes([status]), *body]
        assignment = mdp.MdpAssignment(self.variant, token, [])
        frames = assignment.partial(list(body)) if partial else assignment.reply(list(body))
        assert frames is not None
        return [self.id, *frames]


class Sent(NamedTuple):
    """A request as its worker reads it."""

    worker: bytes
    token: bytes
    body: list[bytes]
    redelivery: bool


class Outbox(NamedTuple):
    """What the balancer said: messages to clients, requests and commands to workers."""

    clients: list[list[bytes]]
    requests: list[Sent]
    commands: list[tuple[bytes, str]]


NOTHING = Outbox([], [], [])
_MDP_HEADERS: dict[bytes, mdp.Variant] = {mdp.WORKER_01: "mdp-0.1", mdp.WORKER_02: "majortomo"}


ZRW1_HEADER = [b"", b"ZRW1"]


def read_zrw1(rest: list[bytes]) -> lbwire.Assignment | str:
    """What a ZRW1 worker reads after the header: a REQUEST or a command."""
    command = rest[0]
    if command == lbwire.REQUEST:
        reply_to, flags, milliseconds, *body = rest[1:]
        timeout = int(milliseconds) / 1000 if milliseconds else None
        return lbwire.Assignment(reply_to, flags == b"\x01", timeout, body)
    assert len(rest) == 1
    return "heartbeat" if command == lbwire.HEARTBEAT else "disconnect"


def read_sent(message: list[bytes], token: bytes | None) -> Sent | str:
    """What its worker reads in a message of the backend outbox: a request, or a command."""
    worker, rest = message[0], message[1:]
    got: lbwire.Assignment | mdp.MdpAssignment | str
    if rest[0] == mdp.WORKER_02:
        got = mdp.decode_from_broker("mdp-0.2", rest)
    elif rest[0].startswith(lbwire.PROTOCOL):
        got = lbwire.decode_from_broker(rest)
    elif rest[:2] == ZRW1_HEADER:
        got = read_zrw1(rest[2:])
    elif rest[1] in _MDP_HEADERS:
        got = mdp.decode_from_broker(_MDP_HEADERS[rest[1]], rest)
    else:  # the guide's: [empty, reply-to, empty, body...]
        assert (rest[0], rest[2], token) == (b"", b"", rest[1])
        return Sent(worker, rest[1], rest[3:], False)
    if isinstance(got, str):
        assert token is None
        return got
    assert got.reply_to == token
    return Sent(worker, got.reply_to, got.body, got.redelivery)


def drain(outbox: list[T]) -> list[T]:
    """Empty an outbox (it stays the same list), as the socket loop does before sending."""
    messages = outbox.copy()
    outbox.clear()
    return messages


def take(balancer: Balancer) -> Outbox:
    """Empty both outboxes, as the socket loop sends them."""
    out = Outbox([message for message, _ in drain(balancer.to_clients)], [], [])
    for message, token in drain(balancer.to_workers):
        sent = read_sent(message, token)
        if isinstance(sent, Sent):
            out.requests.append(sent)
        else:
            out.commands.append((message[0], sent))
    return out


def ask(
    client: bytes,
    body: bytes = b"",
    *,
    service: bytes | None = None,
    timeout: float | None = None,
    redeliveries: int | None = None,
    dialect: mdp.Variant = "majortomo",
) -> list[bytes]:
    """A client's request (its body the client's id unless given).

    Plain without ``service``, else in a Majordomo ``dialect``; tagged, as zmqrelay's clients
    send them, when it says a ``timeout`` or ``redeliveries``.
    """
    hops = [client]
    if timeout is not None or redeliveries is not None:
        hops.append(tag.encode(1, timeout=timeout, redeliveries=redeliveries or 0))
    body = body or client
    if service is None:
        return [*hops, b"", body]
    return [*hops, *mdp.encode_request(dialect, service, [body])]


def refusal_of(message: list[bytes]) -> Refusal | None:
    """The refusal a message to a client tells of (in its tag, or in a plain error frame)."""
    found = tag.decode(message[1]) if len(message) > 1 else None
    if found is not None:
        return BY_STATUS.get(found.status)
    if message[-1].startswith(PLAIN_ERROR_PREFIX):
        name = message[-1][len(PLAIN_ERROR_PREFIX) :].split(b":")[0]
        return BY_ERROR_NAME.get(name.decode())
    return None


def counts(balancer: Balancer) -> SchedulerStatistics:
    found = balancer.statistics().scheduler
    assert found is not None
    return found


def workers_told(out: Outbox, command: str) -> list[bytes]:
    return [worker for worker, said in out.commands if said == command]


# -- the rules, one scenario each ------------------------------------------------------------


def test_least_recently_used_worker_with_credit_gets_the_request() -> None:
    balancer = Balancer()
    a, b = Peer(b"a"), Peer(b"b")
    balancer.from_worker(a.ready(credits=1), 0)
    balancer.from_worker(b.ready(credits=2), 1)
    for n in range(3):
        balancer.from_client(ask(b"c", b"%d" % n), 2)
    first, second, third = take(balancer).requests
    assert [first.worker, second.worker, third.worker] == [b"a", b"b", b"b"]
    balancer.from_client(ask(b"c", b"queued"), 3)
    assert take(balancer) == NOTHING
    assert counts(balancer).queued == 1
    # a's reply frees its credit: the queued request goes to a at once.
    balancer.from_worker(a.reply(first.token, [b"r"]), 4)
    out = take(balancer)
    assert out.clients == [[b"c", b"", b"r"]]
    assert [(sent.worker, sent.body) for sent in out.requests] == [(b"a", [b"queued"])]


def test_a_full_queue_refuses_at_once_and_a_long_wait_ends_in_a_typed_refusal() -> None:
    balancer = Balancer(queue_limit=1, queue_timeout=5)
    balancer.from_client(ask(b"c1", redeliveries=0), 0)  # tagged: it reads a status
    balancer.from_client(ask(b"c2"), 0)  # plain: it reads an error frame
    (busy,) = take(balancer).clients
    assert (busy[0], refusal_of(busy)) == (b"c2", Refusal.BUSY)
    assert balancer.next_wakeup() == 5
    balancer.tick(5)
    (waited,) = take(balancer).clients
    assert (waited[0], refusal_of(waited)) == (b"c1", Refusal.NO_WORKERS)


def test_deadlines_end_queued_and_in_flight_requests_and_late_replies_still_return_credit() -> (
    None
):
    balancer = Balancer()
    w = Peer(b"w")
    balancer.from_worker(w.ready(), 0)
    balancer.from_client(ask(b"c1", timeout=2), 0)
    balancer.from_client(ask(b"c2", timeout=1), 0)
    (sent,) = take(balancer).requests
    balancer.tick(2)
    refused = {(message[0], refusal_of(message)) for message in take(balancer).clients}
    assert refused == {(b"c1", Refusal.DEADLINE), (b"c2", Refusal.DEADLINE)}
    balancer.from_worker(w.reply(sent.token, [b"late"]), 3)
    assert take(balancer) == NOTHING
    stats = counts(balancer)
    assert (stats.late_replies, stats.free_credits, stats.in_flight) == (1, 1, 0)


def test_a_silent_worker_dies_and_its_requests_end_or_go_again() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=3)
    a, b = Peer(b"a"), Peer(b"b")
    balancer.from_worker(a.ready(credits=2), 0)
    balancer.from_client(ask(b"c1"), 0)
    balancer.from_client(ask(b"c2", redeliveries=1), 0)
    assert [sent.worker for sent in take(balancer).requests] == [b"a", b"a"]
    balancer.from_worker(b.ready(), 2.5)
    take(balancer)
    balancer.tick(3)
    out = take(balancer)
    assert workers_told(out, "disconnect") == [b"a"]
    assert [(message[0], refusal_of(message)) for message in out.clients] == [
        (b"c1", Refusal.WORKER_DIED)
    ]
    (again,) = out.requests
    assert (again.worker, again.body, again.redelivery) == (b"b", [b"c2"], True)
    assert counts(balancer).dead_workers == 1


def test_heartbeats_go_to_workers_sent_nothing_for_an_interval() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=3)
    a = Peer(b"a")
    balancer.from_worker(a.ready(), 0)
    assert take(balancer) == Outbox([], [], [(b"a", "heartbeat")])  # READY is answered
    assert balancer.next_wakeup() == 1
    balancer.tick(1)
    assert take(balancer) == Outbox([], [], [(b"a", "heartbeat")])
    balancer.from_worker(a.say("heartbeat"), 1.5)  # heard from
    balancer.from_client(ask(b"c"), 1.5)  # and sent something
    assert [sent.worker for sent in take(balancer).requests] == [b"a"]
    balancer.tick(2)
    assert take(balancer) == NOTHING
    assert balancer.next_wakeup() == 2.5


def test_a_leaving_worker_finishes_what_it_holds_then_is_forgotten() -> None:
    balancer = Balancer()
    w = Peer(b"w")
    balancer.from_worker(w.ready(credits=2), 0)
    balancer.from_client(ask(b"c"), 0)
    (held,) = take(balancer).requests
    balancer.from_worker(w.say("leaving"), 1)
    balancer.from_client(ask(b"d"), 1)  # queued: w takes no more
    assert take(balancer) == NOTHING
    assert counts(balancer).queued == 1
    balancer.from_worker(w.reply(held.token), 2)
    assert take(balancer) == Outbox([[b"c", b"", b"r"]], [], [(b"w", "disconnect")])
    assert counts(balancer).workers == 0


def test_a_request_that_could_not_be_sent_goes_back_to_the_queue_as_it_was() -> None:
    balancer = Balancer()
    balancer.from_worker(Peer(b"gone").ready(), 0)
    balancer.from_client(ask(b"c", redeliveries=1), 0)
    (sent,) = take(balancer).requests
    balancer.worker_unreachable(b"gone", "gone", sent.token, 1)
    assert take(balancer) == Outbox([], [], [(b"gone", "disconnect")])
    stats = counts(balancer)
    assert (stats.workers, stats.queued, stats.redelivered) == (0, 1, 0)
    balancer.from_worker(Peer(b"next").ready(), 2)
    (again,) = take(balancer).requests
    assert (again.worker, again.body, again.redelivery) == (b"next", [b"c"], False)
    assert balancer.statistics().requests_forwarded == 1


def test_every_request_that_could_not_be_sent_goes_back_to_the_queue() -> None:
    balancer = Balancer()
    balancer.from_client(ask(b"c1"), 0)
    balancer.from_client(ask(b"c2"), 0)
    balancer.from_worker(Peer(b"gone").ready(credits=2), 0)  # it is gone before it hears
    messages = [entry for entry in drain(balancer.to_workers) if entry[1] is not None]
    (message, token), *rest = messages  # the two requests (its READY's acknowledgement aside)
    balancer.to_workers[:0] = rest  # as the loop: what it did not try goes back, then it says
    balancer.worker_unreachable(message[0], "gone", token, 0)
    assert take(balancer).clients == []
    assert counts(balancer).queued == 2


def test_invalid_settings_are_refused() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("positive", {"heartbeat_interval": 0}),
        ("positive", {"liveness": 0}),
        ("negative", {"queue_limit": -1}),
        ("negative", {"queue_timeout": -1}),
        ("negative", {"redeliveries": -1}),
    ]
    for message, setting in cases:
        with pytest.raises(ValueError, match=message):
            Balancer(**setting)


def test_workers_dying_together_do_not_pass_requests_to_each_other() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=2)
    balancer.from_worker(Peer(b"w1").ready(), 0)
    balancer.from_worker(Peer(b"w2").ready(), 0)
    balancer.from_client(ask(b"c", redeliveries=1), 0)
    (sent,) = take(balancer).requests
    assert sent.worker == b"w1"
    balancer.from_worker(Peer(b"w3").ready(), 1.5)
    take(balancer)
    balancer.tick(2)  # w1 and w2 are silent; w3 was heard at 1.5
    out = take(balancer)
    assert sorted(workers_told(out, "disconnect")) == [b"w1", b"w2"]
    (again,) = out.requests
    assert (again.worker, again.body) == (b"w3", [b"c"])


def test_a_redelivered_request_gets_a_fresh_queue_timeout() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=2, queue_timeout=1)
    balancer.from_worker(Peer(b"w").ready(), 0)
    balancer.from_client(ask(b"c", redeliveries=1), 0)
    take(balancer)
    balancer.tick(5)  # w died long after the request came in
    assert take(balancer).clients == []
    assert counts(balancer).queued == 1
    assert balancer.next_wakeup() == 6
    balancer.tick(6)
    (refused,) = take(balancer).clients
    assert refusal_of(refused) is Refusal.NO_WORKERS


def full_worker_and_a_waiting_request() -> tuple[Balancer, Peer]:
    """A worker whose queue met a request (it went to another), and a request waiting."""
    balancer = Balancer()
    full = Peer(b"full")
    balancer.from_worker(full.ready(credits=2), 0)
    balancer.from_worker(Peer(b"other").ready(), 0)
    balancer.from_client(ask(b"c1"), 0)
    (first,) = take(balancer).requests
    assert first.worker == b"full"
    balancer.worker_unreachable(b"full", "full", first.token, 1)
    (again,) = take(balancer).requests
    assert (again.worker, again.body) == (b"other", [b"c1"])
    balancer.from_client(ask(b"c2"), 1)
    assert take(balancer) == NOTHING  # queued: "full" takes nothing until heard from
    return balancer, full


def test_a_worker_whose_queue_is_full_keeps_its_place_but_gets_nothing_until_heard() -> None:
    balancer, full = full_worker_and_a_waiting_request()
    assert counts(balancer).free_credits == 2
    balancer.from_worker(full.say("heartbeat"), 2)
    assert counts(balancer).workers == 2


def test_a_full_worker_heard_from_again_takes_the_waiting_request() -> None:
    balancer, full = full_worker_and_a_waiting_request()
    balancer.from_worker(full.say("heartbeat"), 2)
    sent = [(sent.worker, sent.body) for sent in take(balancer).requests]
    assert sent == [(b"full", [b"c2"])]


def test_a_tick_at_the_announced_wake_up_ends_a_request_that_waited_too_long() -> None:
    balancer = Balancer(queue_timeout=4)
    balancer.from_client(ask(b"c"), 0.1)
    wake_up = balancer.next_wakeup()
    assert wake_up == 0.1 + 4
    balancer.tick(wake_up)
    assert [refusal_of(message) for message in take(balancer).clients] == [Refusal.NO_WORKERS]
    assert balancer.next_wakeup() is None


def test_a_tick_at_each_announced_wake_up_sends_a_heartbeat() -> None:
    balancer = Balancer(heartbeat_interval=0.3, liveness=100)
    balancer.from_worker(Peer(b"w").ready(), 0)
    take(balancer)
    for _ in range(3):
        wake_up = balancer.next_wakeup()
        assert wake_up is not None
        balancer.tick(wake_up)
        assert take(balancer).commands == [(b"w", "heartbeat")]


def live_requests() -> int:
    gc.collect()
    return sum(isinstance(thing, Request) for thing in gc.get_objects())


def test_the_deadline_timers_stay_the_size_of_what_is_pending() -> None:
    balancer = Balancer()
    w = Peer(b"w")
    balancer.from_worker(w.ready(), 0)
    before = live_requests()
    for n in range(10_000):
        balancer.from_client(ask(b"c", timeout=30), n)
        (sent,) = take(balancer).requests
        balancer.from_worker(w.reply(sent.token), n)
    take(balancer)
    # Answered requests leave their deadlines behind; they are swept now and then, with the
    # bodies they hold.
    assert live_requests() - before < 3000
    assert balancer.pending == 0


def test_queueing_requests_costs_each_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_at = 0
    still_queued = timers._still_queued

    def counting(enqueued_at: float, request: Request) -> bool:
        nonlocal looked_at
        looked_at += 1
        return still_queued(enqueued_at, request)

    monkeypatch.setattr(timers, "_still_queued", counting)
    balancer = Balancer()
    for n in range(2_000):
        balancer.from_client(ask(b"c%d" % n), 0)
    assert counts(balancer).queued == 2_000
    assert looked_at < 10 * 2_000


# -- patient workers (Majordomo's, which cannot heartbeat while they work) -------------------

PATIENT = Peer(b"mdp", "majortomo")


def patient_balancer() -> Balancer:
    balancer = Balancer(heartbeat_interval=1, liveness=3)
    balancer.from_worker(PATIENT.ready(), 0)
    assert take(balancer) == NOTHING
    return balancer


def test_a_patient_worker_is_judged_by_its_silence_only_while_it_holds_no_live_request() -> None:
    balancer = patient_balancer()
    balancer.from_client(ask(b"c", timeout=10), 0)
    (sent,) = take(balancer).requests
    # Busy and silent far past liveness: not dead, and nothing due but its heartbeat.
    balancer.tick(5)
    assert take(balancer) == Outbox([], [], [(b"mdp", "heartbeat")])
    assert balancer.next_wakeup() == 6
    balancer.from_worker(PATIENT.reply(sent.token), 6)
    (reply,) = take(balancer).clients
    assert (reply[0], reply[-1], refusal_of(reply)) == (b"c", b"r", None)
    # Idle again, its silence counts as anyone's.
    balancer.tick(9)
    assert workers_told(take(balancer), "disconnect") == [b"mdp"]
    assert counts(balancer).dead_workers == 1


def test_a_patient_worker_gets_liveness_intervals_of_grace_after_its_request_ended() -> None:
    balancer = patient_balancer()
    balancer.from_client(ask(b"c", timeout=4), 0)
    (sent,) = take(balancer).requests
    balancer.tick(4)
    out = take(balancer)
    assert [refusal_of(message) for message in out.clients] == [Refusal.DEADLINE]
    # Silent since 0, but it may still be at work: judged from the deadline on, not before.
    assert workers_told(out, "disconnect") == []
    assert balancer.next_wakeup() == 5  # a heartbeat; its silence is due at 4 + 3
    balancer.tick(6.9)
    assert workers_told(take(balancer), "disconnect") == []
    # A late reply within the grace is dropped as late, and the worker serves on.
    balancer.from_worker(PATIENT.reply(sent.token, [b"late"]), 6.9)
    assert take(balancer) == NOTHING
    assert counts(balancer).late_replies == 1
    balancer.from_client(ask(b"d"), 7)
    assert [sent.worker for sent in take(balancer).requests] == [b"mdp"]


def test_a_patient_worker_that_never_answers_dies_after_its_grace() -> None:
    balancer = patient_balancer()
    balancer.from_client(ask(b"c", timeout=4), 0)
    balancer.tick(4)
    take(balancer)
    balancer.tick(7)
    assert workers_told(take(balancer), "disconnect") == [b"mdp"]
    assert balancer.next_wakeup() is None


def test_a_patient_worker_that_heartbeats_while_busy_is_judged_as_any_other() -> None:
    balancer = patient_balancer()
    balancer.from_client(ask(b"c", timeout=60, redeliveries=1), 0)
    take(balancer)
    # It can heartbeat while it works: then it must.
    balancer.from_worker(PATIENT.say("heartbeat"), 1)
    balancer.from_worker(Peer(b"other").ready(), 3.5)
    take(balancer)
    balancer.tick(4)
    # Silent since 1, dead at 4, long before the request's deadline: it goes to another.
    out = take(balancer)
    assert workers_told(out, "disconnect") == [b"mdp"]
    (again,) = out.requests
    assert (again.worker, again.body, again.redelivery) == (b"other", [b"c"], True)


def test_a_heartbeat_crossing_a_dispatch_keeps_a_patient_worker_patient() -> None:
    balancer = patient_balancer()
    balancer.from_client(ask(b"c", b"a long job"), 2.5)
    take(balancer)
    # Sent just before the worker saw the request (the guide's Majordomo worker heartbeats
    # right after each reply): it says nothing about heartbeats while working.
    balancer.from_worker(PATIENT.say("heartbeat"), 2.5005)
    for half_seconds in range(6, 24):
        balancer.tick(half_seconds / 2)
        assert workers_told(take(balancer), "disconnect") == []
    assert counts(balancer).workers == 1


def test_a_request_whose_worker_dies_as_its_deadline_passes_ends_once() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=3)
    balancer.from_worker(Peer(b"w").ready(), 0)
    balancer.from_client(ask(b"c", timeout=3.5), 0)
    take(balancer)
    balancer.tick(4)  # the loop comes late: w is dead since 3, the deadline was 3.5
    ended = [refusal_of(message) for message in take(balancer).clients]
    assert ended in ([Refusal.WORKER_DIED], [Refusal.DEADLINE])
    assert counts(balancer).refused == 1


# -- a model of the socket loop and of the peers around it ----------------------------------


@dataclass
class Asked:
    """One client's request, as the model follows it."""

    service: bytes
    deadline: bool
    finals: int = 0
    """Replies and refusals it got: never more than one."""
    streamed: bool = False
    """Its worker sent a part of the reply: it must never be sent again."""
    broken: bool = False
    """A part met a full client queue: the rest ends in a refusal."""


class Wire:
    """The socket loop around a Balancer, and a model of the workers and clients around it.

    After each input it sends both outboxes as the loop does, reporting the sends that fail,
    and checks every message against the model as it goes out. A worker *vanishes* when it
    goes unseen: it says nothing more, and every send to it fails as ``"gone"``.
    """

    def __init__(self, balancer: Balancer, peers: Iterable[Peer]) -> None:
        self.balancer = balancer
        self.now = 0.0
        self.peers = {peer.id: peer for peer in peers}
        self.registered: dict[bytes, bytes] = {}
        """Each worker the broker knows, and its service."""
        self.leaving: set[bytes] = set()
        self.vanished: set[bytes] = set()
        self.hung_up: set[bytes] = set()
        """Workers that said DISCONNECT (and have not said READY since)."""
        self.held: dict[bytes, tuple[bytes, bytes]] = {}
        """Requests workers got and have not answered, by token: (worker, client)."""
        self.asked: dict[bytes, Asked] = {}
        self.answers: list[list[bytes]] = []
        """What the broker answered itself (MMI)."""
        self.sent = self.delivered = self.refused = 0
        self.full_next = False
        """Whether the next request for a worker meets its full queue."""
        self.client_trouble: Unreachable | None = None
        """What the next message for a client meets."""

    # -- inputs ----------------------------------------------------------------------------

    def from_worker(self, frames: list[bytes]) -> None:
        self.balancer.from_worker(frames, self.now)
        self.flush()

    def from_client(self, frames: list[bytes]) -> None:
        self.balancer.from_client(frames, self.now)
        self.flush()

    def request(self, frames: list[bytes], service: bytes) -> None:
        found = tag.decode(frames[1]) if len(frames) > 1 else None
        self.asked[frames[0]] = Asked(service, found is not None and found.timeout is not None)
        self.from_client(frames)

    def mmi(self, service: bytes) -> None:
        """Ask the broker whether ``service`` is offered: yes while a worker it knows, not
        leaving, offers it."""
        self.from_client([b"m", *mdp.encode_request("majortomo", mdp.MMI_SERVICE, [service])])
        (answer,) = self.answers
        self.answers.clear()
        offered = any(
            offers == service and worker not in self.leaving
            for worker, offers in self.registered.items()
        )
        assert answer[-1] == (b"200" if offered else b"404")

    def ready(self, worker: bytes, service: bytes = b"", credits: int = 1) -> None:
        peer = self.peers[worker]
        if peer.dialect == "guide":
            self.forget(worker)  # a guide worker says READY when it starts: it restarted
            self.vanished.discard(worker)
        if worker in self.vanished:
            return
        known = worker in self.registered
        if known and peer.dialect != "guide" and not peer.zmqrelay:
            pass  # a Majordomo worker says READY once: again, it is told DISCONNECT
        else:
            if self.registered.get(worker, service) != service:
                self.forget(worker)  # it moves to another service: what it held is over
            self.registered[worker] = service
            self.leaving.discard(worker)
        self.hung_up.discard(worker)
        self.from_worker(peer.ready(service, credits))

    def say(self, worker: bytes, command: Command) -> None:
        peer = self.peers[worker]
        if not peer.can(command) or worker in self.vanished | self.hung_up:
            return
        if command == "leaving" and worker in self.registered:
            self.leaving.add(worker)
        elif command == "disconnect":
            self.forget(worker)
            self.hung_up.add(worker)
        self.from_worker(peer.say(command))

    @property
    def answerable(self) -> list[bytes]:
        """Tokens that a worker still there may answer."""
        return sorted(
            token for token, (worker, _) in self.held.items() if worker not in self.vanished
        )

    def reply(self, token: bytes, *, partial: bool = False) -> None:
        worker, client = self.held[token]
        if partial:
            self.asked[client].streamed = True
        else:
            del self.held[token]
        self.from_worker(self.peers[worker].reply(token, [b"re:" + client], partial=partial))

    @property
    def beating(self) -> list[bytes]:
        """Workers that heartbeat now: all still there that can, but busy Majordomo ones."""
        busy = {worker for worker, _ in self.held.values()}
        return [
            worker
            for worker in self.registered
            if self.peers[worker].can("heartbeat")
            and worker not in self.vanished
            and (self.peers[worker].zmqrelay or worker not in busy)
        ]

    def wait(self, seconds: float, *, late: bool = False) -> None:
        """Time passes: the loop ticks at each wake-up, or only once at the end when ``late``.

        First, each worker that can heartbeat does (so that only a worker that vanished, or a
        busy patient one, falls silent for long).

        A tick never leaves its own wake-up due.
        """
        for worker in self.beating:
            self.from_worker(self.peers[worker].say("heartbeat"))
        until = self.now + seconds
        balancer = self.balancer
        while (due := balancer.next_wakeup()) is not None and due <= until:
            now = until if late else max(due, self.now)
            self.now = now
            balancer.tick(now)
            self.flush()
            after = balancer.next_wakeup()
            assert after is None or after > now, "a tick leaves its own wake-up due"
        self.now = max(self.now, until)

    def forget(self, worker: bytes) -> None:
        """The broker no longer knows ``worker``: what it held ends or goes to another."""
        self.registered.pop(worker, None)
        self.leaving.discard(worker)
        for token in [token for token, (held_by, _) in self.held.items() if held_by == worker]:
            del self.held[token]

    # -- the outboxes, sent as the socket loop sends them ------------------------------------

    def flush(self) -> None:
        balancer = self.balancer
        to_workers, to_clients = balancer.to_workers, balancer.to_clients
        while to_workers or to_clients:
            # As the socket loop: on a failed send, what was not handed to the socket goes
            # back to the outbox before the balancer hears of the failure.
            messages = drain(to_workers)
            for index, (message, token) in enumerate(messages):
                failed = self.to_worker(message, token)
                if failed is not None:
                    to_workers[:0] = messages[index + 1 :]
                    balancer.worker_unreachable(message[0], failed, token, self.now)
                    break
            replies = drain(to_clients)
            for index, (message, stream) in enumerate(replies):
                trouble = self.to_client(message, stream)
                if trouble is not None:
                    to_clients[:0] = replies[index + 1 :]
                    balancer.client_unreachable(message, trouble, stream, self.now)
                    break

    def to_worker(self, message: list[bytes], token: bytes | None) -> Unreachable | None:
        """Check a message for a worker; returns why it cannot be sent, if it cannot."""
        worker = message[0]
        assert worker not in self.hung_up, "a message for a worker that said DISCONNECT"
        sent = read_sent(message, token)
        if sent == "heartbeat":
            assert worker in self.registered, "a heartbeat for a worker the broker forgot"
        elif isinstance(sent, Sent):
            asked = self.asked[sent.body[0]]
            assert not asked.streamed, "sent again after a part of its reply came"
            # (Unless a send of the same batch found it gone: it was known when dispatched.)
            if worker in self.registered or worker not in self.vanished:
                assert self.registered.get(worker) == asked.service, "not of its service"
                assert worker not in self.leaving, "a request for a leaving worker"
        if sent == "disconnect" or (isinstance(sent, Sent) and worker in self.vanished):
            self.forget(worker)  # a request that cannot be sent makes the broker forget it
        if worker in self.vanished:
            return "gone"
        if isinstance(sent, Sent):
            if self.full_next:
                self.full_next = False
                return "full"
            self.sent += 1
            self.held[sent.token] = (worker, sent.body[0])
        return None

    def to_client(self, message: list[bytes], stream: Request | None) -> Unreachable | None:
        """Check a message for a client; returns why it cannot be sent, if it cannot."""
        client = message[0]
        asked = self.asked.get(client)
        if asked is None:
            self.answers.append(message)
            return None
        trouble, self.client_trouble = self.client_trouble, None
        if trouble == "full":
            return trouble  # it waits in the broker and comes again as the client reads
        refusal = refusal_of(message)
        if stream is not None:
            assert (refusal, message[-1]) == (None, b"re:" + client), "a part for another"
            return trouble
        asked.finals += 1
        if refusal is None:
            assert message[-1] == b"re:" + client, "a reply reached the wrong client"
            assert not asked.broken, "a reply with a gap, as if whole"
            self.delivered += 1
        elif asked.broken and refusal is Refusal.BUSY and b"lost" in message[-1]:
            self.delivered += 1  # the final part came, and told the client what was lost
        else:
            self.refused += 1
        return trouble

    # -- what must always hold -------------------------------------------------------------

    def check(self) -> None:
        balancer = self.balancer
        scheduler = balancer.scheduler
        assert all(asked.finals <= 1 for asked in self.asked.values()), "answered twice"
        assert all(worker.credits >= 0 for worker in scheduler.workers.values())
        assert balancer.pending == sum(not asked.finals for asked in self.asked.values())
        assert {id_: worker.service.name for id_, worker in scheduler.workers.items()} == (
            self.registered
        )
        stats = counts(balancer)
        if not scheduler.backlog:  # an answer waiting for its client's queue is counted already
            assert (stats.delivered, stats.refused) == (self.delivered, self.refused)
        assert balancer.statistics().requests_forwarded == self.sent

    def finish(self) -> None:
        """Every worker goes, and time passes: every request ends, exactly once.

        All but those held by a worker gone unseen whose silence does not count (a guide
        worker, or a patient one), with no deadline: their clients wait for ever.
        """
        for worker, peer in self.peers.items():
            if peer.can("disconnect"):
                self.say(worker, "disconnect")
        guides = {worker for worker, peer in self.peers.items() if peer.dialect == "guide"}
        while answering := [t for t in self.answerable if self.held[t][0] in guides]:
            self.reply(answering[0])
        self.vanished |= guides
        for _ in range(5):
            self.wait(100)
        scheduler = self.balancer.scheduler
        stuck: set[bytes] = set()
        for known in scheduler.workers.values():
            assert known.id in self.vanished
            assert known.patient or not known.dialect.heartbeats
            for request in known.held.values():
                if not request.ended:
                    assert request.deadline is None
                    stuck.add(request.envelope[0])
        assert scheduler.queued == 0
        for client, asked in self.asked.items():
            assert asked.finals == (client not in stuck), (client, asked)
        assert self.balancer.pending == len(stuck)


# -- the rules together, in any order ------------------------------------------------------

WORKERS = (
    Peer(b"g1", "guide"),
    Peer(b"g2", "guide"),
    Peer(b"z1"),
    Peer(b"z2", "zmqrelay-1"),
    Peer(b"m1", "majortomo"),
    Peer(b"m2", "mdp-0.2"),
)
ids = st.sampled_from([peer.id for peer in WORKERS])


def machine_balancer() -> Balancer:
    """A balancer for the state machines: whole seconds and milliseconds, so that worker
    checks, deadlines and queue timeouts come due together."""
    return Balancer(heartbeat_interval=1.0, liveness=3, queue_limit=5, queue_timeout=4)


class WireMachine(RuleBasedStateMachine):
    """What every machine driving a :class:`Wire` does: queues fill, time passes, the model
    holds."""

    wire: Wire

    @rule()
    def a_worker_queue_fills(self) -> None:
        self.wire.full_next = True

    @rule(seconds=st.floats(0, 2.5))
    def time_passes(self, seconds: float) -> None:
        self.wire.wait(seconds)

    @rule(seconds=st.floats(0, 2.5))
    def the_loop_comes_late(self, seconds: float) -> None:
        self.wire.wait(seconds, late=True)

    @invariant()
    def the_model_holds(self) -> None:
        self.wire.check()


class SchedulerMachine(WireMachine):
    """Workers of three dialects come, go, vanish and fall silent; clients ask; time passes."""

    def __init__(self) -> None:
        super().__init__()
        self.wire = Wire(machine_balancer(), WORKERS)
        self.clients = 0

    @rule(worker=ids, credits=st.integers(1, 3))
    def worker_ready(self, worker: bytes, credits: int) -> None:
        self.wire.ready(worker, b"", credits)

    @rule(
        timeout=st.none() | st.floats(0.001, 10),
        redeliveries=st.none() | st.integers(0, 2),
    )
    def client_asks(self, timeout: float | None, redeliveries: int | None) -> None:
        self.clients += 1
        self.wire.request(
            ask(b"c%d" % self.clients, timeout=timeout, redeliveries=redeliveries), b""
        )

    @rule()
    def client_asks_mmi(self) -> None:
        self.wire.mmi(b"")

    @precondition(lambda self: bool(self.wire.answerable))
    @rule(data=st.data())
    def worker_replies(self, data: st.DataObject) -> None:
        self.wire.reply(data.draw(st.sampled_from(self.wire.answerable)))

    @rule(worker=ids, command=st.sampled_from(["heartbeat", "leaving", "disconnect"]))
    def worker_says(self, worker: bytes, command: Command) -> None:
        self.wire.say(worker, command)

    @rule(worker=ids)
    def worker_vanishes(self, worker: bytes) -> None:
        self.wire.vanished.add(worker)

    def teardown(self) -> None:
        self.wire.finish()


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
