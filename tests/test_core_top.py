"""What ``zmqrelay top`` works out from two scrapes: rates, resets, percentiles, totals, order.

No endpoint and no clock: scrapes are built from samples and times given by hand.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqrelay._core.top import (
    DROP_REASONS,
    OUTCOMES,
    SCHEMA,
    BrokerInfo,
    Forwarded,
    Percentiles,
    Scrape,
    TopView,
    bucket_increases,
    bucket_quantile,
    increases,
    metrics_url,
)

Sample = tuple[str, Mapping[str, str], float]
BOUNDS = (0.001, 0.01, 0.1, 1.0, math.inf)


def histogram(
    name: str, observations: Sequence[float], bounds: Sequence[float] = BOUNDS, **labels: str
) -> list[Sample]:
    """The bucket samples of a histogram that observed these values."""
    return [
        (
            f"{name}_bucket",
            {**labels, "le": "+Inf" if bound == math.inf else repr(bound)},
            float(sum(1 for value in observations if value <= bound)),
        )
        for bound in bounds
    ]


def info(mode: str = "load-balancing", engine: str = "python") -> Sample:
    return ("zmqrelay_broker_info", {"mode": mode, "engine": engine, "version": "0.1.0"}, 1.0)


def requests(service: str, outcome: str, value: float) -> Sample:
    return ("zmqrelay_requests_total", {"service": service, "outcome": outcome}, value)


# -- the URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("127.0.0.1:9464", "http://127.0.0.1:9464/metrics"),
        ("  broker.example:80 ", "http://broker.example:80/metrics"),
        ("http://[::1]:9464", "http://[::1]:9464/metrics"),
        ("http://h:9464/", "http://h:9464/metrics"),
        ("https://h/zmqrelay/metrics?x=1", "https://h/zmqrelay/metrics?x=1"),
    ],
)
def test_metrics_url_takes_host_port_or_a_url(typed: str, url: str) -> None:
    assert metrics_url(typed) == url


@pytest.mark.parametrize("typed", ["", "ftp://h:21/metrics", "h:port", "h:99999", "http://:80"])
def test_metrics_url_refuses_what_is_not_an_http_endpoint(typed: str) -> None:
    with pytest.raises(ValueError, match=r"is not HOST:PORT|Port"):
        metrics_url(typed)


# -- percentiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1: 10, 2: 20, 4: 40, math.inf: 40}, 2.0),
        (0.25, {1: 10, 2: 20, 4: 40, math.inf: 40}, 1.0),
        (0.99, {1: 10, 2: 20, 4: 40, math.inf: 40}, 3.96),  # 2 + 2 * 19.6 / 20
        (0.9, {1: 10, 2: 20, 4: 30, math.inf: 40}, 4.0),  # in +Inf: the highest finite bound
        (0.1, {-1: 5, 1: 10, math.inf: 10}, -1.0),  # in a lowest bucket at or below 0: its bound
        (0.5, {1: 10, 2: 5, math.inf: 10}, 0.5),  # the counts' dip is raised to 10
    ],
)
def test_bucket_quantile_interpolates_as_prometheus_does(
    q: float, buckets: dict[float, float], expected: float
) -> None:
    assert bucket_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize(
    "buckets",
    [
        {1: 10, 2: 20},  # no +Inf bucket
        {math.inf: 10},  # one bucket
        {1: 0, math.inf: 0},  # nothing observed
        {1: math.nan, math.inf: math.nan},
        {},
    ],
)
def test_bucket_quantile_has_no_answer_without_observations_or_a_top_bucket(
    buckets: dict[float, float],
) -> None:
    assert bucket_quantile(0.5, buckets) is None


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan])
def test_bucket_quantile_takes_a_fraction(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        bucket_quantile(q, {1: 1, math.inf: 1})


finite_bounds = st.lists(
    st.floats(0.001, 100, allow_nan=False), min_size=1, max_size=8, unique=True
).map(sorted)
observations = st.lists(st.floats(0, 200, allow_nan=False), min_size=1, max_size=60)


@given(finite_bounds, observations, st.floats(0.001, 1))
def test_a_percentile_lies_in_the_bucket_that_holds_the_true_one(
    bounds: list[float], values: list[float], q: float
) -> None:
    """The estimate is within the bounds of the bucket of the observation at rank q."""
    buckets = {bound: float(sum(1 for v in values if v <= bound)) for bound in bounds}
    buckets[math.inf] = float(len(values))
    estimate = bucket_quantile(q, buckets)
    assert estimate is not None
    true = sorted(values)[max(math.ceil(q * len(values)), 1) - 1]
    index = bisect.bisect_left(bounds, true)  # the bucket (lower, upper] holding it
    if index == len(bounds):
        assert estimate == bounds[-1]
    else:
        lower = bounds[index - 1] if index > 0 else 0.0
        assert lower <= estimate <= bounds[index]


@given(finite_bounds, observations, st.floats(0, 1), st.floats(0, 1))
def test_percentiles_grow_with_the_fraction(
    bounds: list[float], values: list[float], q1: float, q2: float
) -> None:
    buckets = {bound: float(sum(1 for v in values if v <= bound)) for bound in bounds}
    buckets[math.inf] = float(len(values))
    low, high = bucket_quantile(min(q1, q2), buckets), bucket_quantile(max(q1, q2), buckets)
    if low is not None and high is not None:
        assert low <= high


# -- increases and resets ---------------------------------------------------------------------

# One interval: whether the counter restarts during it, then what it counts.
intervals = st.lists(
    st.tuples(st.booleans(), st.lists(st.integers(0, 1000), max_size=5)), min_size=1, max_size=8
)


@given(st.integers(0, 10_000), intervals, st.booleans())
def test_a_counters_increases_add_up_to_what_it_counted_across_restarts(
    start: int, steps: list[tuple[bool, list[int]]], created: bool
) -> None:
    """With its ``_created`` time, every restart is seen; without, those it went down at."""
    value, born, at = float(start), 0.0, 0.0

    def take() -> Scrape:
        samples: list[Sample] = [("x_total", {"k": "v"}, value)]
        if created:
            samples.append(("x_created", {"k": "v"}, born))
        return Scrape.of(at, samples)

    before = take()
    for restarts, counts in steps:
        old = value
        if restarts:
            value, born = 0.0, born + 1
        value += sum(counts)
        at += 1
        after = take()
        (grown,) = increases(before, after, "x_total").values()
        if not restarts or created or value < old:
            assert grown == sum(counts)
        else:  # a restart it cannot see: it looks like growth
            assert grown == value - old
        before = after


def test_a_new_series_counted_from_zero_and_one_that_went_away_is_not_counted() -> None:
    before = Scrape.of(0, [requests("a", "reply", 5), requests("gone", "reply", 9)])
    after = Scrape.of(1, [requests("a", "reply", 7), requests("b", "busy", 3)])
    assert increases(before, after, "zmqrelay_requests_total") == {
        (("outcome", "reply"), ("service", "a")): 2,
        (("outcome", "busy"), ("service", "b")): 3,
    }


@given(finite_bounds, observations, observations, st.booleans())
def test_bucket_increases_are_the_buckets_of_what_was_observed_in_between(
    bounds: list[float], old: list[float], new: list[float], restart: bool
) -> None:
    """A restart between the scrapes shows in the series' ``_created`` time."""
    every = [*bounds, math.inf]
    created: Sample = ("h_created", {"service": "s"}, 1.0)
    before = Scrape.of(0, [*histogram("h", old, every, service="s"), created])
    since = new if restart else [*old, *new]
    created = ("h_created", {"service": "s"}, 2.0 if restart else 1.0)
    after = Scrape.of(1, [*histogram("h", since, every, service="s"), created])
    (grown,) = bucket_increases(before, after, "h").values()
    assert grown == {bound: float(sum(1 for v in new if v <= bound)) for bound in every}


def test_a_histogram_whose_created_time_changed_was_reset_as_a_whole() -> None:
    old = [*histogram("h", [0.5] * 3), ("h_created", {}, 100.0)]
    new = [*histogram("h", [0.5] * 5), ("h_created", {}, 200.0)]
    (grown,) = bucket_increases(Scrape.of(0, old), Scrape.of(1, new), "h").values()
    assert grown[math.inf] == 5


# -- the view ---------------------------------------------------------------------------------


def load_balancing_scrapes() -> tuple[Scrape, Scrape]:
    """Two seconds of a broker with services ``resize``, ``thumb`` and ``(default)``."""
    families = ["zmqrelay_queue_wait_seconds", "zmqrelay_messages_dropped"]
    before = Scrape.of(
        10.0,
        [
            info(),
            requests("resize", "reply", 100),
            requests("thumb", "reply", 50),
            *histogram("zmqrelay_request_duration_seconds", [0.005] * 100, service="resize"),
            ("zmqrelay_requests_forwarded_total", {}, 150),
        ],
        families,
    )
    after = Scrape.of(
        12.0,
        [
            info(),
            requests("resize", "reply", 300),
            requests("resize", "error", 4),
            requests("thumb", "reply", 250),
            requests("thumb", "busy", 6),
            requests("thumb", "teapot", 2),  # an outcome this version does not know
            requests("(default)", "reply", 0),
            *histogram(
                "zmqrelay_request_duration_seconds",
                [0.005] * 100 + [0.005] * 196 + [0.5] * 8,
                service="resize",
            ),
            *histogram("zmqrelay_request_duration_seconds", [0.05] * 200, service="thumb"),
            ("zmqrelay_workers", {"service": "resize"}, 3),
            ("zmqrelay_workers", {"service": "thumb"}, 1),
            ("zmqrelay_requests_in_flight", {"service": "resize"}, 2.5),
            ("zmqrelay_requests_forwarded_total", {}, 750),
            ("zmqrelay_messages_dropped_total", {"reason": "late"}, 3),
        ],
        families,
    )
    return before, after


def test_the_view_of_a_load_balancing_broker() -> None:
    view = TopView.from_scrapes(*load_balancing_scrapes())
    assert view.seconds == 2
    assert view.broker == BrokerInfo("load-balancing", "python", "0.1.0")
    assert view.services is not None
    assert [row.service for row in view.services] == ["thumb", "resize", "(default)"]
    thumb, resize, default = view.services
    assert resize.outcomes_per_second == {**dict.fromkeys(OUTCOMES, 0.0), "reply": 100, "error": 2}
    assert (resize.requests_per_second, resize.errors_per_second) == (102, 2)
    assert thumb.refused_per_second == 4  # busy and the unknown outcome: the broker's refusals
    assert thumb.outcomes_per_second is not None
    assert thumb.outcomes_per_second["teapot"] == 1
    assert default.requests_per_second == 0
    # 196 requests took 5 ms and 8 took 500 ms.
    assert resize.latency.p50 == pytest.approx(0.001 + 0.009 * 102 / 196)
    assert resize.latency.p99 == pytest.approx(0.1 + 0.9 * (0.99 * 204 - 196) / 8)
    assert default.latency == Percentiles(None, None, None)
    assert resize.queue_wait == Percentiles(None, None, None)  # declared, nothing observed
    assert (resize.workers, thumb.workers, default.workers) == (3, 1, 0)
    assert (resize.requests_in_flight, thumb.requests_in_flight) == (2.5, 0)
    assert resize.queued_requests is None  # not exposed
    assert view.forwarded == {
        "request": Forwarded(300, None, None),
        "reply": Forwarded(None, None, None),
    }
    assert view.dropped_per_second == {**dict.fromkeys(DROP_REASONS, 0.0), "late": 1.5}
    assert view.handshakes_refused_per_second is None  # no CURVE
    assert view.handshakes_failed_per_second is None


def test_the_totals_row_sums_the_services_and_their_buckets() -> None:
    view = TopView.from_scrapes(*load_balancing_scrapes())
    assert view.services is not None
    assert view.total is not None
    assert view.total.service == "(all)"
    assert view.total.requests_per_second == sum(
        row.requests_per_second or 0 for row in view.services
    )
    assert view.total.workers == 4
    # 196 requests took 5 ms, 200 took 50 ms, 8 took 500 ms: the median is the 202nd.
    assert view.total.latency.p50 == pytest.approx(0.01 + 0.09 * (202 - 196) / 200)


def test_one_scrape_gives_the_gauges_and_no_rates() -> None:
    _, after = load_balancing_scrapes()
    view = TopView.from_scrapes(None, after)
    assert view.seconds is None
    assert view.services is not None
    resize = next(row for row in view.services if row.service == "resize")
    assert resize.requests_per_second is None
    assert resize.latency == Percentiles(None, None, None)
    assert resize.workers == 3
    assert view.dropped_per_second is None
    assert view.forwarded == {
        "request": Forwarded(None, None, None),
        "reply": Forwarded(None, None, None),
    }


def test_a_broker_with_no_services_yet_has_a_totals_row_of_zeros() -> None:
    declared = ["zmqrelay_requests", "zmqrelay_workers"]
    view = TopView.from_scrapes(Scrape.of(0, [info()], declared), Scrape.of(1, [info()], declared))
    assert view.services == ()
    assert view.total is not None
    assert (view.total.requests_per_second, view.total.workers) == (0.0, 0.0)
    assert all(
        isinstance(value, float) for value in (view.total.refused_per_second, view.total.workers)
    )


def test_a_relay_broker_shows_what_each_direction_carried() -> None:
    def relay(at: float, frames: int, size: int) -> Scrape:
        samples: list[Sample] = [info("relay", "libzmq")]
        for direction in ("request", "reply"):
            samples.append(("zmqrelay_relay_frames_total", {"direction": direction}, frames))
            samples.append(("zmqrelay_relay_bytes_total", {"direction": direction}, size))
        # A broker may declare every metric whatever its mode.
        return Scrape.of(at, samples, ["zmqrelay_requests", "zmqrelay_workers"])

    view = TopView.from_scrapes(relay(0, 100, 1000), relay(0.5, 300, 9000))
    assert view.services is None
    assert view.total is None
    assert view.forwarded == {
        "request": Forwarded(None, 400, 16000),
        "reply": Forwarded(None, 400, 16000),
    }
    document = view.to_json("http://h/metrics")
    assert document["services"] is None
    assert document["forwarded"]["reply"] == {
        "messages_per_second": None,
        "frames_per_second": 400,
        "bytes_per_second": 16000,
    }


def test_the_json_document() -> None:
    document = TopView.from_scrapes(*load_balancing_scrapes()).to_json("http://h:1/metrics")
    assert list(document) == [
        "schema",
        "url",
        "seconds",
        "broker",
        "services",
        "total",
        "forwarded",
        "dropped_per_second",
        "handshakes_per_second",
    ]
    assert (document["schema"], document["url"], document["seconds"]) == (
        SCHEMA,
        "http://h:1/metrics",
        2,
    )
    resize = document["services"][1]
    assert resize["service"] == "resize"
    assert resize["workers"] == 3
    assert isinstance(resize["workers"], int)
    assert resize["requests_in_flight"] == 2.5
    assert resize["queued_requests"] is None
    assert resize["latency_seconds"]["p50"] == pytest.approx(0.001 + 0.009 * 102 / 196)
    assert document["total"]["service"] == "(all)"
    assert document["handshakes_per_second"] == {"refused": None, "failed": None}
    assert json.loads(json.dumps(document, allow_nan=False)) == document


def test_numbers_json_cannot_hold_become_null() -> None:
    before = Scrape.of(0, [info(), requests("a", "reply", 0)])
    after = Scrape.of(1, [info(), requests("a", "reply", math.inf)])
    after_nan = Scrape.of(1, [info(), ("zmqrelay_workers", {"service": "a"}, math.nan)])
    for later in (after, after_nan):
        text = json.dumps(TopView.from_scrapes(before, later).to_json("u"), allow_nan=False)
        assert "null" in text


service_names = st.sampled_from(["a", "b", "c", "(default)", "(other)"])
counts = st.dictionaries(
    st.tuples(service_names, st.sampled_from(OUTCOMES)), st.integers(0, 10**6), max_size=12
)


@given(counts, counts, st.floats(0.01, 100))
def test_rows_are_busiest_first_and_the_total_is_their_sum(
    first: dict[tuple[str, str], int], grown: dict[tuple[str, str], int], seconds: float
) -> None:
    declared = ["zmqrelay_requests"]
    before = Scrape.of(0, [info(), *(requests(s, o, v) for (s, o), v in first.items())], declared)
    later = {key: first.get(key, 0) + grown.get(key, 0) for key in first.keys() | grown.keys()}
    after = Scrape.of(
        seconds, [info(), *(requests(s, o, v) for (s, o), v in later.items())], declared
    )
    view = TopView.from_scrapes(before, after)
    assert view.services is not None
    assert view.total is not None
    keys = [(-(row.requests_per_second or 0), row.service) for row in view.services]
    assert keys == sorted(keys)
    assert {row.service for row in view.services} == {service for service, _ in later}
    total = view.total.requests_per_second
    assert total == pytest.approx(sum(grown.values()) / seconds)
    assert total == pytest.approx(sum(row.requests_per_second or 0 for row in view.services))
