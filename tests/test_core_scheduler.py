"""The load-balancing scheduler, driven by hand with made-up time: no sockets, no clock."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zmqrelay._core.scheduler import (
    Action,
    Deliver,
    Dispatch,
    Forget,
    Heartbeat,
    Refusal,
    Refuse,
    Scheduler,
)


def dispatches(actions: list[Action]) -> list[Dispatch]:
    return [action for action in actions if isinstance(action, Dispatch)]


def test_least_recently_used_worker_with_credit_gets_the_request() -> None:
    scheduler = Scheduler()
    scheduler.ready(b"a", 1, now=0)
    scheduler.ready(b"b", 2, now=1)
    first, second, third = (
        dispatches(scheduler.request([b"c"], [b"%d" % n], now=2))[0] for n in range(3)
    )
    assert [first.worker, second.worker, third.worker] == [b"a", b"b", b"b"]
    assert scheduler.request([b"c"], [b"queued"], now=3) == []
    assert scheduler.statistics().queued == 1
    # a's reply frees its credit: the queued request goes to a at once.
    actions = scheduler.reply(b"a", first.token, [b"r"], now=4)
    assert actions[0] == Deliver(first.request, [b"r"])
    assert dispatches(actions)[0].worker == b"a"


def test_a_full_queue_refuses_at_once_and_a_long_wait_ends_in_a_typed_refusal() -> None:
    scheduler = Scheduler(queue_limit=1, queue_timeout=5)
    assert scheduler.request([b"c1"], [b"x"], now=0) == []
    (busy,) = scheduler.request([b"c2"], [b"y"], now=0)
    assert isinstance(busy, Refuse)
    assert busy.reason is Refusal.BUSY
    assert scheduler.next_wakeup() == 5
    (refusal,) = scheduler.tick(now=5)
    assert isinstance(refusal, Refuse)
    assert (refusal.request.envelope, refusal.reason) == ([b"c1"], Refusal.NO_WORKERS)


def test_deadlines_end_queued_and_in_flight_requests_and_late_replies_still_return_credit() -> (
    None
):
    scheduler = Scheduler()
    scheduler.ready(b"w", 1, now=0)
    (sent,) = dispatches(scheduler.request([b"c1"], [b"x"], now=0, deadline=2))
    scheduler.request([b"c2"], [b"y"], now=0, deadline=1)
    actions = scheduler.tick(now=2)
    assert {(a.request.envelope[0], a.reason) for a in actions if isinstance(a, Refuse)} == {
        (b"c1", Refusal.DEADLINE),
        (b"c2", Refusal.DEADLINE),
    }
    assert scheduler.reply(b"w", sent.token, [b"late"], now=3) == []
    stats = scheduler.statistics()
    assert (stats.late_replies, stats.free_credits, stats.in_flight) == (1, 1, 0)


def test_a_silent_worker_dies_and_its_requests_end_or_go_again() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"a", 2, now=0)
    (once,) = dispatches(scheduler.request([b"c1"], [b"x"], now=0))
    assert dispatches(scheduler.request([b"c2"], [b"y"], now=0, retries=1))
    scheduler.ready(b"b", 1, now=2.5)
    actions = scheduler.tick(now=3)
    assert Forget(b"a") in actions
    assert Refuse(once.request, Refusal.WORKER_DIED) in actions
    (again,) = dispatches(actions)
    assert (again.worker, again.request.envelope, again.request.redelivery) == (
        b"b",
        [b"c2"],
        True,
    )
    assert scheduler.statistics().dead_workers == 1


def test_heartbeats_go_to_workers_sent_nothing_for_an_interval() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"a", 1, now=0)
    assert scheduler.next_wakeup() == 1
    assert scheduler.tick(now=1) == [Heartbeat(b"a")]
    scheduler.heard_from(b"a", now=1.5)
    scheduler.sent_to(b"a", now=1.5)
    assert scheduler.tick(now=2) == []


def test_a_leaving_worker_finishes_what_it_holds_then_is_forgotten() -> None:
    scheduler = Scheduler()
    scheduler.ready(b"w", 2, now=0)
    (held,) = dispatches(scheduler.request([b"c"], [b"x"], now=0))
    assert scheduler.leave(b"w", now=1) == []
    assert scheduler.request([b"d"], [b"y"], now=1) == []  # queued: w takes no more
    actions = scheduler.reply(b"w", held.token, [b"r"], now=2)
    assert actions == [Deliver(held.request, [b"r"]), Forget(b"w")]


def test_a_request_that_could_not_be_sent_goes_back_to_the_queue_as_it_was() -> None:
    scheduler = Scheduler()
    scheduler.ready(b"gone", 1, now=0)
    (sent,) = dispatches(scheduler.request([b"c"], [b"x"], now=0))
    assert scheduler.unsent(b"gone", sent.token, now=1) == [Forget(b"gone")]
    assert scheduler.statistics().queued == 1
    (again,) = dispatches(scheduler.ready(b"next", 1, now=2))
    assert (again.request.envelope, again.request.redelivery) == ([b"c"], False)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Scheduler(heartbeat_interval=0)
    with pytest.raises(ValueError, match="negative"):
        Scheduler(queue_limit=-1)


class SchedulerMachine(RuleBasedStateMachine):
    """Workers come, go and die; requests come, are answered, expire; time passes."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = Scheduler(
            heartbeat_interval=1, liveness=3, queue_limit=5, queue_timeout=4
        )
        self.now = 0.0
        self.next_client = 0
        self.outcomes: dict[bytes, int] = {}
        self.live: set[bytes] = set()
        self.held: dict[int, tuple[bytes, bytes]] = {}  # token -> (worker, client)

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                assert action.worker in self.live, "dispatched to a worker that is not live"
                self.held[action.token] = (action.worker, action.request.envelope[0])
            elif isinstance(action, Deliver):
                client = action.request.envelope[0]
                assert action.body == [b"reply to " + client], "a reply reached the wrong client"
                self.outcomes[client] += 1
            elif isinstance(action, Refuse):
                self.outcomes[action.request.envelope[0]] += 1
            elif isinstance(action, Forget):
                self.live.discard(action.worker)
                for token in [t for t, (w, _) in self.held.items() if w == action.worker]:
                    del self.held[token]

    @rule(worker=st.sampled_from([b"w1", b"w2", b"w3"]), credits=st.integers(1, 3))
    def worker_ready(self, worker: bytes, credits: int) -> None:
        self.live.add(worker)
        self.apply(self.scheduler.ready(worker, credits, self.now))

    @rule(retries=st.integers(0, 2), deadline=st.none() | st.floats(0, 10))
    def client_request(self, retries: int, deadline: float | None) -> None:
        client = b"c%d" % self.next_client
        self.next_client += 1
        self.outcomes[client] = 0
        due = None if deadline is None else self.now + deadline
        self.apply(
            self.scheduler.request([client], [b"x"], self.now, deadline=due, retries=retries)
        )

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def worker_replies(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(sorted(self.held)))
        worker, client = self.held.pop(token)
        self.apply(self.scheduler.reply(worker, token, [b"reply to " + client], self.now))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def worker_queue_full(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(sorted(self.held)))
        worker, _ = self.held.pop(token)
        self.apply(self.scheduler.full(worker, token, self.now))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def sending_fails(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(sorted(self.held)))
        worker, _ = self.held.pop(token)
        self.apply(self.scheduler.unsent(worker, token, self.now))

    @rule(worker=st.sampled_from([b"w1", b"w2", b"w3"]))
    def worker_dies(self, worker: bytes) -> None:
        self.apply(self.scheduler.gone(worker, self.now))

    @rule(worker=st.sampled_from([b"w1", b"w2", b"w3"]))
    def worker_leaves(self, worker: bytes) -> None:
        self.apply(self.scheduler.leave(worker, self.now))

    @rule(worker=st.sampled_from([b"w1", b"w2", b"w3"]))
    def worker_is_heard(self, worker: bytes) -> None:
        self.scheduler.heard_from(worker, self.now)

    @rule(seconds=st.floats(0, 5))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.scheduler.tick(self.now))

    @invariant()
    def at_most_one_outcome_per_request(self) -> None:
        assert all(count <= 1 for count in self.outcomes.values())

    @invariant()
    def credits_never_negative(self) -> None:
        assert all(known.credits >= 0 for known in self.scheduler._workers.values())

    def teardown(self) -> None:
        # Every worker falls silent: in the end every request has ended, exactly once.
        for _ in range(5):
            self.now += 100
            self.apply(self.scheduler.tick(self.now))
        assert all(count == 1 for count in self.outcomes.values()), self.outcomes


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_workers_dying_together_do_not_pass_requests_to_each_other() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=2)
    scheduler.ready(b"w1", 1, now=0)
    scheduler.ready(b"w2", 1, now=0)
    (sent,) = dispatches(scheduler.request([b"c"], [b"x"], now=0, retries=1))
    scheduler.ready(b"w3", 1, now=1.5)
    actions = scheduler.tick(now=2)  # w1 and w2 are silent; w3 was heard at 1.5
    assert {a.worker for a in actions if isinstance(a, Forget)} == {b"w1", b"w2"}
    (again,) = dispatches(actions)
    assert (again.worker, again.request.envelope) == (b"w3", [b"c"])
    assert sent.worker in (b"w1", b"w2")


def test_a_redelivered_request_gets_a_fresh_queue_timeout() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=2, queue_timeout=1)
    scheduler.ready(b"w", 1, now=0)
    dispatches(scheduler.request([b"c"], [b"x"], now=0, retries=1))
    actions = scheduler.tick(now=5)  # w died long after the request came in
    assert not [a for a in actions if isinstance(a, Refuse)]
    assert scheduler.statistics().queued == 1
    (refusal,) = [a for a in scheduler.tick(now=6) if isinstance(a, Refuse)]
    assert refusal.reason is Refusal.NO_WORKERS


def test_a_worker_whose_queue_is_full_keeps_its_place_but_gets_nothing_until_heard() -> None:
    scheduler = Scheduler()
    scheduler.ready(b"full", 2, now=0)
    scheduler.ready(b"other", 1, now=0)
    (first,) = dispatches(scheduler.request([b"c1"], [b"x"], now=0))
    assert first.worker == b"full"
    (again,) = dispatches(scheduler.full(b"full", first.token, now=1))
    assert again.worker == b"other"
    assert scheduler.request([b"c2"], [b"y"], now=1) == []  # queued: "full" takes nothing
    scheduler.heard_from(b"full", now=2)
    assert scheduler.statistics().free_credits == 2


def test_the_deadline_heap_stays_the_size_of_what_is_pending() -> None:
    scheduler = Scheduler()
    scheduler.ready(b"w", 1, now=0)
    for n in range(10_000):
        (sent,) = dispatches(scheduler.request([b"c"], [b"x"], now=n, deadline=n + 30))
        scheduler.reply(b"w", sent.token, [b"r"], now=n)
    assert len(scheduler._deadlines) < 3000


def forgotten(actions: list[Action]) -> list[bytes]:
    # Not `Forget(w) in actions`: named tuples of one field compare equal across types.
    return [action.worker for action in actions if isinstance(action, Forget)]


def test_a_patient_worker_is_judged_by_its_silence_only_while_it_holds_no_live_request() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"mdp", 1, now=0, patient=True)
    (sent,) = dispatches(scheduler.request([b"c"], [b"slow"], now=0, deadline=10))
    # Busy and silent far past liveness: not dead, and nothing due but its heartbeat.
    assert forgotten(scheduler.tick(now=5)) == []
    assert scheduler.next_wakeup() == 5 + 1
    actions = scheduler.reply(b"mdp", sent.token, [b"r"], now=6)
    assert Deliver(sent.request, [b"r"]) in actions
    # Idle again, its silence counts as anyone's.
    assert forgotten(scheduler.tick(now=9)) == [b"mdp"]


def test_a_patient_worker_gets_liveness_intervals_of_grace_after_its_request_ended() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"mdp", 1, now=0, patient=True)
    (sent,) = dispatches(scheduler.request([b"c"], [b"overruns"], now=0, deadline=4))
    actions = scheduler.tick(now=4)
    assert any(isinstance(a, Refuse) and a.reason is Refusal.DEADLINE for a in actions)
    # Silent since 0, but it may still be at work: judged from the deadline on, not before.
    assert forgotten(actions) == []
    assert scheduler.next_wakeup() == 5  # a heartbeat; its silence is due at 4 + 3
    assert forgotten(scheduler.tick(now=6.9)) == []
    # A late reply within the grace is dropped as late, and the worker serves on.
    assert scheduler.reply(b"mdp", sent.token, [b"late"], now=6.9) == []
    assert scheduler.statistics().late_replies == 1
    assert dispatches(scheduler.request([b"c"], [b"next"], now=7))


def test_a_patient_worker_that_never_answers_dies_after_its_grace() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"mdp", 1, now=0, patient=True)
    dispatches(scheduler.request([b"c"], [b"hangs"], now=0, deadline=4))
    scheduler.tick(now=4)
    assert forgotten(scheduler.tick(now=7)) == [b"mdp"]
    assert scheduler.next_wakeup() is None


def test_a_patient_worker_that_heartbeats_while_busy_is_judged_as_any_other() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"mdp", 1, now=0, patient=True)
    (sent,) = dispatches(scheduler.request([b"c"], [b"x"], now=0, deadline=60, retries=1))
    scheduler.heartbeat(b"mdp", now=1)  # it can heartbeat while it works: then it must
    scheduler.ready(b"other", 1, now=3.5)
    actions = scheduler.tick(now=4)
    # Silent since 1, dead at 4, long before the request's deadline: it goes to another.
    assert forgotten(actions) == [b"mdp"]
    (again,) = dispatches(actions)
    assert (again.worker, again.request) == (b"other", sent.request)


def test_a_heartbeat_crossing_a_dispatch_keeps_a_patient_worker_patient() -> None:
    scheduler = Scheduler(heartbeat_interval=1, liveness=3)
    scheduler.ready(b"mdp", 1, now=0, patient=True)
    dispatches(scheduler.request([b"c"], [b"a long job"], now=2.5))
    # Sent just before the worker saw the request (the guide's worker heartbeats right after
    # each reply): it says nothing about heartbeats while working.
    scheduler.heartbeat(b"mdp", now=2.5005)
    assert all(forgotten(scheduler.tick(now=now / 2)) == [] for now in range(6, 24))
