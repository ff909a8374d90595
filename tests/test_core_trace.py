"""Trace context in zmqrelay's framing: the frame's codec, where it travels, who never sees it.

Plain peers and Majordomo peers must see exactly what they saw before; a malformed context is
ignored; a zmqrelay peer that gets none works as before.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import body, messages, routing
from zmqrelay._core import dialects, frontend, lbwire, tag, trace
from zmqrelay._core.balancer import Balancer, Waited
from zmqrelay._core.client import Correlator
from zmqrelay._core.refusal import Refusal
from zmqrelay._core.worker import decode_request
from zmqrelay.errors import RemoteProtocolError

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_ENCODED = trace.encode({"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
assert _ENCODED is not None
CONTEXT: bytes = _ENCODED

names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=64)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
carriers = st.dictionaries(names, values, min_size=1, max_size=6)
tokens = st.integers(0, 2**64 - 1).map(lambda token: token.to_bytes(8, "big"))


# -- the frame --------------------------------------------------------------------------------


@given(carriers)
def test_a_carrier_travels_whole(carrier: dict[str, str]) -> None:
    frame = trace.encode(carrier)
    assert frame is not None
    assert trace.is_context(frame)
    assert trace.decode(frame) == carrier


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
def test_fields_the_frame_cannot_carry_are_left_out(carrier: dict[str, str]) -> None:
    frame = trace.encode(carrier)
    if frame is None:
        return
    decoded = trace.decode(frame)
    assert decoded is not None
    assert decoded.items() <= carrier.items()


def test_what_is_left_out() -> None:
    assert trace.encode({}) is None
    assert trace.encode({"Traceparent": TRACEPARENT}) is None  # names are lower case
    assert trace.encode({"a:b": "x"}) is None
    assert trace.encode({"baggage": "caf\u00e9"}) is None  # not ASCII
    assert trace.encode({"baggage": "a\nb"}) is None  # a line break would split the field
    big = {"traceparent": TRACEPARENT, "baggage": "x" * trace.MAX_SIZE}
    assert trace.decode(trace.encode(big) or b"") == {"traceparent": TRACEPARENT}


@given(st.binary(max_size=64).map(lambda tail: trace.PREFIX + tail) | st.binary(max_size=64))
def test_any_frame_decodes_or_is_ignored(frame: bytes) -> None:
    decoded = trace.decode(frame)  # never raises
    if decoded is not None:
        assert trace.encode(decoded) is not None


@pytest.mark.parametrize(
    "frame",
    [
        trace.PREFIX,  # no field
        trace.PREFIX + b"traceparent",  # no colon
        trace.PREFIX + b":value",  # no name
        trace.PREFIX + b"Trace:x",
        trace.PREFIX + b"a:\x00",
        trace.PREFIX + b"a:x\n",  # an empty line
        trace.PREFIX + b"a:" + b"x" * trace.MAX_SIZE,  # too large
        b"ZRTC\x02a:b",  # a version this one does not know
        b"\x00\x6b\x8b\x45\x67",  # a routing id
    ],
)
def test_malformed_frames_are_ignored(frame: bytes) -> None:
    assert trace.decode(frame) is None


# -- client and relay-mode worker ---------------------------------------------------------------


def test_the_client_sends_the_context_before_its_tag() -> None:
    correlator: Correlator[str] = Correlator(5)
    request_id, sent = correlator.open("waiter", [b"hi"], context=CONTEXT)
    assert sent == [CONTEXT, tag.encode(request_id), b"", b"hi"]
    _, framed = correlator.open("other", [b"hi"], service=b"echo", context=CONTEXT)
    assert framed[0] == CONTEXT
    assert tag.decode(framed[1]) is not None
    _, plain = correlator.open("none", [b"hi"])
    assert plain[0] != CONTEXT  # no context, no frame: the request is as it always was


@given(body)
def test_a_reply_that_echoes_the_context_is_matched(payload: list[bytes]) -> None:
    correlator: Correlator[str] = Correlator(5)
    _, sent = correlator.open("waiter", payload, context=CONTEXT)
    # A stock REP worker answers with the envelope it got: [context, tag].
    matched = correlator.receive([*sent[:2], b"", *payload])
    assert matched is not None
    assert matched[0] == "waiter"
    assert matched[1].body == payload
    assert correlator.statistics().malformed_replies == 0


@given(routing, body)
def test_a_relay_worker_takes_the_context_out_of_the_envelope(
    hops: list[bytes], payload: list[bytes]
) -> None:
    tagged = tag.encode(9)
    request = decode_request([*hops, CONTEXT, tagged, b"", *payload])
    assert request.context == CONTEXT
    assert request.routing == [*hops, tagged]
    assert request.body == payload
    # Its replies go back without it: the client does not need it.
    assert request.reply([b"ok"]) == [*hops, tagged, b"", b"ok"]
    assert request.error("E", "m")[: len(hops)] == hops


def test_a_context_frame_is_only_read_where_a_zmqrelay_client_puts_it() -> None:
    tagged = tag.encode(9)
    # A client whose routing id looks like a context: it is the client's id, not a context.
    assert decode_request([CONTEXT, tagged, b"", b"x"]).context == b""
    # No tag after it: a plain client's envelope, opaque.
    plain = decode_request([b"C", CONTEXT, b"", b"x"])
    assert (plain.context, plain.routing) == (b"", [b"C", CONTEXT])
    assert decode_request([b"C", tagged, b"", b"x"]).context == b""


# -- load-balancing broker ----------------------------------------------------------------------


def test_the_broker_takes_the_context_out_of_the_clients_envelope() -> None:
    tagged = tag.encode(3)
    request = frontend.read_request(
        [b"C", CONTEXT, tagged, b"", b"hi"], 0.0, request_timeout=None, redeliveries=0
    )
    assert request is not None
    assert (request.context, request.envelope, request.tagged) == (CONTEXT, [b"C", tagged], True)
    assert frontend.answer(request, [b"HI"]) == [b"C", tagged, b"", b"HI"]
    # Not from a plain client (no tag), nor in place of a client's id.
    for frames in ([b"C", CONTEXT, b"", b"hi"], [CONTEXT, tagged, b"", b"hi"]):
        read = frontend.read_request(frames, 0.0, request_timeout=None, redeliveries=0)
        assert read is not None
        assert read.context == b""
        assert read.envelope == frames[:2]


@given(carriers, st.integers(1, 1000), st.binary(max_size=8).filter(lambda s: b"mmi." not in s))
def test_a_worker_that_asks_for_context_registers_with_its_features(
    carrier: dict[str, str], credits: int, service: bytes
) -> None:
    dialect, event = dialects.read([b"W", *lbwire.encode_ready(credits, service, context=True)],
                                   known=False)  # fmt: skip
    assert dialect is dialects.ZMQRELAY_WITH_CONTEXT
    assert event == dialects.Ready(credits, service)
    dialect, event = dialects.read([b"W", *lbwire.encode_ready(credits, service)], known=False)
    assert dialect is dialects.ZMQRELAY
    assert event == dialects.Ready(credits, service)


@given(tokens, body, st.booleans(), carriers)
def test_the_context_reaches_a_worker_that_asked_for_it(
    token: bytes, payload: list[bytes], redelivery: bool, carrier: dict[str, str]
) -> None:
    context = trace.encode(carrier)
    assert context is not None
    request = frontend.read_request(
        [b"C", context, tag.encode(1, timeout=2.0), b"", *payload],
        5.0,
        request_timeout=None,
        redeliveries=0,
    )
    assert request is not None
    request.token, request.redelivery = token, redelivery
    sent = dialects.ZMQRELAY_WITH_CONTEXT.request(b"W", request, 5.0)
    assignment = lbwire.decode_from_broker(sent[1:])
    assert isinstance(assignment, lbwire.Assignment)
    assert (assignment.reply_to, assignment.redelivery) == (token, redelivery)
    assert (assignment.body, assignment.context) == (payload, context)
    assert assignment.timeout == pytest.approx(2.0)
    # A worker that did not ask gets the request as it always did, without it.
    unasked = dialects.ZMQRELAY.request(b"W", request, 5.0)
    assert unasked == [b"W", sent[1][:13] + bytes([redelivery]) + sent[1][14:], *payload]
    assert lbwire.decode_from_broker(unasked[1:]) == lbwire.Assignment(
        token, redelivery, assignment.timeout, payload
    )


def test_majordomo_and_guide_workers_never_see_the_context() -> None:
    request = frontend.read_request(
        [b"C", CONTEXT, tag.encode(1), b"", b"MDPC02", b"\x02", b"echo", b"hi"],
        0.0,
        request_timeout=None,
        redeliveries=0,
    )
    assert request is not None
    request.token = bytes(8)
    for dialect in (dialects.GUIDE, dialects.PIRATE, dialects.ZMQRELAY_1, dialects.MDP_01,
                    dialects.MDP_02, dialects.MAJORTOMO):  # fmt: skip
        assert CONTEXT not in dialect.request(b"W", request, 0.0)


@pytest.mark.parametrize(
    "frames",
    [
        [b"ZRW2\x02" + bytes(8) + b"\x02" + bytes(4), b"body"],  # flagged, but only one frame
        [b"ZRW2\x02" + bytes(8) + b"\x04" + bytes(4), CONTEXT, b"body"],  # unknown flag
    ],
)
def test_requests_that_break_the_rules_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        lbwire.decode_from_broker(frames)


def test_a_malformed_context_reaches_the_worker_as_it_came() -> None:
    # The broker passes the frame on unread: the worker's tracing ignores what it cannot read.
    bad = trace.PREFIX + b"\xff\xfe"
    request = frontend.read_request(
        [b"C", bad, tag.encode(1), b"", b"hi"], 0.0, request_timeout=None, redeliveries=0
    )
    assert request is not None
    assert request.context == bad
    assert trace.decode(bad) is None


@given(messages, st.booleans())
def test_any_backend_message_still_decodes_or_is_a_violation(
    frames: list[bytes], known: bool
) -> None:
    dialect, event = dialects.read(frames, known=known)
    assert dialect is not None or isinstance(event, dialects.Violation)


@given(st.lists(st.one_of(st.just(b""), st.just(CONTEXT), st.binary(max_size=24)), max_size=6))
def test_any_broker_message_decodes_or_is_refused(frames: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        lbwire.decode_from_broker([b"ZRW2\x02" + bytes(8) + b"\x03" + bytes(4), *frames])


# -- the broker's record of waits -----------------------------------------------------------


def traced_ready(balancer: Balancer, worker: bytes, now: float) -> None:
    balancer.from_worker([worker, *lbwire.encode_ready(1, context=True)], now)


def test_the_balancer_records_the_waits_of_traced_requests_only_when_asked() -> None:
    balancer = Balancer(queue_timeout=1.0)
    traced_ready(balancer, b"W", 0.0)
    balancer.from_client([b"C", CONTEXT, tag.encode(1), b"", b"one"], 0.5)
    assert balancer.scheduler.waits is None  # nothing recorded: nobody asked
    waits = balancer.record_waits()
    assert balancer.record_waits() is waits
    balancer.from_client([b"C", CONTEXT, tag.encode(2), b"", b"two"], 1.0)  # queued
    balancer.from_client([b"C", tag.encode(3), b"", b"three"], 1.0)  # no context: not recorded
    balancer.to_workers.clear()
    balancer.to_clients.clear()
    token = balancer.scheduler.workers[b"W"].held.copy().popitem()[0]
    balancer.from_worker([b"W", *lbwire.encode_reply(token, tag.Status.OK, [b"ONE"])], 1.5)
    assert waits == [Waited(CONTEXT, b"", 1.0, 1.5, False)]
    waits.clear()
    # The third goes next (no context); a fourth waits past the queue timeout.
    balancer.from_client([b"C", CONTEXT, tag.encode(4), b"", b"four"], 2.0)
    balancer.tick(3.0)
    assert waits == [Waited(CONTEXT, b"", 2.0, 3.0, False, Refusal.BUSY)]
