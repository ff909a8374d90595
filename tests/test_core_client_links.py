"""The client's choice among several brokers, and what it does when one is lost (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zmqrelay._core.client_links import Links, LinkState

ENDPOINTS = ["tcp://a:1", "tcp://b:1", "tcp://c:1"]


def test_links_start_down_and_nothing_is_chosen_until_one_is_up() -> None:
    links = Links(ENDPOINTS)
    assert [links.state(i) for i in range(3)] == [LinkState.DOWN] * 3
    assert links.assign(1, now=0.0) is None
    links.connected(2)
    assert links.assign(1, now=0.0) == 2


def test_equal_links_take_requests_in_turn_and_the_least_loaded_first() -> None:
    links = Links(ENDPOINTS)
    for index in range(3):
        links.connected(index)
    assert [links.assign(n, now=0.0) for n in range(6)] == [0, 1, 2, 0, 1, 2]
    links.ended(0, now=0.0)
    links.ended(3, now=0.0)  # link 0 is now the least loaded
    assert [links.assign(n, now=0.0) for n in (6, 7, 8)] == [0, 0, 1]


def test_a_lost_link_hands_back_its_requests_and_takes_no_more() -> None:
    links = Links(ENDPOINTS[:2])
    links.connected(0)
    links.connected(1)
    chosen = {n: links.assign(n, now=0.0) for n in range(4)}
    assert links.disconnected(0) == [n for n, index in chosen.items() if index == 0]
    assert links.state(0) is LinkState.DOWN
    assert {links.assign(n, now=0.0) for n in range(10, 20)} == {1}
    stats = links.statistics()
    assert (stats[0].failovers, stats[0].requests_lost, stats[0].in_flight) == (1, 2, 0)
    links.ended(0, now=0.0)  # a lost request that ends later is already forgotten
    links.connected(0)
    assert links.assign(30, now=0.0) == 0  # taken back, the least loaded


def test_timeouts_in_a_row_suspend_a_link_then_it_is_probed_one_request_at_a_time() -> None:
    links = Links(ENDPOINTS[:2], suspend_after=2, suspend_time=5.0)
    links.connected(0)
    links.connected(1)
    assert [links.assign(1, now=0.0), links.assign(2, now=0.0)] == [0, 1]
    # Link 0's requests time out twice in a row: suspended.
    links.ended(1, now=1.0, timed_out=True)
    assert links.assign(3, now=1.0) == 0
    links.ended(3, now=2.0, timed_out=True)
    assert links.state(0) is LinkState.SUSPENDED
    assert links.statistics()[0].failovers == 1
    assert {links.assign(n, now=3.0) for n in range(10, 14)} == {1}
    # Its time is up: one request goes to it, as a probe, and no second one meanwhile.
    assert links.assign(20, now=7.0) == 0
    assert links.state(0) is LinkState.PROBING
    assert links.assign(21, now=7.0) == 1
    # The probe times out: suspended again; the next probe is answered: up.
    links.ended(20, now=8.0, timed_out=True)
    assert links.state(0) is LinkState.SUSPENDED
    assert links.assign(22, now=13.0) == 0
    links.heard(0)
    links.ended(22, now=13.1)
    assert links.state(0) is LinkState.UP


def test_a_reply_between_timeouts_keeps_the_link_up() -> None:
    links = Links(ENDPOINTS[:1], suspend_after=2)
    links.connected(0)
    for request_id in range(10):
        links.assign(request_id, now=0.0)
        links.ended(request_id, now=0.0, timed_out=True)
        links.heard(0)
    assert links.state(0) is LinkState.UP


def test_with_every_link_suspended_requests_still_go_out() -> None:
    links = Links(ENDPOINTS[:2], suspend_after=1, suspend_time=60.0)
    links.connected(0)
    links.connected(1)
    for request_id in range(2):
        links.assign(request_id, now=0.0)
        links.ended(request_id, now=0.0, timed_out=True)
    assert {links.state(0), links.state(1)} == {LinkState.SUSPENDED}
    assert links.assign(5, now=1.0) in (0, 1)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Links([])
    with pytest.raises(ValueError, match="suspend_after"):
        Links(ENDPOINTS, suspend_after=0)
    with pytest.raises(ValueError, match="suspend_time"):
        Links(ENDPOINTS, suspend_time=-1)


class LinksMachine(RuleBasedStateMachine):
    """Any sequence of events keeps every request on exactly one link, and choices sound."""

    @initialize(count=st.integers(1, 4), suspend_after=st.integers(1, 3))
    def start(self, count: int, suspend_after: int) -> None:
        self.links = Links([f"tcp://h{i}:1" for i in range(count)], suspend_after=suspend_after)
        self.count = count
        self.now = 0.0
        self.next_id = 0
        self.on: dict[int, int] = {}  # request id -> link, as the model sees it
        self.lost = [0] * count
        self.sent = 0

    @rule(seconds=st.floats(0, 10))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, self.count - 1))
        self.links.connected(index)
        assert self.links.state(index) is LinkState.UP

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, self.count - 1))
        held = sorted(n for n, on in self.on.items() if on == index)
        assert self.links.disconnected(index) == held
        for request_id in held:
            del self.on[request_id]
        self.lost[index] += len(held)
        assert self.links.state(index) is LinkState.DOWN

    @rule(data=st.data())
    def hear(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, self.count - 1))
        before = self.links.state(index)
        self.links.heard(index)
        assert self.links.state(index) is (
            LinkState.DOWN if before is LinkState.DOWN else LinkState.UP
        )

    @rule()
    def send(self) -> None:
        states = [self.links.state(i) for i in range(self.count)]
        loads = [sum(1 for on in self.on.values() if on == i) for i in range(self.count)]
        request_id = self.next_id
        self.next_id += 1
        index = self.links.assign(request_id, self.now)
        if index is None:
            assert all(state is LinkState.DOWN for state in states)
            return
        self.on[request_id] = index
        self.sent += 1
        assert states[index] is not LinkState.DOWN
        chosen = self.links.state(index)
        if chosen is LinkState.UP:
            up = [loads[i] for i in range(self.count) if states[i] is LinkState.UP]
            assert loads[index] == min(up)
        elif chosen is LinkState.PROBING and loads[index] == 0:
            pass  # its probe
        else:  # a fallback: no link was up
            assert LinkState.UP not in states

    @precondition(lambda self: bool(self.on))
    @rule(data=st.data(), timed_out=st.booleans())
    def end(self, data: st.DataObject, timed_out: bool) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.on)))
        del self.on[request_id]
        self.links.ended(request_id, self.now, timed_out=timed_out)
        self.links.ended(request_id, self.now, timed_out=timed_out)  # idempotent

    @invariant()
    def every_request_is_on_one_link(self) -> None:
        if not hasattr(self, "links"):
            return
        assert self.links.in_flight == len(self.on)
        stats = self.links.statistics()
        for index, link in enumerate(stats):
            assert link.in_flight == sum(1 for on in self.on.values() if on == index)
            assert link.requests_lost == self.lost[index]
            assert link.state == self.links.state(index).value
        for request_id, index in self.on.items():
            assert self.links.link_of(request_id) == index
        assert sum(link.requests_sent for link in stats) == self.sent


TestLinks = LinksMachine.TestCase
