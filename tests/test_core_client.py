from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from strategies import body, messages
from zmqrelay._core import tag
from zmqrelay._core.client import ClientStatistics, Correlator, single_frame
from zmqrelay._core.worker import encode_error
from zmqrelay.errors import LocalProtocolError, NoWorkers, RemoteError, RemoteProtocolError


def reply_to(request: list[bytes], payload: list[bytes]) -> list[bytes]:
    """What a REP worker sends back through the broker, as the client reads it."""
    delimiter = request.index(b"")
    return [*request[:delimiter], b"", *payload]


def test_request_frames_carry_a_tag_and_delimiter() -> None:
    correlator: Correlator[str] = Correlator(first_id=41)
    request_id, frames = correlator.open("waiter", [b"Hello"])
    assert request_id == 41
    assert frames == [tag.encode(41), b"", b"Hello"]
    assert correlator.in_flight == 1


def test_a_request_needs_a_body() -> None:
    with pytest.raises(LocalProtocolError):
        Correlator[str](first_id=0).open("waiter", [])


def test_replies_match_in_any_order() -> None:
    correlator: Correlator[str] = Correlator(first_id=7)
    _, first = correlator.open("first", [b"1"])
    _, second = correlator.open("second", [b"2"])
    matched = correlator.receive(reply_to(second, [b"two"]))
    assert matched is not None
    assert matched[0] == "second"
    assert matched[1].result() == [b"two"]
    matched = correlator.receive(reply_to(first, [b"one"]))
    assert matched is not None
    assert matched[0] == "first"
    assert correlator.in_flight == 0


def test_late_foreign_and_malformed_replies_are_counted() -> None:
    correlator: Correlator[str] = Correlator(first_id=2**64 - 1)  # ids wrap around
    request_id, frames = correlator.open("waiter", [b"x"])
    correlator.close(request_id)
    assert correlator.receive(reply_to(frames, [b"late"])) is None
    assert correlator.receive([tag.encode(12345), b"", b"foreign"]) is None
    assert correlator.receive([b"garbage"]) is None
    assert correlator.receive([tag.encode(0), b"not a delimiter", b"x"]) is None
    stats = correlator.statistics()
    assert (stats.late_replies, stats.foreign_replies, stats.malformed_replies) == (1, 1, 2)
    assert correlator.issued(2**64 - 1)
    assert not correlator.issued(0)


def test_error_replies_raise_remote_error() -> None:
    correlator: Correlator[str] = Correlator(first_id=0)
    request_id, _ = correlator.open("waiter", [b"x"])
    error_tag = tag.encode(request_id, tag.Status.ERROR)
    matched = correlator.receive([error_tag, b"", *encode_error("ValueError", "bad input")])
    assert matched is not None
    with pytest.raises(RemoteError, match="ValueError: bad input") as caught:
        matched[1].result()
    assert (caught.value.type_name, caught.value.message) == ("ValueError", "bad input")


def test_a_service_request_refused_in_plain_framing_raises_the_refusal() -> None:
    """A relay-mode worker cannot answer in Majordomo framing: its refusal still counts."""
    correlator: Correlator[str] = Correlator(first_id=0)
    request_id, _ = correlator.open("waiter", [b"x"], service=b"shout")
    refused = tag.encode(request_id, tag.Status.NO_WORKERS)
    matched = correlator.receive([refused, b"", b"no worker serves 'shout'"])
    assert matched is not None
    with pytest.raises(NoWorkers, match="no worker serves 'shout'"):
        matched[1].result()
    # An answer in plain framing that claims success is still malformed.
    request_id, _ = correlator.open("waiter", [b"x"], service=b"shout")
    assert correlator.receive([tag.encode(request_id), b"", b"plain"]) is None
    assert correlator.statistics().malformed_replies == 1


@given(messages)
def test_any_message_is_matched_or_counted(frames: list[bytes]) -> None:
    correlator: Correlator[str] = Correlator(first_id=0)
    correlator.open("waiter", [b"x"])
    before = _counted(correlator.statistics())
    correlator.receive(frames)
    stats = correlator.statistics()
    dropped = stats.late_replies + stats.foreign_replies + stats.malformed_replies
    assert stats.replies_received + dropped == 1
    assert _counted(stats) >= before


def _counted(stats: ClientStatistics) -> int:
    """The sum of the counters after ``requests_sent``."""
    return (
        stats.replies_received
        + stats.in_flight
        + stats.timeouts
        + stats.late_replies
        + stats.foreign_replies
        + stats.malformed_replies
        + stats.retries
    )


class CorrelatorMachine(RuleBasedStateMachine):
    """Requests open and end in any order; replies come once, twice, late or never."""

    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.correlator: Correlator[int] = Correlator(first_id=2**64 - 3)
        self.frames: dict[int, list[bytes]] = {}
        self.open_ids: set[int] = set()
        self.delivered: dict[int, int] = {}
        self.next_waiter = 0

    @rule(target=requests, payload=body)
    def send(self, payload: list[bytes]) -> int:
        waiter = self.next_waiter
        self.next_waiter += 1
        request_id, frames = self.correlator.open(waiter, payload)
        assert request_id not in self.open_ids
        self.frames[waiter] = frames
        self.open_ids.add(request_id)
        self.delivered.setdefault(waiter, 0)
        return waiter

    @rule(waiter=requests, payload=body)
    def reply(self, waiter: int, payload: list[bytes]) -> None:
        matched = self.correlator.receive(reply_to(self.frames[waiter], payload))
        if matched is not None:
            assert matched[0] == waiter, "a reply reached the wrong request"
            assert matched[1].result() == payload
            self.delivered[waiter] += 1
            self.open_ids.discard(matched[1].request_id)

    @rule(waiter=requests)
    def give_up(self, waiter: int) -> None:
        request_id = tag.decode(self.frames[waiter][0])
        assert request_id is not None
        self.correlator.close(request_id.request_id)
        self.open_ids.discard(request_id.request_id)

    @rule(frames=messages)
    def garbage(self, frames: list[bytes]) -> None:
        matched = self.correlator.receive(frames)
        if matched is not None:  # garbage that happens to be a valid reply to a request
            self.delivered[matched[0]] += 1
            self.open_ids.discard(matched[1].request_id)

    @invariant()
    def at_most_one_reply_per_request(self) -> None:
        assert all(count <= 1 for count in self.delivered.values())

    @invariant()
    def in_flight_is_what_is_open(self) -> None:
        assert self.correlator.in_flight == len(self.open_ids)


TestCorrelatorMachine = CorrelatorMachine.TestCase


def test_requests_expire_at_their_deadline_and_late_replies_are_counted() -> None:
    correlator: Correlator[str] = Correlator(first_id=0)
    _, slow = correlator.open("slow", [b"1"], now=10.0, timeout=5.0)
    correlator.open("quick", [b"2"], now=10.0, timeout=1.0)
    correlator.open("patient", [b"3"], now=10.0)  # no timeout
    assert correlator.next_deadline() == 11.0
    assert correlator.expire(now=10.5) == []
    assert correlator.expire(now=11.0) == [("quick", 1.0)]
    assert correlator.next_deadline() == 15.0
    assert correlator.expire(now=20.0) == [("slow", 5.0)]
    assert correlator.next_deadline() is None
    assert correlator.in_flight == 1
    assert correlator.receive(reply_to(slow, [b"too late"])) is None
    stats = correlator.statistics()
    assert (stats.timeouts, stats.late_replies) == (2, 1)


def test_answered_requests_do_not_pile_up_deadlines() -> None:
    correlator: Correlator[int] = Correlator(first_id=0)
    for n in range(10_000):
        request_id, _ = correlator.open(n, [b"x"], now=float(n), timeout=30.0)
        correlator.close(request_id)
    assert len(correlator._deadlines) < 3000
    assert correlator.next_deadline() is None


@given(
    st.integers(0, 2**64 - 1),
    st.none() | st.floats(-1.0, 1e9, allow_nan=False),
    st.integers(-3, 300),
    st.booleans(),
)
def test_the_request_tag_is_what_tag_encode_builds(
    first_id: int, timeout: float | None, redeliveries: int, twice: bool
) -> None:
    correlator: Correlator[str] = Correlator(first_id)
    for _ in range(2 if twice else 1):  # the second time, from the kept tail
        request_id, frames = correlator.open(
            "waiter", [b"x"], timeout=timeout, redeliveries=redeliveries
        )
        assert frames[0] == tag.encode(request_id, timeout=timeout, redeliveries=redeliveries)


@given(st.binary(min_size=tag.SIZE, max_size=tag.SIZE), st.integers(0, 7))
def test_a_reply_tag_is_read_as_tag_decode_reads_it(noise: bytes, status: int) -> None:
    frame = tag.MAGIC + bytes([tag.VERSION, status]) + noise[4:]
    for head in (frame, noise):
        decoded = tag.decode(head)
        correlator: Correlator[str] = Correlator(0 if decoded is None else decoded.request_id)
        correlator.open("waiter", [b"x"], stream=True)  # a PARTIAL part comes back too
        matched = correlator.receive([head, b"", b"reply"])
        if decoded is None:
            assert matched is None
            assert correlator.statistics().malformed_replies == 1
        else:
            assert matched is not None
            assert matched[1].status is decoded.status
            assert matched[1].request_id == decoded.request_id


@given(st.lists(st.binary(max_size=8), max_size=4))
def test_a_single_frame_reply_is_its_frame_and_any_other_is_refused(frames: list[bytes]) -> None:
    if len(frames) == 1:
        assert single_frame(frames) == frames[0]
    else:
        with pytest.raises(RemoteProtocolError, match=f"got {len(frames)} frames"):
            single_frame(frames)
