from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from zmqrelay._core.throttle import Report, Throttle

kinds = st.sampled_from(["malformed", "refused", "late"])
steps = st.floats(min_value=0, max_value=25, allow_nan=False)
# What happens at each moment: occurrences one at a time, counters read, or a due check.
events = st.one_of(
    st.tuples(st.just("add"), kinds, st.integers(min_value=1, max_value=1000)),
    st.tuples(st.just("read"), kinds, st.integers(min_value=0, max_value=1000)),
    st.tuples(st.just("due"), kinds, st.just(0)),
)
histories = st.lists(st.tuples(steps, events), max_size=60)
intervals = st.sampled_from([0.5, 10.0])


def _replay(
    throttle: Throttle, history: list[tuple[float, tuple[str, str, int]]]
) -> tuple[list[tuple[float, Report]], Counter[str], float]:
    """Feed the history; the reports with their times, the occurrences fed, the last time."""
    now = 0.0
    reports: list[tuple[float, Report]] = []
    occurred: Counter[str] = Counter()
    totals: Counter[str] = Counter()  # the counters read, each only ever going up
    for step, (what, kind, count) in history:
        now += step
        if what == "add":
            occurred[kind] += count
            report = throttle.add(kind, now, count)
            reports += [(now, report)] if report is not None else []
        elif what == "read":
            totals[kind] += count
            occurred[kind] += count
            reports += [(now, report) for report in throttle.read({kind: totals[kind]}, now)]
        else:
            reports += [(now, report) for report in throttle.due(now)]
    return reports, occurred, now


@given(histories, intervals)
def test_reports_of_a_kind_are_an_interval_apart_and_say_how_long(
    history: list[tuple[float, tuple[str, str, int]]], interval: float
) -> None:
    reports, _, _ = _replay(Throttle(interval), history)
    last: dict[str, float] = {}
    for now, report in reports:
        assert report.occurrences > 0
        if report.kind in last:
            assert now >= last[report.kind] + interval
            assert report.since == now - last[report.kind]
        else:
            assert report.since is None
        last[report.kind] = now


@given(histories, intervals)
def test_every_occurrence_is_reported_once_an_interval_has_passed(
    history: list[tuple[float, tuple[str, str, int]]], interval: float
) -> None:
    throttle = Throttle(interval)
    reports, occurred, now = _replay(throttle, history)
    reported = Counter[str]()
    for _, report in reports:
        reported[report.kind] += report.occurrences
    assert reported + Counter(throttle.waiting()) == occurred
    waiting = throttle.waiting()
    flushed = throttle.flush(now)
    assert {report.kind: report.occurrences for report in flushed} == waiting
    assert throttle.flush(now) == []
    for report in flushed:
        reported[report.kind] += report.occurrences
    assert (reported, throttle.waiting()) == (occurred, {})


@given(histories, intervals)
# Found by hypothesis: 6.15193221818536 + 10.0 - 6.15193221818536 < 10.0 in floating point.
@example([(6.15193221818536, ("add", "malformed", 1)), (0.0, ("add", "malformed", 1))], 10.0)
def test_what_waits_is_reported_once_its_interval_has_passed(
    history: list[tuple[float, tuple[str, str, int]]], interval: float
) -> None:
    throttle = Throttle(interval)
    _, _, now = _replay(throttle, history)
    waiting = throttle.waiting()
    due = throttle.due(now + interval)
    assert {report.kind: report.occurrences for report in due} == waiting
    assert throttle.waiting() == {}


@given(histories, intervals, kinds, st.integers(min_value=1, max_value=5))
def test_the_first_occurrence_of_a_kind_is_reported_at_once(
    history: list[tuple[float, tuple[str, str, int]]], interval: float, kind: str, count: int
) -> None:
    throttle = Throttle(interval)
    fed = [(step, event) for step, event in history if event[1] != kind]
    _, _, now = _replay(throttle, fed)
    assert throttle.add(kind, now, count) == Report(kind, count, None)


def test_a_flood_makes_one_report_per_interval() -> None:
    throttle = Throttle(10.0)
    lines = [
        (now, report)
        for step in range(50_000)  # 50,000 occurrences over 25 s
        if (report := throttle.add("malformed", now := step / 2000)) is not None
    ]
    assert lines == [
        (0.0, Report("malformed", 1, None)),
        (10.0, Report("malformed", 20_000, 10.0)),
        (20.0, Report("malformed", 20_000, 10.0)),
    ]
    assert throttle.waiting() == {"malformed": 9_999}
    assert throttle.due(29.0) == []
    assert throttle.due(30.0) == [Report("malformed", 9_999, 10.0)]


def test_counters_read_report_their_increase_and_start_again_after_going_down() -> None:
    throttle = Throttle(1.0)
    assert throttle.read({"late": 0, "malformed": 3}, 0.0) == [Report("malformed", 3, None)]
    assert throttle.read({"late": 0, "malformed": 5}, 0.5) == []
    assert throttle.read({"late": 2, "malformed": 5}, 1.0) == [
        Report("late", 2, None),
        Report("malformed", 2, 1.0),
    ]
    assert throttle.read({"late": 1, "malformed": 5}, 5.0) == []  # a counter started again
    assert throttle.read({"late": 4, "malformed": 5}, 6.0) == [Report("late", 3, 5.0)]


def test_the_interval_is_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Throttle(0)
