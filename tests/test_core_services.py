"""Named services in load-balancing mode, and MMI answered by the broker.

Driven through the Balancer with frames and made-up time, as in ``test_core_scheduler``, whose
helpers this module shares: no sockets, no clock.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from test_core_scheduler import (
    NOTHING,
    Command,
    Outbox,
    Peer,
    Wire,
    WireMachine,
    ask,
    counts,
    machine_balancer,
    refusal_of,
    take,
    workers_told,
)
from zmqrelay._core import mdp, tag
from zmqrelay._core.balancer import Balancer, Unreachable
from zmqrelay._core.refusal import Refusal


def mmi(
    balancer: Balancer, asked: bytes, now: float = 0, *, name: bytes = b"mmi.service"
) -> bytes:
    """What the broker itself answers an MDP/0.1 client asking ``name`` about ``asked``."""
    balancer.from_client([b"m", *mdp.encode_request("mdp-0.1", name, [asked])], now)
    out = take(balancer)
    (answer,) = out.clients
    assert out.requests == []
    assert answer[:4] == [b"m", b"", mdp.CLIENT_01, name]
    return answer[-1]


def test_a_request_goes_only_to_a_worker_of_its_service() -> None:
    balancer = Balancer()
    balancer.from_worker(Peer(b"a1").ready(b"A", credits=4), 0)
    balancer.from_worker(Peer(b"b1", "majortomo").ready(b"B"), 0)
    balancer.from_worker(Peer(b"b2").ready(b"B", credits=4), 0)
    for n in range(4):
        balancer.from_client(ask(b"a%d" % n, service=b"A"), 1)
        balancer.from_client(ask(b"b%d" % n, service=b"B"), 1)
    sent = take(balancer).requests
    assert len(sent) == 8
    assert all(request.worker[:1] == request.body[0][:1] for request in sent)  # a to a, b to b
    # With A's worker busy, a request for A waits: B's idle workers do not take it.
    balancer.from_client(ask(b"late", service=b"A"), 2)
    assert take(balancer) == NOTHING
    assert counts(balancer).queued == 1
    assert balancer.scheduler.workers[b"a1"].service.name == b"A"


def test_each_service_hands_requests_to_its_least_recently_used_worker() -> None:
    balancer = Balancer()
    balancer.from_worker(Peer(b"a1").ready(b"A", credits=2), 0)
    balancer.from_worker(Peer(b"a2").ready(b"A", credits=2), 0)
    balancer.from_worker(Peer(b"b1").ready(b"B", credits=9), 0)
    order = []
    for n in range(4):
        balancer.from_client(ask(b"c%d" % n, service=b"A"), 1)
        balancer.from_client(ask(b"d%d" % n, service=b"B"), 1)  # B's traffic: A's order holds
        order += [sent.worker for sent in take(balancer).requests if sent.worker != b"b1"]
    assert order == [b"a1", b"a2", b"a1", b"a2"]


def test_a_request_for_a_service_nobody_offers_waits_then_is_refused() -> None:
    balancer = Balancer(queue_timeout=2)
    a1 = Peer(b"a1")
    balancer.from_worker(a1.ready(b"A"), 0)
    balancer.from_client(ask(b"c", service=b"nobody"), 1)
    assert counts(balancer).services == 2
    assert balancer.next_wakeup() is not None
    balancer.tick(2.5)
    assert take(balancer).clients == []  # not yet
    balancer.from_worker(a1.say("heartbeat"), 2.9)
    balancer.tick(3)
    (refused,) = take(balancer).clients
    assert (refused[0], refusal_of(refused)) == (b"c", Refusal.NO_WORKERS)
    assert b"(service 'nobody')" in refused[-1]
    assert counts(balancer).services == 1  # the empty service is dropped


def test_a_worker_that_comes_in_time_gets_the_waiting_request() -> None:
    balancer = Balancer(queue_timeout=2)
    balancer.from_client(ask(b"c", service=b"late", dialect="mdp-0.2"), 0)
    w = Peer(b"w", "mdp-0.2")
    balancer.from_worker(w.ready(b"late"), 1)
    (sent,) = take(balancer).requests
    assert (sent.worker, sent.body) == (b"w", [b"c"])
    balancer.from_worker(w.reply(sent.token, [b"r"]), 1.5)
    (reply,) = take(balancer).clients  # in the client's dialect
    assert reply[0] == b"c"
    assert mdp.decode_reply("mdp-0.2", reply[1:]) == mdp.ClientReply([b"r"], True)
    balancer.tick(5)
    assert take(balancer).clients == []


def test_mmi_service_tells_whether_a_live_worker_offers_a_service() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=2)
    assert mmi(balancer, b"A") == b"404"
    balancer.from_worker(Peer(b"a1").ready(b"A"), 0)
    take(balancer)
    assert mmi(balancer, b"A") == b"200"
    assert mmi(balancer, b"B") == b"404"
    # Silence kills it: then the service is not offered.
    balancer.tick(2)
    assert workers_told(take(balancer), "disconnect") == [b"a1"]
    assert mmi(balancer, b"A", 2) == b"404"
    # A worker that leaves offers nothing, even while it finishes what it holds.
    a2 = Peer(b"a2")
    balancer.from_worker(a2.ready(b"A"), 3)
    balancer.from_client(ask(b"c", service=b"A"), 3)
    (held,) = take(balancer).requests
    balancer.from_worker(a2.say("leaving"), 3)
    assert take(balancer) == NOTHING
    assert mmi(balancer, b"A", 3) == b"404"
    balancer.from_worker(a2.reply(held.token), 4)
    out = take(balancer)
    assert ([message[0] for message in out.clients], out.commands) == (
        [b"c"],
        [(b"a2", "disconnect")],
    )
    # And one that goes by saying so.
    a3 = Peer(b"a3", "majortomo")
    balancer.from_worker(a3.ready(b"A"), 5)
    assert mmi(balancer, b"A", 5) == b"200"
    balancer.from_worker(a3.say("disconnect"), 5)
    assert take(balancer) == NOTHING  # nothing more for a worker that said DISCONNECT
    assert mmi(balancer, b"A", 5) == b"404"


def test_other_mmi_names_are_not_implemented_and_no_mmi_request_is_queued() -> None:
    balancer = Balancer()
    assert mmi(balancer, b"A", name=b"mmi.workers") == b"501"
    stats = counts(balancer)
    assert (stats.services, stats.queued, stats.delivered, stats.mmi_requests) == (0, 0, 0, 1)
    assert balancer.pending == 0


def test_workers_may_not_offer_mmi_services() -> None:
    balancer = Balancer()
    balancer.from_worker(Peer(b"z").ready(b"mmi.service"), 0)
    balancer.from_worker(Peer(b"m", "majortomo").ready(b"mmi.mine"), 0)
    assert take(balancer) == Outbox([], [], [(b"z", "disconnect"), (b"m", "disconnect")])
    assert counts(balancer).workers == 0
    assert balancer.statistics().malformed_replies == 2


def test_idle_services_are_dropped_but_the_counters_stay() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=2, queue_timeout=1)
    a1, b1 = Peer(b"a1"), Peer(b"b1")
    balancer.from_worker(a1.ready(b"A"), 0)
    balancer.from_worker(b1.ready(b"B"), 0)
    balancer.from_client(ask(b"c", service=b"A"), 0)
    (sent,) = take(balancer).requests
    balancer.from_worker(a1.reply(sent.token), 0)
    balancer.from_client(ask(b"d", service=b"C"), 0)
    assert counts(balancer).services == 3
    balancer.from_worker(a1.say("disconnect"), 0.5)  # A holds nothing more
    balancer.from_worker(b1.say("heartbeat"), 0.5)
    assert counts(balancer).services == 2
    balancer.tick(1)  # C's request ends: C holds nothing more
    assert counts(balancer).services == 1
    balancer.tick(3)  # b1 dies of silence
    assert workers_told(take(balancer), "disconnect") == [b"b1"]
    stats = counts(balancer)
    assert (stats.services, stats.workers) == (0, 0)
    assert (stats.delivered, stats.refused, stats.dead_workers) == (1, 1, 1)
    # A request naming a new service each time leaves nothing behind once it ends.
    for n in range(100):
        balancer.from_client(ask(b"e%d" % n, service=b"s%d" % n, timeout=0.5), 4)
    assert counts(balancer).services == 100
    balancer.tick(4.5)
    refused = {refusal_of(message) for message in take(balancer).clients}
    assert refused == {Refusal.DEADLINE}
    stats = counts(balancer)
    assert (stats.services, stats.refused, stats.delivered) == (0, 101, 1)


def test_after_a_part_was_delivered_a_dead_workers_request_ends_instead_of_going_again() -> None:
    balancer = Balancer()
    a1, a2, a3 = Peer(b"a1"), Peer(b"a2", "majortomo"), Peer(b"a3")
    balancer.from_worker(a1.ready(b"A"), 0)
    balancer.from_worker(a2.ready(b"A"), 0)
    balancer.from_client(ask(b"streamed", service=b"A", redeliveries=2), 0)
    balancer.from_client(ask(b"untouched", service=b"A", redeliveries=2), 0)
    streamed, untouched = take(balancer).requests
    assert (streamed.worker, untouched.worker) == (b"a1", b"a2")
    balancer.from_worker(a1.reply(streamed.token, [b"p"], partial=True), 1)
    (part,) = take(balancer).clients
    marked = tag.decode(part[1])
    assert marked is not None
    assert (part[0], marked.status, part[-1]) == (b"streamed", tag.Status.PARTIAL, b"p")
    assert balancer.pending == 2
    # Both workers go; a third is there to take what may go again.
    balancer.from_worker(a3.ready(b"A", credits=2), 1)
    take(balancer)
    balancer.from_worker(a1.say("disconnect"), 2)
    balancer.from_worker(a2.say("disconnect"), 2)
    out = take(balancer)
    assert [(message[0], refusal_of(message)) for message in out.clients] == [
        (b"streamed", Refusal.WORKER_DIED)
    ]
    (again,) = out.requests
    assert (again.worker, again.body, again.redelivery) == (b"a3", [b"untouched"], True)


def test_a_late_part_is_dropped() -> None:
    balancer = Balancer()
    a1 = Peer(b"a1")
    balancer.from_worker(a1.ready(b"A"), 0)
    balancer.from_client(ask(b"c", service=b"A", timeout=1), 0)
    (sent,) = take(balancer).requests
    balancer.tick(1)
    (refused,) = take(balancer).clients
    assert refusal_of(refused) is Refusal.DEADLINE
    balancer.from_worker(a1.reply(sent.token, [b"p"], partial=True), 2)
    balancer.from_worker(a1.reply(sent.token, [b"r"]), 2)
    assert take(balancer) == NOTHING
    assert counts(balancer).late_replies == 2


def test_a_worker_that_registers_for_another_service_serves_that_one() -> None:
    balancer = Balancer()
    w = Peer(b"w")
    balancer.from_worker(w.ready(b"A", credits=2), 0)
    balancer.from_worker(Peer(b"other").ready(b"A"), 0)
    balancer.from_client(ask(b"c", service=b"A"), 0)
    (held,) = take(balancer).requests
    assert held.worker == b"w"
    balancer.from_worker(w.ready(b"B", credits=2), 1)
    # What it held for A ends as if it had died; the worker itself is not told DISCONNECT.
    out = take(balancer)
    assert [(message[0], refusal_of(message)) for message in out.clients] == [
        (b"c", Refusal.WORKER_DIED)
    ]
    assert workers_told(out, "disconnect") == []
    assert balancer.scheduler.workers[b"w"].service.name == b"B"
    # It gets B's requests, and its answers reach B's clients.
    balancer.from_client(ask(b"d", service=b"B"), 2)
    (sent,) = take(balancer).requests
    assert sent.worker == b"w"
    balancer.from_worker(w.reply(sent.token, [b"r"]), 3)
    (reply,) = take(balancer).clients
    assert (reply[0], reply[-1]) == (b"d", b"r")
    # And no more of A's.
    balancer.from_client(ask(b"e", service=b"A"), 3)
    assert [sent.worker for sent in take(balancer).requests] == [b"other"]
    balancer.from_client(ask(b"f", service=b"A"), 3)
    assert take(balancer) == NOTHING
    stats = counts(balancer)
    assert (stats.workers, stats.services, stats.unknown_replies) == (2, 2, 0)


def test_saying_ready_again_for_the_same_service_keeps_what_the_worker_holds() -> None:
    balancer = Balancer()
    w = Peer(b"w")
    balancer.from_worker(w.ready(b"A", credits=2), 0)
    balancer.from_client(ask(b"c", service=b"A"), 0)
    (held,) = take(balancer).requests
    balancer.from_worker(w.ready(b"A", credits=2), 1)
    assert take(balancer) == Outbox([], [], [(b"w", "heartbeat")])  # its READY, answered
    balancer.from_worker(w.reply(held.token, [b"r"]), 2)
    (reply,) = take(balancer).clients
    assert (reply[0], reply[-1], refusal_of(reply)) == (b"c", b"r", None)


def test_a_reply_naming_another_services_request_is_unknown() -> None:
    balancer = Balancer()
    a1, b1 = Peer(b"a1"), Peer(b"b1", "guide")
    balancer.from_worker(a1.ready(b"A"), 0)
    balancer.from_worker(b1.ready(), 0)  # the default service
    balancer.from_client(ask(b"c", service=b"A"), 0)
    balancer.from_client(ask(b"d"), 0)
    to_a, to_b = take(balancer).requests
    assert to_a.token != to_b.token
    # b1 does not hold A's request: its reply ends nothing and frees no credit.
    balancer.from_worker(b1.reply(to_a.token), 1)
    balancer.from_worker(Peer(b"nobody").reply(to_a.token), 1)
    assert take(balancer) == Outbox([], [], [(b"nobody", "disconnect")])
    stats = counts(balancer)
    assert (stats.unknown_replies, stats.free_credits) == (2, 0)
    assert balancer.pending == 2
    balancer.from_worker(a1.reply(to_a.token, [b"r"]), 1)
    (reply,) = take(balancer).clients
    assert (reply[0], reply[-1]) == (b"c", b"r")


def test_time_passes_in_every_service() -> None:
    balancer = Balancer(heartbeat_interval=1, liveness=3)
    balancer.from_worker(Peer(b"a1").ready(b"A"), 0)
    balancer.from_worker(Peer(b"b1").ready(b"B"), 0.5)
    take(balancer)
    assert balancer.next_wakeup() == 1
    balancer.tick(1)
    assert take(balancer) == Outbox([], [], [(b"a1", "heartbeat")])
    assert balancer.next_wakeup() == 1.5
    balancer.tick(1.5)
    assert take(balancer) == Outbox([], [], [(b"b1", "heartbeat")])
    balancer.from_client(ask(b"c", service=b"A"), 2)  # a1 is sent something
    assert [sent.worker for sent in take(balancer).requests] == [b"a1"]
    balancer.tick(2)
    assert take(balancer) == NOTHING


def test_the_queue_limit_holds_for_all_services_together() -> None:
    balancer = Balancer(queue_limit=3, queue_timeout=10)
    for n in range(5):
        balancer.from_client(ask(b"c%d" % n, service=b"svc-%d" % n), 0)
    refused = [(message[0], refusal_of(message)) for message in take(balancer).clients]
    assert refused == [(b"c3", Refusal.BUSY), (b"c4", Refusal.BUSY)]
    stats = counts(balancer)
    assert (stats.queued, stats.refused, stats.services) == (3, 2, 3)
    # A service with a free worker still takes requests at once: they are not queued.
    balancer.from_worker(Peer(b"w").ready(b"free"), 0)
    take(balancer)
    balancer.from_client(ask(b"c", service=b"free"), 0)
    assert [sent.worker for sent in take(balancer).requests] == [b"w"]


def test_many_waiting_services_end_together_when_their_time_comes() -> None:
    balancer = Balancer(queue_limit=100_000, queue_timeout=10)
    for n in range(2_000):
        balancer.from_client(ask(b"c%d" % n, service=b"svc-%d" % n), 0)
    assert balancer.next_wakeup() == 10
    w = Peer(b"w")
    balancer.from_worker(w.ready(b"busy"), 1)
    balancer.from_worker(w.say("heartbeat"), 2)
    balancer.from_worker(w.say("heartbeat"), 9)  # alive still when the others' time comes
    take(balancer)
    balancer.tick(10)
    refused = take(balancer).clients
    assert len(refused) == 2_000
    assert {refusal_of(message) for message in refused} == {Refusal.NO_WORKERS}
    stats = counts(balancer)
    assert (stats.services, stats.workers, stats.queued) == (1, 1, 0)


# -- the rules together, in any order ------------------------------------------------------

WORKERS = (
    Peer(b"z1"),
    Peer(b"z2", "zmqrelay-1"),
    Peer(b"m1", "majortomo"),
    Peer(b"d1", "mdp-0.1"),
    Peer(b"g1", "guide"),
)
STREAMING = {b"z1", b"z2", b"m1"}
SERVICES = (b"A", b"B", b"")
ASKED = (*SERVICES, b"C")  # C: no worker offers it
ids = st.sampled_from([peer.id for peer in WORKERS])


class ServicesMachine(WireMachine):
    """Workers of three services come, move, stream, vanish; clients ask four; time passes."""

    def __init__(self) -> None:
        super().__init__()
        self.wire = Wire(machine_balancer(), WORKERS)
        self.clients = 0

    @rule(worker=ids, service=st.sampled_from(SERVICES), credits=st.integers(1, 3))
    def worker_ready(self, worker: bytes, service: bytes, credits: int) -> None:
        self.wire.ready(worker, b"" if worker == b"g1" else service, credits)

    @rule(
        data=st.data(),
        dialect=st.sampled_from(["plain", "majortomo", "mdp-0.1", "mdp-0.2"]),
        timeout=st.none() | st.floats(0.001, 10),
        redeliveries=st.none() | st.integers(0, 2),
    )
    def client_asks(
        self, data: st.DataObject, dialect: str, timeout: float | None, redeliveries: int | None
    ) -> None:
        offered = sorted(set(self.wire.registered.values()))
        service = data.draw(st.sampled_from(ASKED) | st.sampled_from(offered or ASKED))
        self.clients += 1
        client = b"c%d" % self.clients
        variant = mdp.as_variant(dialect)
        if variant is None:
            self.wire.request(ask(client, timeout=timeout, redeliveries=redeliveries), b"")
        elif variant == "mdp-0.2":  # its client's id is the whole envelope: it takes no tag
            self.wire.request(ask(client, service=service, dialect=variant), service)
        else:
            frames = ask(
                client,
                service=service,
                timeout=timeout,
                redeliveries=redeliveries,
                dialect=variant,
            )
            self.wire.request(frames, service)

    @rule(service=st.sampled_from(ASKED))
    def client_asks_mmi(self, service: bytes) -> None:
        self.wire.mmi(service)

    @precondition(lambda self: bool(self.wire.answerable))
    @rule(
        data=st.data(),
        partial=st.booleans(),
        trouble=st.none() | st.sampled_from(["full", "gone"]),
    )
    def worker_replies(
        self, data: st.DataObject, partial: bool, trouble: Unreachable | None
    ) -> None:
        """A reply, or a part of one; the client it goes to may not be reached."""
        wire = self.wire
        token = data.draw(st.sampled_from(wire.answerable))
        wire.client_trouble = trouble
        wire.reply(token, partial=partial and wire.held[token][0] in STREAMING)

    @rule(worker=ids, data=st.data())
    def worker_replies_to_what_it_does_not_hold(self, worker: bytes, data: st.DataObject) -> None:
        wire = self.wire
        if worker not in wire.registered or worker in wire.vanished:
            return
        others = [token for token, (held_by, _) in wire.held.items() if held_by != worker]
        token = data.draw(st.sampled_from([(1 << 63).to_bytes(8, "big"), *others]))
        unknown = counts(wire.balancer).unknown_replies
        wire.from_worker(wire.peers[worker].reply(token))
        assert counts(wire.balancer).unknown_replies == unknown + 1

    @rule(worker=ids, command=st.sampled_from(["heartbeat", "leaving", "disconnect"]))
    def worker_says(self, worker: bytes, command: Command) -> None:
        self.wire.say(worker, command)

    @rule(worker=ids)
    def worker_vanishes(self, worker: bytes) -> None:
        self.wire.vanished.add(worker)

    @invariant()
    def only_services_holding_something_are_kept(self) -> None:
        kept = self.wire.balancer.scheduler.services
        assert all(service.workers or service.queued for service in kept.values())
        assert set(self.wire.registered.values()) <= set(kept)

    def teardown(self) -> None:
        self.wire.finish()
        scheduler = self.wire.balancer.scheduler
        assert set(scheduler.services) == {
            worker.service.name for worker in scheduler.workers.values()
        }


TestServicesMachine = ServicesMachine.TestCase
TestServicesMachine.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)
