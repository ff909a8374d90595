"""zmqrelay's worker protocol (ZRW1) and the guide's: what a worker sends, the broker reads as
sent; what the broker sends, the worker reads as sent; garbage is refused by name."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import body, messages
from zmqrelay._core import dialects, lbwire
from zmqrelay._core.dialects import Answer, Ready, Violation
from zmqrelay._core.request import Request
from zmqrelay._core.tag import Status
from zmqrelay.errors import RemoteProtocolError

tokens = st.integers(0, 2**64 - 1).map(lambda token: token.to_bytes(8, "big"))
workers = st.binary(min_size=1, max_size=8)


def read(frames: list[bytes], *, known: bool) -> tuple[str | None, object]:
    """What the broker's backend reads: the dialect's name and the event (or Violation)."""
    dialect, event = dialects.read(frames, known=known)
    return (None if dialect is None else dialect.name), event


def request(token: bytes, payload: list[bytes], deadline: float | None = None) -> Request:
    sent = Request([b"c"], payload, b"", "plain", False, None, deadline, 0, 0.0)
    sent.token = token
    return sent


@given(workers, st.integers(1, 1000), st.binary(max_size=8).filter(lambda s: b"mmi." not in s))
def test_zmqrelay_ready(worker: bytes, credits: int, service: bytes) -> None:
    sent = [worker, *lbwire.encode_ready(credits, service)]
    assert read(sent, known=False) == ("zmqrelay", Ready(credits, service))


@given(workers, tokens, st.sampled_from([Status.OK, Status.ERROR, Status.PARTIAL]), body)
def test_zmqrelay_reply(worker: bytes, token: bytes, status: Status, payload: list[bytes]) -> None:
    sent = [worker, *lbwire.encode_reply(token, status, payload)]
    partial = status is Status.PARTIAL
    expected = Answer(token, Status.OK if partial else status, payload, partial)
    assert read(sent, known=True) == ("zmqrelay", expected)


@given(workers, tokens, body, st.booleans(), st.none() | st.floats(0, 1e6))
def test_zmqrelay_request_reaches_the_worker_intact(
    worker: bytes, token: bytes, payload: list[bytes], redelivery: bool, timeout: float | None
) -> None:
    sent = request(token, payload, None if timeout is None else 5.0 + timeout)
    sent.redelivery = redelivery
    routed = dialects.ZMQRELAY.request(worker, sent, 5.0)
    assert routed[0] == worker
    assignment = lbwire.decode_from_broker(routed[1:])
    assert isinstance(assignment, lbwire.Assignment)
    assert assignment.reply_to == token
    assert (assignment.redelivery, assignment.body) == (redelivery, payload)
    if timeout is None:
        assert assignment.timeout is None
    else:
        assert assignment.timeout == pytest.approx(timeout, abs=0.001)


@given(workers, tokens, body)
def test_guide_worker_round_trip(worker: bytes, token: bytes, payload: list[bytes]) -> None:
    # A REQ worker's first message, as the ROUTER reads it.
    assert read([worker, b"", b"READY"], known=False) == ("guide", Ready(1, b""))
    routed = dialects.GUIDE.request(worker, request(token, payload), 0.0)
    # The REQ socket strips [worker, b""]; the application answers [reply-to, b"", reply].
    sent = routed[2:]
    reply = [sent[0], b"", b"answer"]
    assert read([worker, b"", *reply], known=True) == (
        "guide",
        Answer(token, Status.OK, [b"answer"], False),
    )


@pytest.mark.parametrize(
    ("command", "event"),
    [(lbwire.HEARTBEAT, "heartbeat"), (lbwire.LEAVING, "leaving"),
     (lbwire.DISCONNECT, "disconnect")],
)  # fmt: skip
def test_zmqrelay_commands(command: bytes, event: str) -> None:
    assert read([b"w", *lbwire.encode_command_to_broker(command)], known=True) == (
        "zmqrelay",
        event,
    )
    # ZRW1, the protocol's first version, is still read.
    assert read([b"w", b"", b"ZRW1", command], known=True) == ("zmqrelay-1", event)


def test_broker_commands() -> None:
    for which in ("heartbeat", "disconnect"):
        sent = dialects.ZMQRELAY.command(b"w", which)
        assert sent is not None
        assert lbwire.decode_from_broker(sent[1:]) == which
    assert dialects.GUIDE.command(b"w", "heartbeat") is None  # a REQ worker takes none


@pytest.mark.parametrize(
    ("frames", "dialect"),
    [
        ([b"w", b"READY"], None),  # no delimiter
        ([b"w", b"", b"ZRW1"], "zmqrelay-1"),  # no command
        ([b"w", b"", b"ZRW1", b"\x01", b"0"], "zmqrelay-1"),  # no credits
        ([b"w", b"", b"ZRW1", b"\x01", b"many"], "zmqrelay-1"),
        ([b"w", b"", b"ZRW1", b"\x03", b"short", b"\x00", b"x"], "zmqrelay-1"),  # bad reply-to
        ([b"w", b"", b"ZRW1", b"\x03", bytes(8), b"\x09", b"x"], "zmqrelay-1"),  # unknown status
        ([b"w", b"", b"ZRW1", b"\x04", b"extra"], "zmqrelay-1"),
        ([b"w", b"", b"ZRW1", b"\x7f"], "zmqrelay-1"),
        ([b"w", b"ZRW2"], "zmqrelay"),  # no command
        ([b"w", b"ZRW2\x01\x00\x00\x00\x00"], "zmqrelay"),  # no credits
        ([b"w", b"ZRW2\x01\x00\x00\x00"], "zmqrelay"),  # credits too short
        ([b"w", b"ZRW2\x03" + bytes(8) + b"\x09", b"x"], "zmqrelay"),  # unknown status
        ([b"w", b"ZRW2\x03" + bytes(8) + b"\x00"], "zmqrelay"),  # no body
        ([b"w", b"ZRW2\x04", b"extra"], "zmqrelay"),
        ([b"w", b"ZRW2\x7f"], "zmqrelay"),
        ([b"w", b"", b"short", b"", b"x"], "guide"),  # a guide reply's reply-to is no token
        ([b"w", b"", bytes(8), b"x", b"r"], "guide"),  # no delimiter after it
    ],
)
def test_protocol_violations_are_refused_by_name(frames: list[bytes], dialect: str | None) -> None:
    named, event = read(frames, known=True)
    assert isinstance(event, Violation)
    assert event.reason
    assert named == dialect


def test_a_guide_workers_reply_is_read_even_before_it_said_ready() -> None:
    # A REQ worker's reply is also its next READY: after a broker restart, one that answers
    # the broker's previous life is taken as ready (the balancer decides; here, it decodes).
    named, event = read([b"w", b"", bytes(8), b"", b"late"], known=False)
    assert (named, event) == ("guide", Answer(bytes(8), Status.OK, [b"late"], False))
    named, event = read([b"w", b"", b"READY", b"extra"], known=False)
    assert named == "guide"
    assert isinstance(event, Violation)


@given(messages, st.booleans())
def test_any_backend_message_decodes_or_is_a_violation(frames: list[bytes], known: bool) -> None:
    dialect, event = dialects.read(frames, known=known)  # never raises
    assert dialect is not None or isinstance(event, Violation)


@given(messages)
def test_any_broker_message_decodes_or_is_refused(frames: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        lbwire.decode_from_broker(frames)


@given(
    st.sampled_from([lbwire.PROTOCOL, b"ZRW1", b"\x00RW2"]),
    st.sampled_from([lbwire.REQUEST, lbwire.HEARTBEAT, b"\x09"]),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 255),
    st.integers(0, lbwire.NO_TIMEOUT),
    st.lists(st.binary(max_size=4), max_size=3),
)
def test_request_shaped_headers_decode_as_requests_or_are_refused(
    protocol: bytes,
    command: bytes,
    reply_to: bytes,
    flags: int,
    milliseconds: int,
    rest: list[bytes],
) -> None:
    header = lbwire.REQUEST_HEADER.pack(protocol, command, reply_to, flags, milliseconds)
    frames = [header, *rest]
    try:
        decoded = lbwire.decode_from_broker(frames)
    except RemoteProtocolError:
        well_formed = protocol == lbwire.PROTOCOL and command == lbwire.REQUEST and flags < 4
        assert not well_formed or len(rest) < 1 + (flags >> 1)
        return
    assert isinstance(decoded, lbwire.Assignment)
    assert (protocol, command) == (lbwire.PROTOCOL, lbwire.REQUEST)
    assert decoded.reply_to == reply_to
    assert decoded.redelivery == bool(flags & lbwire.REDELIVERY)
    assert decoded.timeout == (None if milliseconds == lbwire.NO_TIMEOUT else milliseconds / 1000)
    with_context = bool(flags & lbwire.WITH_CONTEXT)
    assert decoded.context == (rest[0] if with_context else b"")
    assert decoded.body == (rest[1:] if with_context else rest)
