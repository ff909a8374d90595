"""Named services: one scheduler per service, MMI answered by the broker; no sockets, no clock."""

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
)
from zmqrelay._core.services import Services


def dispatches(actions: list[Action]) -> list[Dispatch]:
    return [action for action in actions if isinstance(action, Dispatch)]


def refusals(actions: list[Action]) -> list[Refuse]:
    return [action for action in actions if isinstance(action, Refuse)]


def ask(
    services: Services,
    service: bytes,
    client: bytes,
    now: float,
    *,
    retries: int = 0,
    deadline: float | None = None,
) -> Dispatch:
    """A request that goes to a worker at once."""
    actions = services.request(service, [client], [b"q"], now, retries=retries, deadline=deadline)
    (sent,) = dispatches(actions)
    return sent


def mmi(services: Services, asked: bytes, now: float = 0) -> list[bytes]:
    (answer,) = services.request(b"mmi.service", [b"c"], [asked], now, dialect="mdp-0.1")
    assert isinstance(answer, Deliver)
    assert answer.request.service == b"mmi.service"
    return answer.body


def test_a_request_goes_only_to_a_worker_of_its_service() -> None:
    services = Services()
    services.ready(b"a1", b"A", 4, now=0)
    services.ready(b"b1", b"B", 5, now=0)
    for n in range(4):
        assert ask(services, b"A", b"c%d" % n, now=1).worker == b"a1"
        assert ask(services, b"B", b"d%d" % n, now=1).worker == b"b1"
    # With A's worker busy, a request for A waits: B's idle worker does not take it.
    assert services.request(b"A", [b"late"], [b"q"], now=2) == []
    assert services.statistics().queued == 1
    assert services.service_of(b"a1") == b"A"


def test_each_service_hands_requests_to_its_least_recently_used_worker() -> None:
    services = Services()
    services.ready(b"a1", b"A", 2, now=0)
    services.ready(b"a2", b"A", 2, now=0)
    services.ready(b"b1", b"B", 9, now=0)
    order = []
    for n in range(4):
        order.append(ask(services, b"A", b"c%d" % n, now=1).worker)
        ask(services, b"B", b"d%d" % n, now=1)  # B's traffic does not disturb A's order
    assert order == [b"a1", b"a2", b"a1", b"a2"]


def test_a_request_for_a_service_nobody_offers_waits_then_is_refused() -> None:
    services = Services(queue_timeout=2)
    services.ready(b"a1", b"A", 1, now=0)
    assert services.request(b"nobody", [b"c"], [b"q"], now=1) == []
    assert services.statistics().services == 2
    assert services.next_wakeup() is not None
    assert refusals(services.tick(now=2.5)) == []  # not yet
    services.heard_from(b"a1", now=2.9)
    actions = services.tick(now=3)
    (refusal,) = refusals(actions)
    assert (refusal.request.envelope, refusal.reason) == ([b"c"], Refusal.NO_WORKERS)
    assert refusal.request.service == b"nobody"
    assert services.statistics().services == 1  # the empty service is dropped


def test_a_worker_that_comes_in_time_gets_the_waiting_request() -> None:
    services = Services(queue_timeout=2)
    assert services.request(b"late", [b"c"], [b"q"], now=0, dialect="mdp-0.2") == []
    (sent,) = dispatches(services.ready(b"w", b"late", 1, now=1))
    assert (sent.worker, sent.request.envelope, sent.request.dialect) == (b"w", [b"c"], "mdp-0.2")
    assert refusals(services.tick(now=5)) == []


def test_mmi_service_tells_whether_a_live_worker_offers_a_service() -> None:
    services = Services(heartbeat_interval=1, liveness=2)
    assert mmi(services, b"A") == [b"404"]
    services.ready(b"a1", b"A", 1, now=0)
    assert mmi(services, b"A") == [b"200"]
    assert mmi(services, b"B") == [b"404"]
    # Silence kills it: then the service is not offered.
    actions = services.tick(now=2)
    assert Forget(b"a1") in actions
    assert mmi(services, b"A", now=2) == [b"404"]
    # A worker that leaves offers nothing, even while it finishes what it holds.
    services.ready(b"a2", b"A", 1, now=3)
    held = ask(services, b"A", b"c", now=3)
    assert services.leave(b"a2", now=3) == []
    assert mmi(services, b"A", now=3) == [b"404"]
    assert services.reply(b"a2", held.token, [b"r"], now=4)[-1] == Forget(b"a2")
    # And one that dies by saying so.
    services.ready(b"a3", b"A", 1, now=5)
    assert mmi(services, b"A", now=5) == [b"200"]
    services.gone(b"a3", now=5)
    assert mmi(services, b"A", now=5) == [b"404"]


def test_other_mmi_names_are_not_implemented_and_no_mmi_request_is_queued() -> None:
    services = Services()
    (answer,) = services.request(b"mmi.workers", [b"c"], [b"A"], now=0)
    assert isinstance(answer, Deliver)
    assert answer.body == [b"501"]
    assert answer.request.ended
    stats = services.statistics()
    assert (stats.services, stats.queued, stats.delivered) == (0, 0, 0)
    assert services.mmi_requests == services.statistics().mmi_requests == 1


def test_workers_may_not_offer_mmi_services() -> None:
    with pytest.raises(ValueError, match="mmi"):
        Services().ready(b"w", b"mmi.service", 1, now=0)


def test_idle_services_are_dropped_but_their_counters_stay() -> None:
    services = Services(heartbeat_interval=1, liveness=2, queue_timeout=1)
    services.ready(b"a1", b"A", 1, now=0)
    services.ready(b"b1", b"B", 1, now=0)
    sent = ask(services, b"A", b"c", now=0)
    services.reply(b"a1", sent.token, [b"r"], now=0)
    services.request(b"C", [b"d"], [b"q"], now=0)
    assert services.statistics().services == 3
    services.gone(b"a1", now=0.5)  # A holds nothing more
    services.heard_from(b"b1", now=0.5)
    assert services.statistics().services == 2
    services.tick(now=1)  # C's request ends: C holds nothing more
    assert services.statistics().services == 1
    services.tick(now=3)  # b1 dies of silence
    stats = services.statistics()
    assert (stats.services, stats.workers) == (0, 0)
    assert (stats.delivered, stats.refused, stats.dead_workers) == (1, 1, 1)
    # A request naming a new service each time leaves nothing behind once it ends.
    for n in range(100):
        services.request(b"s%d" % n, [b"c"], [b"q"], now=4, deadline=4)
    stats = services.statistics()
    assert (stats.services, stats.refused) == (0, 101)


def test_after_a_part_was_delivered_a_dead_workers_request_ends_instead_of_going_again() -> None:
    services = Services()
    services.ready(b"a1", b"A", 1, now=0)
    services.ready(b"a2", b"A", 1, now=0)
    streamed = ask(services, b"A", b"streamed", now=0, retries=2)
    untouched = ask(services, b"A", b"untouched", now=0, retries=2)
    (part,) = services.reply(streamed.worker, streamed.token, [b"p"], now=1, partial=True)
    assert part == Deliver(streamed.request, [b"p"], 0, partial=True)
    assert not streamed.request.ended
    # Both workers go; a third is there to take what may go again.
    services.ready(b"a3", b"A", 2, now=1)
    actions = services.gone(streamed.worker, now=2) + services.gone(untouched.worker, now=2)
    assert refusals(actions) == [Refuse(streamed.request, Refusal.WORKER_DIED)]
    (again,) = dispatches(actions)
    assert (again.worker, again.request) == (b"a3", untouched.request)
    assert again.request.redelivery


def test_a_late_part_is_dropped() -> None:
    services = Services()
    services.ready(b"a1", b"A", 1, now=0)
    sent = ask(services, b"A", b"c", now=0, deadline=1)
    assert refusals(services.tick(now=1)) == [Refuse(sent.request, Refusal.DEADLINE)]
    assert services.reply(b"a1", sent.token, [b"p"], now=2, partial=True) == []
    assert services.reply(b"a1", sent.token, [b"r"], now=2) == []
    assert services.statistics().late_replies >= 1


def test_a_worker_that_registers_for_another_service_serves_that_one() -> None:
    services = Services()
    services.ready(b"w", b"A", 2, now=0)
    services.ready(b"other", b"A", 1, now=0)
    held = ask(services, b"A", b"c", now=0)
    assert held.worker == b"w"
    actions = services.ready(b"w", b"B", 2, now=1)
    # What it held for A ends as if it had died; the worker itself is not forgotten.
    assert refusals(actions) == [Refuse(held.request, Refusal.WORKER_DIED)]
    assert Forget(b"w") not in actions
    assert services.is_known(b"w")
    assert services.service_of(b"w") == b"B"
    # It gets B's requests, and its answers reach B's clients.
    sent = ask(services, b"B", b"d", now=2)
    assert sent.worker == b"w"
    (delivered,) = services.reply(b"w", sent.token, [b"r"], now=3)
    assert delivered == Deliver(sent.request, [b"r"])
    # And no more of A's.
    assert ask(services, b"A", b"e", now=3).worker == b"other"
    assert services.request(b"A", [b"f"], [b"q"], now=3) == []
    stats = services.statistics()
    assert (stats.workers, stats.services, stats.unknown_replies) == (2, 2, 0)


def test_saying_ready_again_for_the_same_service_keeps_what_the_worker_holds() -> None:
    services = Services()
    services.ready(b"w", b"A", 2, now=0)
    held = ask(services, b"A", b"c", now=0)
    assert services.ready(b"w", b"A", 2, now=1) == []
    assert services.reply(b"w", held.token, [b"r"], now=2) == [Deliver(held.request, [b"r"])]


def test_a_reply_naming_another_services_request_is_unknown() -> None:
    services = Services()
    services.ready(b"a1", b"A", 1, now=0)
    services.ready(b"b1", b"B", 1, now=0)
    to_a = ask(services, b"A", b"c", now=0)
    to_b = ask(services, b"B", b"d", now=0)
    assert to_a.token != to_b.token
    assert not services.holds(b"b1", to_a.token)
    assert services.reply(b"b1", to_a.token, [b"r"], now=1) == []
    assert services.reply(b"nobody", to_a.token, [b"r"], now=1) == []
    assert services.statistics().unknown_replies == 2
    assert services.reply(b"a1", to_a.token, [b"r"], now=1) == [Deliver(to_a.request, [b"r"])]


def test_time_passes_in_every_service() -> None:
    services = Services(heartbeat_interval=1, liveness=3)
    services.ready(b"a1", b"A", 1, now=0)
    services.ready(b"b1", b"B", 1, now=0.5)
    assert services.next_wakeup() == 1
    assert services.tick(now=1) == [Heartbeat(b"a1")]
    assert services.next_wakeup() == 1.5
    assert services.tick(now=1.5) == [Heartbeat(b"b1")]
    services.sent_to(b"a1", now=2)
    assert services.tick(now=2) == []


class ServicesMachine(RuleBasedStateMachine):
    """Workers of three services come, go, move and die; requests name four; time passes."""

    WORKERS = (b"w1", b"w2", b"w3", b"w4")
    SERVICES = (b"A", b"B", b"")  # and b"C", which no worker offers

    def __init__(self) -> None:
        super().__init__()
        self.services = Services(heartbeat_interval=1, liveness=3, queue_limit=6, queue_timeout=4)
        self.now = 0.0
        self.next_client = 0
        self.outcomes: dict[bytes, int] = {}
        self.asked: dict[bytes, bytes] = {}  # client -> the service it asked
        self.offering: dict[bytes, bytes] = {}  # live worker -> its service
        self.leaving: set[bytes] = set()
        self.held: dict[int, tuple[bytes, bytes]] = {}  # token -> (worker, client)
        self.streamed: set[bytes] = set()  # clients that got a part
        self.patient: set[bytes] = set()
        self.deadline: dict[bytes, float | None] = {}

    @property
    def unsent(self) -> set[int]:
        """Tokens dispatched but not answered in any part: sending them may still fail."""
        return {token for token, (_, client) in self.held.items() if client not in self.streamed}

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            client = b""
            if isinstance(action, Dispatch | Deliver | Refuse):
                client = action.request.envelope[0]
            if isinstance(action, Dispatch):
                assert action.worker in self.offering, "dispatched to a worker that is not live"
                assert self.offering[action.worker] == self.asked[client], "to the wrong service"
                assert client not in self.streamed, "sent again after a part reached its client"
                self.held[action.token] = (action.worker, client)
            elif isinstance(action, Deliver):
                assert action.body[0].endswith(b" for " + client), "a reply to the wrong client"
                if action.partial:
                    self.streamed.add(client)
                else:
                    self.outcomes[client] += 1
            elif isinstance(action, Refuse):
                self.outcomes[client] += 1
            elif isinstance(action, Forget):
                self.offering.pop(action.worker, None)
                self.leaving.discard(action.worker)
                self.drop_held(action.worker)

    def drop_held(self, worker: bytes) -> None:
        for token in [token for token, (held_by, _) in self.held.items() if held_by == worker]:
            del self.held[token]

    @rule(
        worker=st.sampled_from(WORKERS),
        service=st.sampled_from(SERVICES),
        credits=st.integers(1, 3),
        patient=st.booleans(),  # Majordomo workers: silence counts only while they hold nothing
    )
    def worker_ready(self, worker: bytes, service: bytes, credits: int, patient: bool) -> None:
        current = self.offering.get(worker)
        if current != service:  # a new registration, or a move to another service
            if current is not None:
                self.drop_held(worker)  # what it held for the old service is over
            (self.patient.add if patient else self.patient.discard)(worker)
        self.offering[worker] = service
        self.leaving.discard(worker)
        self.apply(self.services.ready(worker, service, credits, self.now, patient=patient))
        assert self.services.service_of(worker) == service

    @rule(
        service=st.sampled_from((*SERVICES, b"C")),
        retries=st.integers(0, 2),
        deadline=st.none() | st.floats(0, 10),
    )
    def client_request(self, service: bytes, retries: int, deadline: float | None) -> None:
        client = b"c%d" % self.next_client
        self.next_client += 1
        self.outcomes[client] = 0
        self.asked[client] = service
        due = None if deadline is None else self.now + deadline
        self.deadline[client] = due
        self.apply(
            self.services.request(
                service, [client], [b"x"], self.now, deadline=due, retries=retries
            )
        )

    @rule(service=st.sampled_from((*SERVICES, b"C")))
    def mmi_request(self, service: bytes) -> None:
        (answer,) = self.services.request(b"mmi.service", [b"m"], [service], self.now)
        assert isinstance(answer, Deliver)
        offered = any(
            offers == service and worker not in self.leaving
            for worker, offers in self.offering.items()
        )
        assert answer.body == [b"200" if offered else b"404"]

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), partial=st.booleans())
    def worker_replies(self, data: st.DataObject, partial: bool) -> None:
        token = data.draw(st.sampled_from(sorted(self.held)))
        worker, client = self.held[token]
        if not partial:
            del self.held[token]
        body = [b"reply for " + client]
        self.apply(self.services.reply(worker, token, body, self.now, partial=partial))

    @rule(worker=st.sampled_from(WORKERS))
    def worker_dies(self, worker: bytes) -> None:
        self.apply(self.services.gone(worker, self.now))

    @rule(worker=st.sampled_from(WORKERS))
    def worker_leaves(self, worker: bytes) -> None:
        if worker in self.offering:
            self.leaving.add(worker)
        self.apply(self.services.leave(worker, self.now))

    @precondition(lambda self: bool(self.unsent))
    @rule(data=st.data())
    def sending_fails(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(sorted(self.unsent)))
        worker, _ = self.held.pop(token)
        self.apply(self.services.unsent(worker, token, self.now))

    @rule(worker=st.sampled_from(WORKERS))
    def worker_is_heard(self, worker: bytes) -> None:
        self.services.heard_from(worker, self.now)

    @rule(seconds=st.floats(0, 5))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.services.tick(self.now))

    @invariant()
    def at_most_one_outcome_per_request(self) -> None:
        assert all(count <= 1 for count in self.outcomes.values())

    @invariant()
    def registered_workers_are_the_live_ones(self) -> None:
        for worker in self.WORKERS:
            assert self.services.is_known(worker) == (worker in self.offering)

    @invariant()
    def the_books_match_the_schedulers(self) -> None:
        services = self.services
        assert services._queued == services.statistics().queued
        # Every service with something to do is in line to be woken for it, on time.
        for service, scheduler in services._schedulers.items():
            services.next_wakeup()
            assert services._wakes.get(service) == scheduler.next_wakeup()

    @invariant()
    def only_services_holding_something_are_kept(self) -> None:
        kept = self.services._schedulers
        assert all(not scheduler.idle() for scheduler in kept.values())
        assert set(self.offering.values()) <= set(kept)

    def teardown(self) -> None:
        # Every worker falls silent: in the end every request has ended, exactly once, but for
        # those a patient worker holds with no deadline (they wait for its reply).
        for _ in range(5):
            self.now += 100
            self.apply(self.services.tick(self.now))
        stuck = {
            client
            for worker, client in self.held.values()
            if worker in self.patient and self.deadline[client] is None
        }
        for client, count in self.outcomes.items():
            assert count == (0 if client in stuck else 1), (client, count)
        stats = self.services.statistics()
        assert (stats.queued, stats.in_flight) == (0, len(stuck))
        assert stats.delivered + stats.refused == len(self.outcomes) - len(stuck)
        if not stuck:
            assert (stats.services, stats.workers) == (0, 0)


TestServicesMachine = ServicesMachine.TestCase
TestServicesMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_the_queue_limit_holds_for_all_services_together() -> None:
    services = Services(queue_limit=3, queue_timeout=10)
    outcomes = [services.request(b"svc-%d" % n, [b"c%d" % n], [b"x"], now=0) for n in range(5)]
    assert outcomes[:3] == [[], [], []]
    for refused in outcomes[3:]:
        assert [(type(a), a.reason) for a in refused] == [(Refuse, Refusal.BUSY)]  # type: ignore[union-attr]
    stats = services.statistics()
    assert (stats.queued, stats.refused, stats.services) == (3, 2, 3)
    # A service with a free worker still takes requests at once: they are not queued.
    services.ready(b"w", b"free", 1, now=0)
    (dispatch,) = services.request(b"free", [b"c"], [b"y"], now=0)
    assert isinstance(dispatch, Dispatch)


def test_many_waiting_services_cost_a_loop_turn_only_what_changed() -> None:
    services = Services(queue_limit=100_000, queue_timeout=10)
    for n in range(10_000):
        services.request(b"svc-%d" % n, [b"c"], [b"x"], now=0)
    assert services.next_wakeup() == 10
    services.ready(b"w", b"busy", 1, now=1)
    services.next_wakeup()
    # Touching one service recomputes that one's time, not ten thousand.
    assert services._dirty == set()
    services.heard_from(b"w", now=2)
    assert services._dirty == {b"busy"}
    services.next_wakeup()
    services.heard_from(b"w", now=9)  # alive still when the others' time comes
    # All the waiting requests end at once when their time comes.
    refused = [a for a in services.tick(now=10) if isinstance(a, Refuse)]
    assert len(refused) == 10_000
    assert services.statistics().services == 1
