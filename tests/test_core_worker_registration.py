"""What a worker says to its broker, per protocol (:mod:`zmqrelay._core.registration`), by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import messages
from zmqrelay._core import lbwire, mdp, tag
from zmqrelay._core.lbwire import Assignment
from zmqrelay._core.mdp import MdpAssignment
from zmqrelay._core.registration import (
    MAX_RETRY_DELAY,
    Conversation,
    Greeting,
    Majordomo,
    Registration,
    Relayed,
    Signal,
    Zrw,
)
from zmqrelay._core.worker import Request, Unanswerable
from zmqrelay._core.worker_link import Link
from zmqrelay.errors import RemoteProtocolError

INTERVAL, LIVENESS = 1.0, 3
HEARTBEAT = lbwire.encode_command_to_broker(lbwire.HEARTBEAT)
DISCONNECT = lbwire.encode_command_to_broker(lbwire.DISCONNECT)


def link() -> Link:
    return Link("tcp://broker:5560", heartbeat_interval=INTERVAL, liveness=LIVENESS)


def zrw(*, ask_context: bool = False, credits: int = 4) -> Zrw:
    return Zrw(
        link(),
        credits=credits,
        service=b"echo",
        heartbeat_interval=INTERVAL,
        ask_context=ask_context,
    )


def majordomo(variant: mdp.Variant = "mdp-0.2") -> Majordomo:
    return Majordomo(link(), variant=variant, service=b"echo", heartbeat_interval=INTERVAL)


def zrw_request(body: list[bytes]) -> list[bytes]:
    header = lbwire.REQUEST_HEADER.pack(lbwire.PROTOCOL, lbwire.REQUEST, bytes(8), 0, 1500)
    return [header, *body]


def test_a_zrw_worker_registers_with_its_credits_and_waits_for_the_answer() -> None:
    registration = zrw(credits=4)
    assert registration.ready(10.0) == Greeting(lbwire.encode_ready(4, b"echo"), reconnect=False)
    before = registration.registered
    assert registration.received(HEARTBEAT, 10.5) is Signal.ANSWERED
    assert (before, registration.registered) == (False, True)
    assert registration.received(HEARTBEAT, 11.0) is Signal.HEARD
    assert registration.link.registrations == 1


def test_a_request_reads_as_the_broker_sent_it_and_answers_a_ready_too() -> None:
    registration = zrw()
    registration.ready(0.0)
    request = registration.received(zrw_request([b"x"]), 0.1)
    assert request == Assignment(bytes(8), False, 1.5, [b"x"])
    assert registration.registered


def test_a_disconnect_forgets_the_session_and_asks_to_register_again() -> None:
    registration = zrw()
    registration.ready(0.0)
    registration.received(HEARTBEAT, 0.1)
    session = registration.link.take()
    assert registration.received(DISCONNECT, 0.2) is Signal.FORGOTTEN
    assert (session.open, session.forgotten) == (False, True)
    assert registration.link.session.open


def test_a_broker_that_refuses_trace_context_is_asked_again_without() -> None:
    registration = zrw(ask_context=True)
    asking = registration.ready(0.0).frames
    assert asking == lbwire.encode_ready(4, b"echo", context=True)
    assert registration.received(DISCONNECT, 0.1) is Signal.NO_CONTEXT
    assert registration.ready(0.2).frames == lbwire.encode_ready(4, b"echo")


def test_a_disconnect_that_answers_no_ready_keeps_asking_for_trace_context() -> None:
    registration = zrw(ask_context=True)
    registration.ready(0.0)
    registration.received(HEARTBEAT, 0.1)
    assert registration.received(DISCONNECT, 0.2) is Signal.FORGOTTEN
    assert registration.ask_context


def test_a_majordomo_worker_takes_itself_registered_and_reconnects_to_register_again() -> None:
    registration = majordomo("mdp-0.1")
    assert registration.patient
    first = registration.ready(0.0)
    assert first == Greeting(mdp.encode_ready("mdp-0.1", b"echo"), reconnect=False)
    assert registration.registered
    assert registration.ready(5.0).reconnect
    assert registration.link.registrations == 2


@pytest.mark.parametrize("variant", mdp.VARIANTS)
def test_a_majordomo_worker_reads_requests_heartbeats_and_disconnects(
    variant: mdp.Variant,
) -> None:
    registration = majordomo(variant)
    registration.ready(0.0)
    header = mdp.encode_to_broker(variant, "heartbeat")[:-1]
    command = mdp.COMMANDS[variant]
    request = registration.received([*header, command.request, b"token", b"", b"x"], 0.1)
    assert request == MdpAssignment(variant, b"token", [b"x"])
    assert registration.received(mdp.encode_to_broker(variant, "heartbeat"), 0.2) is Signal.HEARD
    forgotten = registration.received(mdp.encode_to_broker(variant, "disconnect"), 0.3)
    assert forgotten is Signal.FORGOTTEN


def test_goodbyes_zrw_leaves_then_disconnects() -> None:
    registration = zrw()
    assert registration.draining() == lbwire.encode_command_to_broker(lbwire.LEAVING)
    assert registration.idle() is None
    assert not registration.said_disconnect
    assert registration.stopped() == DISCONNECT
    assert registration.said_disconnect


@pytest.mark.parametrize("variant", mdp.VARIANTS)
def test_goodbyes_majordomo_disconnects_once_right_after_its_last_reply(
    variant: mdp.Variant,
) -> None:
    registration = majordomo(variant)
    assert registration.draining() is None
    assert registration.idle() == mdp.encode_to_broker(variant, "disconnect")
    assert registration.said_disconnect
    assert registration.idle() is None
    assert registration.stopped() is None


def test_goodbyes_majordomo_disconnects_as_it_stops_if_never_idle() -> None:
    registration = majordomo()
    assert registration.stopped() == mdp.encode_to_broker("mdp-0.2", "disconnect")
    assert registration.stopped() is None


def test_a_relayed_worker_registers_never_and_says_no_goodbye() -> None:
    relayed = Relayed(link())
    assert not relayed.registers
    assert (relayed.draining(), relayed.idle(), relayed.stopped()) == (None, None, None)
    assert not relayed.said_disconnect
    assert relayed.received([b"client", b"", b"x"], 0.0) == Request([b"client"], [b"x"])


@pytest.mark.parametrize("tagged", [False, True])
def test_a_relayed_request_for_a_named_service_is_refused_at_once(tagged: bool) -> None:
    hop = tag.encode(7) if tagged else b"client"
    body = mdp.encode_request("majortomo", b"fax", [b"x"])[1:]  # after the client's empty frame
    with pytest.raises(Unanswerable, match="no worker serves 'fax'") as refused:
        Relayed(link()).received([hop, b"", *body], 0.0)
    assert refused.value.request == Request([hop], body)
    if tagged:
        assert tag.decode(refused.value.answer[0]) == (7, tag.Status.NO_WORKERS, None, 0)
    else:
        assert refused.value.answer[-1].startswith(b"zmqrelay-error: NoWorkers: ")


beats = st.lists(
    st.tuples(st.sampled_from(["heard", "beat", "take", "release"]), st.floats(0, 2)),
    max_size=40,
)


@given(beats, st.booleans())
def test_it_heartbeats_until_the_broker_is_silent_for_liveness_intervals(
    steps: list[tuple[str, float]], patient: bool
) -> None:
    registration: Registration = majordomo() if patient else zrw()
    heartbeat = registration.beat(0.0)
    assert heartbeat is not None
    registration.ready(0.0)
    now = heard = 0.0
    held = []
    for step, elapsed in steps:
        now += elapsed
        if step == "heard":
            registration.received(heartbeat, now)
            heard = now
        elif step == "take":
            held.append(registration.link.take())
        elif step == "release" and held:
            registration.link.release(held.pop())
        elif step == "beat":
            session = registration.link.session
            holding = registration.link.statistics().held > 0
            gone = now - heard >= INTERVAL * LIVENESS and not (patient and holding)
            assert (registration.beat(now) is None) == gone
            if gone:  # the session ended, silent: its requests may still be answered
                assert (session.open, session.forgotten) == (False, False)
                assert registration.link.session is not session
                held.clear()
                registration.ready(now)
                heard = now


@given(st.integers(1, 40), st.floats(0, 0.999), st.floats(0.01, 10))
def test_registering_again_backs_off_exponentially_with_jitter(
    attempt: int, jitter: float, interval: float
) -> None:
    registration = Zrw(
        link(), credits=1, service=b"", heartbeat_interval=interval, ask_context=False
    )
    delay = registration.retry_delay(attempt, jitter)
    base = delay - jitter * interval
    assert base == pytest.approx(
        min(interval * 2 ** (attempt - 1), MAX_RETRY_DELAY, 32 * interval)
    )
    assert registration.retry_delay(attempt + 1, jitter) >= delay
    assert interval <= registration.retry_delay(1, 0.0) < 2 * interval


conversations = st.sampled_from(
    [
        lambda: Relayed(link()),
        lambda: zrw(),
        *(lambda variant=variant: majordomo(variant) for variant in mdp.VARIANTS),
    ]
)


@given(conversations, messages)
def test_anything_a_broker_sends_reads_as_a_request_or_a_signal_or_is_refused_by_name(
    make: object, frames: list[bytes]
) -> None:
    assert callable(make)
    conversation = make()
    assert isinstance(conversation, Conversation)
    try:
        message = conversation.received(frames, 0.0)
    except RemoteProtocolError:
        return
    if isinstance(message, Signal):
        assert conversation.registers
    else:
        assert message.body
