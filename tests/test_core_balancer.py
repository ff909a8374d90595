"""The load-balancing core as one object: frames and the time in, frames to send out."""

from __future__ import annotations

from collections.abc import Callable

from zmqrelay._core import lbwire, tag
from zmqrelay._core.balancer import Balancer
from zmqrelay._core.dialects import ZRW1

GUIDE_READY = [b"", b"READY"]
MAJORTOMO = [b"", b"MDPW02"]


def take(balancer: Balancer) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """Empty both outboxes: (to clients, to workers)."""
    clients = [message for message, _ in balancer.to_clients]
    workers = [message for message, _ in balancer.to_workers]
    balancer.to_clients.clear()
    balancer.to_workers.clear()
    return clients, workers


def test_a_plain_request_goes_to_a_guide_worker_and_its_reply_back() -> None:
    balancer = Balancer(first_token=7)
    balancer.from_worker([b"W", *GUIDE_READY], 0.0)
    assert take(balancer) == ([], [])
    balancer.from_client([b"C", b"", b"hello"], 0.0)
    clients, (request,) = take(balancer)
    assert clients == []
    assert request == [b"W", b"", (7).to_bytes(8, "big"), b"", b"hello"]
    balancer.from_worker([*request[:-1], b"HELLO"], 0.1)
    assert take(balancer) == ([[b"C", b"", b"HELLO"]], [])
    stats = balancer.statistics()
    assert (stats.requests_forwarded, stats.replies_forwarded) == (1, 1)
    assert balancer.pending == 0


def test_requests_go_to_the_least_recently_used_worker() -> None:
    balancer = Balancer()
    for worker in (b"A", b"B"):
        balancer.from_worker([worker, *GUIDE_READY], 0.0)
    balancer.from_client([b"C", b"", b"1"], 0.0)
    balancer.from_client([b"C", b"", b"2"], 0.0)
    balancer.from_client([b"C", b"", b"3"], 0.0)  # queued: both workers are busy
    _, sent = take(balancer)
    assert [message[0] for message in sent] == [b"A", b"B"]
    assert balancer.pending == 3
    balancer.from_worker(sent[1], 0.1)  # B answers first, so it gets the next
    clients, (third,) = take(balancer)
    assert clients == [[b"C", b"", b"2"]]
    assert third[0] == b"B"
    assert third[-1] == b"3"


def test_a_worker_the_broker_does_not_know_is_told_to_register_again() -> None:
    balancer = Balancer()
    balancer.from_worker([b"W", *MAJORTOMO, b"\x05"], 0.0)  # a heartbeat
    balancer.from_worker([b"Z", b"", ZRW1, lbwire.HEARTBEAT], 0.0)
    assert take(balancer) == (
        [],
        [[b"W", *MAJORTOMO, b"\x06"], [b"Z", b"", ZRW1, lbwire.DISCONNECT]],
    )
    # A reply from it is counted as unknown, and it too gets DISCONNECT.
    balancer.from_worker([b"W", *MAJORTOMO, b"\x04", bytes(8), b"", b"late"], 0.0)
    assert take(balancer) == ([], [[b"W", *MAJORTOMO, b"\x06"]])
    assert balancer.statistics().malformed_replies == 1


def test_a_worker_that_breaks_its_protocol_is_disconnected_and_the_rest_are_served() -> None:
    balancer = Balancer()
    balancer.from_worker([b"bad", *MAJORTOMO, b"\x01", b"echo"], 0.0)
    balancer.from_worker([b"good", *MAJORTOMO, b"\x01", b"echo"], 0.0)
    take(balancer)
    balancer.from_worker([b"bad", *MAJORTOMO, b"\x01", b"echo"], 0.0)  # READY twice
    assert take(balancer) == ([], [[b"bad", *MAJORTOMO, b"\x06"]])
    balancer.from_client([b"C", b"", b"MDPC02", b"\x02", b"echo", b"hi"], 0.0)
    _, (request,) = take(balancer)
    assert request[0] == b"good"
    assert balancer.statistics().malformed_replies == 1
    assert balancer.scheduler.statistics().workers == 1


def test_drops_are_counted_by_kind_and_the_last_violation_is_kept_for_the_log() -> None:
    balancer = Balancer()
    balancer.from_worker([b"bad", *MAJORTOMO, b"\x01", b"echo"], 0.0)
    balancer.from_worker([b"bad", *MAJORTOMO, b"\x01", b"echo"], 0.0)  # READY twice
    balancer.from_client([b"C", b"no delimiter"], 0.0)
    balancer.from_worker([b"G", *GUIDE_READY], 0.0)
    balancer.from_worker([b"G", b"", bytes(8), b"", b"a reply for no request"], 0.0)
    drops = balancer.drops()
    assert {kind: count for kind, count in drops.items() if count} == {
        "malformed_requests": 1,
        "protocol_violations": 1,
        "unknown_replies": 1,
    }
    assert balancer.last_violation is not None
    assert balancer.last_violation[0] == b"bad"
    assert "READY" in balancer.last_violation[1]
    stats = balancer.statistics()
    assert stats.malformed_requests == drops["malformed_requests"]
    assert stats.malformed_replies == drops["protocol_violations"] + drops["unknown_replies"]


def test_nothing_is_sent_to_a_worker_after_it_said_disconnect() -> None:
    balancer = Balancer(redeliveries=1)
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"echo"], 0.0)
    balancer.from_client([b"C", b"", b"MDPC02", b"\x02", b"echo", b"hi"], 0.0)
    take(balancer)
    balancer.from_worker([b"W", *MAJORTOMO, b"\x06"], 0.1)
    clients, workers = take(balancer)
    assert workers == []
    assert clients == []  # the request waits for another worker (one redelivery allowed)
    balancer.from_worker([b"V", *MAJORTOMO, b"\x01", b"echo"], 0.2)
    _, (request,) = take(balancer)
    assert request[0] == b"V"


def test_a_request_that_meets_a_full_worker_goes_to_another() -> None:
    balancer = Balancer()
    balancer.from_worker([b"A", *GUIDE_READY], 0.0)
    balancer.from_worker([b"B", *GUIDE_READY], 0.0)
    balancer.from_client([b"C", b"", b"x"], 0.0)
    ((to_a, token),) = balancer.to_workers
    balancer.to_workers.clear()
    assert to_a[0] == b"A"
    balancer.worker_unreachable(b"A", "full", token, 0.0)
    _, (to_b,) = take(balancer)
    assert to_b[0] == b"B"
    assert to_b[-1] == to_a[-1]  # the same request
    assert balancer.statistics().requests_forwarded == 1


def test_a_request_for_a_worker_gone_unseen_waits_for_another() -> None:
    balancer = Balancer()
    balancer.from_worker([b"A", *GUIDE_READY], 0.0)
    balancer.from_client([b"C", b"", b"x"], 0.0)
    ((_, token),) = balancer.to_workers
    balancer.to_workers.clear()
    balancer.worker_unreachable(b"A", "gone", token, 0.0)
    assert take(balancer) == ([], [])
    assert balancer.pending == 1
    balancer.from_worker([b"B", *GUIDE_READY], 0.1)
    _, (request,) = take(balancer)
    assert request[0] == b"B"


def _streaming_balancer(queue_limit: int) -> tuple[Balancer, Callable[..., list[bytes]]]:
    balancer = Balancer(queue_limit=queue_limit)
    worker = [b"W", b"", ZRW1]
    balancer.from_worker([*worker, lbwire.READY, b"1"], 0.0)
    balancer.from_client([b"C", tag.encode(1), b"", b"go"], 0.0)
    take(balancer)
    token = (1).to_bytes(8, "big")

    def part(status: tag.Status, body: bytes) -> list[bytes]:
        return [*worker, lbwire.REPLY, token, bytes([status]), body]

    return balancer, part


def _full(balancer: Balancer, now: float) -> None:
    """As the loop: the first message for the client meets its full queue."""
    ((message, stream), *rest) = balancer.to_clients
    balancer.to_clients[:] = rest
    balancer.client_unreachable(message, "full", stream, now)


def test_answers_that_meet_a_full_client_queue_wait_and_go_in_order() -> None:
    balancer, part = _streaming_balancer(queue_limit=100)
    balancer.from_worker(part(tag.Status.PARTIAL, b"1"), 0.1)
    _full(balancer, 0.1)  # the client reads, but its queue in the broker is full now
    balancer.from_worker(part(tag.Status.PARTIAL, b"2"), 0.1)  # waits behind the first
    balancer.from_worker(part(tag.Status.OK, b"3"), 0.1)
    assert take(balancer) == ([], [])
    assert balancer.pending == 1
    wake = balancer.next_wakeup()
    assert wake is not None
    balancer.tick(wake)  # tried again: all of it, in order
    clients, _ = take(balancer)
    assert [message[-1] for message in clients] == [b"1", b"2", b"3"]
    assert balancer.statistics().congested_replies == 0
    balancer.tick(wake + 1)
    assert balancer.pending == 0


def test_a_stream_past_what_may_wait_ends_in_a_refusal_never_with_a_gap() -> None:
    balancer, part = _streaming_balancer(queue_limit=1)
    balancer.from_worker(part(tag.Status.PARTIAL, b"1"), 0.1)
    _full(balancer, 0.1)
    balancer.from_worker(part(tag.Status.PARTIAL, b"2"), 0.1)  # past the limit: dropped
    balancer.from_worker(part(tag.Status.OK, b"3"), 0.1)  # the end says what was lost
    wake = balancer.next_wakeup()
    assert wake is not None
    balancer.tick(wake)
    (first, refusal), _ = take(balancer)
    assert first[-1] == b"1"
    ended = tag.decode(refusal[1])
    assert ended is not None
    assert ended.status is tag.Status.BUSY
    assert b"lost" in refusal[-1]
    assert balancer.statistics().congested_replies == 1


def test_answers_for_a_client_gone_are_dropped_with_what_waited() -> None:
    balancer, part = _streaming_balancer(queue_limit=100)
    balancer.from_worker(part(tag.Status.PARTIAL, b"1"), 0.1)
    _full(balancer, 0.1)
    balancer.from_worker(part(tag.Status.OK, b"2"), 0.1)
    wake = balancer.next_wakeup()
    assert wake is not None
    balancer.tick(wake)
    ((message, stream), *_) = balancer.to_clients
    balancer.to_clients.clear()
    balancer.client_unreachable(message, "gone", stream, wake)
    assert balancer.statistics().unroutable_replies == 1
    assert balancer.pending == 0


def test_service_discovery_is_answered_by_the_broker() -> None:
    balancer = Balancer()
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"echo"], 0.0)
    take(balancer)
    for asked, answer in ((b"echo", b"200"), (b"nothing", b"404")):
        balancer.from_client([b"C", b"", b"MDPC02", b"\x02", b"mmi.service", asked], 0.0)
        ((reply,), workers) = take(balancer)
        assert workers == []
        assert reply[-1] == answer
    counts = balancer.statistics().scheduler
    assert counts is not None
    assert counts.mmi_requests == 2


def test_time_passing_ends_requests_and_abandon_counts_what_is_left() -> None:
    balancer = Balancer(queue_timeout=1.0)
    balancer.from_client([b"C", b"", b"a"], 0.0)
    balancer.from_client([b"C", tag.encode(2, timeout=0.5), b"", b"b"], 0.0)
    assert balancer.next_wakeup() == 0.5
    balancer.tick(0.5)
    (deadline,), _ = take(balancer)
    refused = tag.decode(deadline[1])
    assert refused is not None
    assert refused.status is tag.Status.DEADLINE
    assert balancer.pending == 1
    balancer.abandon()
    assert balancer.statistics().undelivered_requests == 1


def test_a_request_still_in_the_outbox_when_its_worker_leaves_waits_for_another() -> None:
    # A stopping Majordomo worker sends its last reply and DISCONNECT: if the broker gave it
    # a request in the same batch, that request never left the broker, and is not lost.
    balancer = Balancer()
    worker = [b"W", *MAJORTOMO]
    balancer.from_worker([*worker, b"\x01", b"echo"], 0.0)
    balancer.from_client([b"C1", b"", b"MDPC02", b"\x02", b"echo", b"one"], 0.0)
    (first,) = take(balancer)[1]
    balancer.from_client([b"C2", b"", b"MDPC02", b"\x02", b"echo", b"two"], 0.0)  # queued
    balancer.from_worker([*worker, b"\x04", first[4], b"", b"ONE"], 0.1)  # r2 to W, unsent
    balancer.from_worker([*worker, b"\x06"], 0.1)  # DISCONNECT, read in the same batch
    clients, workers = take(balancer)
    assert [reply[-1] for reply in clients] == [b"ONE"]
    assert workers == []
    assert balancer.pending == 1
    assert balancer.statistics().requests_forwarded == 1
    balancer.from_worker([b"V", *MAJORTOMO, b"\x01", b"echo"], 0.2)
    (request,) = take(balancer)[1]
    assert (request[0], request[-1]) == (b"V", b"two")


def test_a_worker_that_registers_again_in_another_dialect_is_spoken_to_in_it() -> None:
    balancer = Balancer()
    balancer.from_worker([b"W", *GUIDE_READY], 0.0)
    balancer.from_worker([b"W", b"", ZRW1, lbwire.READY, b"1"], 0.1)
    _, (acknowledged,) = take(balancer)
    assert acknowledged == [b"W", b"", ZRW1, lbwire.HEARTBEAT]
    balancer.from_client([b"C", b"", b"x"], 0.2)
    _, (request,) = take(balancer)
    assert request[2:4] == [ZRW1, lbwire.REQUEST]


def test_requests_that_ended_while_queued_leave_the_queue() -> None:
    balancer = Balancer(queue_timeout=1.0)
    for number in range(1000):
        balancer.from_client([b"C", tag.encode(number, timeout=0.5), b"", b"x"], number * 0.01)
        balancer.tick(number * 0.01)
    take(balancer)
    (service,) = balancer.scheduler.services.values()
    assert len(service.queue) <= 2 * service.queued + 64


def test_a_paranoid_pirate_worker_is_served_heartbeated_and_judged_by_its_silence() -> None:
    balancer = Balancer(heartbeat_interval=1.0, liveness=3)
    balancer.from_worker([b"P", b"\x01"], 0.0)  # READY, one frame, no empty frame
    assert take(balancer) == ([], [])
    balancer.from_worker([b"P", b"\x02"], 0.5)  # a heartbeat is a heartbeat, not a READY
    balancer.from_client([b"C", b"", b"hello"], 0.5)
    _, (request,) = take(balancer)
    assert request[0] == b"P"
    assert request[2:] == [b"", b"hello"]  # [reply-to, "", body]
    balancer.from_worker([b"P", request[1], b"", b"HELLO"], 0.6)
    assert take(balancer)[0] == [[b"C", b"", b"HELLO"]]
    balancer.tick(1.6)  # nothing sent to it for an interval: the broker heartbeats it
    assert take(balancer)[1] == [[b"P", b"\x02"]]
    assert balancer.next_wakeup() is not None
    balancer.tick(3.6)  # silent for liveness intervals since 0.6: dead
    assert balancer.scheduler.statistics().dead_workers == 1


def test_a_paranoid_pirate_worker_saying_ready_again_has_restarted() -> None:
    balancer = Balancer()
    balancer.from_worker([b"P", b"\x01"], 0.0)
    balancer.from_client([b"C", b"", b"x"], 0.0)
    take(balancer)
    balancer.from_worker([b"P", b"\x01"], 0.1)  # it reconnected: its request is lost
    (refusal,), _ = take(balancer)
    assert b"WorkerDied" in refusal[-1]


def test_a_guide_workers_late_reply_to_a_restarted_broker_is_its_ready() -> None:
    balancer = Balancer()
    balancer.from_worker([b"W", b"", bytes(8), b"", b"late"], 0.0)  # for the previous life
    assert take(balancer) == ([], [])  # dropped, never to a client
    assert balancer.statistics().malformed_replies == 1  # counted as a reply nobody asked
    balancer.from_client([b"C", b"", b"x"], 0.1)
    _, (request,) = take(balancer)
    assert request[0] == b"W"  # and the worker is taken as ready
