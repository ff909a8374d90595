"""A worker's standing with one broker (:mod:`zmqrelay._core.worker_link`), driven by hand."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zmqrelay._core.worker_link import Link, Session, WorkerLinkStatistics


def link() -> Link:
    return Link("tcp://broker:5560", heartbeat_interval=1.0, liveness=3)


def test_silence_counts_from_the_last_ready_or_message() -> None:
    standing = link()
    standing.register(10.0)
    assert not standing.gone(12.9, patient=False)
    assert standing.gone(13.0, patient=False)
    assert standing.heard(12.0)  # it answered the READY
    assert not standing.heard(12.5)  # a heartbeat answers nothing
    assert not standing.gone(15.4, patient=False)
    assert standing.gone(15.5, patient=False)


def test_a_patient_broker_is_judged_only_while_the_worker_holds_none_of_its_requests() -> None:
    standing = link()
    standing.register(0.0)
    session = standing.take()
    assert not standing.gone(100.0, patient=True)
    assert standing.gone(100.0, patient=False)
    standing.release(session)
    assert standing.gone(100.0, patient=True)


def test_a_disconnect_forgets_the_session_and_silence_leaves_it_answerable_if_room() -> None:
    standing = link()
    first = standing.take()
    standing.end(forgotten=True)
    second = standing.take()
    standing.end(forgotten=False)
    third = standing.take()
    assert (first.open, first.forgotten) == (False, True)
    assert (second.open, second.forgotten) == (False, False)
    assert (third.open, third.forgotten) == (True, False)
    assert standing.statistics().held == 1  # only the open session's request
    standing.release(first, dropped=True)
    standing.release(second)
    standing.release(third)
    assert standing.statistics() == WorkerLinkStatistics(
        "tcp://broker:5560", registrations=0, requests_received=3, requests_dropped=1, held=0
    )


operations = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.none()),
        st.tuples(st.just("release"), st.tuples(st.integers(0, 50), st.booleans())),
        st.tuples(st.just("end"), st.booleans()),
        st.tuples(st.just("register"), st.floats(0, 5)),
        st.tuples(st.just("heard"), st.floats(0, 5)),
    ),
    max_size=60,
)


@given(operations, st.booleans())
def test_counts_and_sessions_follow_any_sequence_of_events(
    steps: list[tuple[str, object]], patient: bool
) -> None:
    standing = link()
    now = last_heard = 0.0
    outstanding: list[Session] = []
    ended: dict[Session, bool] = {}  # each ended session: whether it was forgotten
    taken = dropped = 0
    registrations = 0
    for operation, argument in steps:
        if operation == "take":
            outstanding.append(standing.take())
            taken += 1
        elif operation == "release" and outstanding:
            assert isinstance(argument, tuple)
            index, drop = argument
            session = outstanding.pop(index % len(outstanding))
            standing.release(session, dropped=drop)
            dropped += drop
        elif operation == "end":
            assert isinstance(argument, bool)
            ended[standing.session] = argument
            standing.end(forgotten=argument)
        elif operation in ("register", "heard"):
            assert isinstance(argument, float)
            now += argument
            last_heard = now
            if operation == "register":
                standing.register(now)
                registrations += 1
            else:
                standing.heard(now)
        for session in outstanding:
            if session in ended:
                assert not session.open
                assert session.forgotten == ended[session]
            else:
                assert session is standing.session
                assert session.open
        held = sum(session is standing.session for session in outstanding)
        assert standing.statistics() == WorkerLinkStatistics(
            "tcp://broker:5560", registrations, taken, dropped, held
        )
        for later in (now + 2.9, now + 3.0):
            silent = later - last_heard >= 3.0
            assert standing.gone(later, patient=patient) == (silent and not (patient and held))
