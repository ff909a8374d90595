"""Per-service counters without sockets: histograms, outcomes, and labels that stay bounded."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqrelay._core.balancer import Balancer
from zmqrelay._core.lbwire import Assignment, decode_from_broker, encode_ready
from zmqrelay._core.metrics import (
    DURATION_BUCKETS,
    OTHER,
    OUTCOMES,
    Address,
    Histogram,
    RequestMetrics,
    label,
)

values = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(st.lists(values))
def test_a_histogram_counts_each_value_in_every_bucket_it_fits(observed: list[float]) -> None:
    histogram = Histogram()
    for value in observed:
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert [bound for bound, _ in snapshot.buckets] == [*DURATION_BUCKETS, math.inf]
    for bound, count in snapshot.buckets:
        assert count == sum(value <= bound for value in observed)
    assert snapshot.observations == len(observed)
    assert snapshot.total == pytest.approx(sum(observed))


@given(st.lists(values), st.lists(values))
def test_histograms_add_up(first: list[float], second: list[float]) -> None:
    one, two, both = Histogram(), Histogram(), Histogram()
    for value in first:
        one.observe(value)
        both.observe(value)
    for value in second:
        two.observe(value)
        both.observe(value)
    one.add(two)
    assert one.snapshot().buckets == both.snapshot().buckets


@given(
    st.lists(st.binary(max_size=8), max_size=300),
    st.lists(st.binary(max_size=8), max_size=30),
    st.integers(0, 10),
    st.integers(0, 10),
)
def test_labels_stay_within_the_limits_whatever_the_names(
    requested: list[bytes], offered: list[bytes], offered_limit: int, requested_limit: int
) -> None:
    metrics = RequestMetrics(offered_limit=offered_limit, requested_limit=requested_limit)
    for name in offered:
        metrics.offer(name)
    for name in requested:
        metrics.of(name).outcomes[0] += 1
    labels = [name for name, _ in metrics]
    assert len(labels) <= offered_limit + requested_limit + 1
    # Every request is counted, under its own label or under OTHER.
    assert sum(counted.outcomes[0] for _, counted in metrics) == len(requested)
    first_offered = list(dict.fromkeys(offered))[:offered_limit]
    assert all(metrics.labelled(name) for name in first_offered)
    if OTHER in labels:
        assert labels[-1] == OTHER


def test_labels_read_as_text() -> None:
    assert label(b"") == "(default)"
    assert label(b"resize") == "resize"
    assert label(b"caf\xc3\xa9\xff") == "caf\u00e9\\xff"


def _assigned(balancer: Balancer) -> Assignment:
    # The request, after any command (a ZRW2 worker's READY is answered with a heartbeat).
    ((frames, _),) = [entry for entry in balancer.to_workers if entry[1] is not None]
    balancer.to_workers.clear()
    assignment = decode_from_broker(frames[1:])
    assert isinstance(assignment, Assignment)
    return assignment


def test_the_balancer_counts_outcomes_durations_and_waits() -> None:
    balancer = Balancer(queue_timeout=1.0)
    metrics = balancer.measure()
    balancer.from_worker([b"w1", *encode_ready(1)], 0.0)  # one credit, the default service
    balancer.to_workers.clear()
    balancer.from_client([b"c1", b"", b"first"], 1.0)  # sent at once
    first = _assigned(balancer)
    balancer.from_client([b"c2", b"", b"second"], 1.25)  # waits for the credit
    balancer.from_worker([b"w1", *first.reply([b"one"])], 1.5)
    second = _assigned(balancer)
    balancer.from_worker([b"w1", *second.error("ValueError", "no")], 1.75)
    balancer.from_client([b"c3", b"", b"MDPC01", b"nobody", b"x"], 2.0)  # no worker offers it
    balancer.tick(3.0)

    counted = dict(metrics)
    default, nobody = counted["(default)"], counted["nobody"]
    assert dict(zip(OUTCOMES, default.outcomes, strict=True)) == {
        **dict.fromkeys(OUTCOMES, 0),
        "reply": 1,
        "error": 1,
    }
    assert nobody.outcomes[OUTCOMES.index("no_workers")] == 1
    durations = default.duration.snapshot()
    assert durations.observations == 2
    assert durations.total == pytest.approx(0.5 + 0.5)  # 1.0 -> 1.5 and 1.25 -> 1.75
    waits = default.queue_wait.snapshot()
    assert waits.observations == 2
    assert waits.total == pytest.approx(0.25)  # 0 for the first, 1.25 -> 1.5 for the second
    assert nobody.queue_wait.snapshot().observations == 0


def test_a_service_offered_before_measuring_keeps_its_label() -> None:
    balancer = Balancer()
    balancer.from_worker([b"w1", *encode_ready(1, b"echo")], 0.0)
    assert balancer.metrics is None
    assert balancer.measure().labelled(b"echo")
    assert balancer.measure() is balancer.metrics


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9464", Address("127.0.0.1", 9464)),
        (":0", Address("0.0.0.0", 0)),
        ("[::1]:80", Address("::1", 80)),
    ],
)
def test_metrics_addresses(text: str, address: Address) -> None:
    assert Address.parse(text) == address
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize("text", ["9464", "host:", "host:http", "host:70000", ""])
def test_bad_metrics_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        Address.parse(text)


def test_a_name_folded_while_only_asked_for_gets_its_label_once_a_worker_offers_it() -> None:
    balancer = Balancer(queue_timeout=10.0)
    balancer.scheduler.metrics = metrics = RequestMetrics(offered_limit=1, requested_limit=0)
    asked = [b"c1", b"", b"MDPC01", b"late", b"x"]
    balancer.from_client(asked, 0.0)  # waits; counted under (other) when it ends
    balancer.from_worker([b"w1", *encode_ready(1, b"late")], 1.0)
    first = _assigned(balancer)
    balancer.from_worker([b"w1", *first.reply([b"one"])], 2.0)
    balancer.from_client(asked, 3.0)
    second = _assigned(balancer)
    balancer.from_worker([b"w1", *second.reply([b"two"])], 4.0)
    counted = dict(metrics)
    assert counted["late"].outcomes[OUTCOMES.index("reply")] == 2
    assert OTHER not in counted
