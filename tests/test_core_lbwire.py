"""Load-balancing mode's wire codecs: encoded messages decode to themselves, garbage is refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import body, messages
from zmqrelay._core import lbwire
from zmqrelay._core.tag import Status
from zmqrelay.errors import RemoteProtocolError

tokens = st.integers(0, 2**64 - 1)
workers = st.binary(min_size=1, max_size=8)


def as_read_by_router(worker: bytes, sent: list[bytes]) -> list[bytes]:
    """A DEALER's message as the broker's ROUTER reads it: the worker's id in front."""
    return [worker, *sent]


@given(workers, st.integers(1, 1000))
def test_zmqrelay_ready(worker: bytes, credits: int) -> None:
    event = lbwire.decode_backend(
        as_read_by_router(worker, lbwire.encode_ready(credits)), known=False
    )
    assert event == lbwire.Ready(worker, credits, "zmqrelay")


@given(workers, tokens, st.sampled_from([Status.OK, Status.ERROR]), body)
def test_zmqrelay_reply(worker: bytes, token: int, status: Status, payload: list[bytes]) -> None:
    sent = lbwire.encode_reply(lbwire.encode_token(token), status, payload)
    event = lbwire.decode_backend(as_read_by_router(worker, sent), known=True)
    assert event == lbwire.Reply(worker, token, status, payload, "zmqrelay")


@given(workers, tokens, body, st.booleans(), st.none() | st.floats(0, 1e6))
def test_zmqrelay_request_reaches_the_worker_intact(
    worker: bytes, token: int, payload: list[bytes], redelivery: bool, timeout: float | None
) -> None:
    routed = lbwire.encode_request(
        worker, "zmqrelay", token, payload, redelivery=redelivery, timeout=timeout
    )
    assert routed[0] == worker
    assignment = lbwire.decode_from_broker(routed[1:])
    assert isinstance(assignment, lbwire.Assignment)
    assert lbwire.decode_token(assignment.reply_to) == token
    assert (assignment.redelivery, assignment.body) == (redelivery, payload)
    if timeout is None:
        assert assignment.timeout is None
    else:
        assert assignment.timeout == pytest.approx(timeout, abs=0.001)


@given(workers, tokens, body)
def test_guide_worker_round_trip(worker: bytes, token: int, payload: list[bytes]) -> None:
    # A REQ worker's first message, as the ROUTER reads it.
    assert lbwire.decode_backend([worker, b"", b"READY"], known=False) == lbwire.Ready(
        worker, 1, "guide"
    )
    routed = lbwire.encode_request(worker, "guide", token, payload)
    # The REQ socket strips [worker, b""]; the application answers [reply-to, b"", reply].
    request = routed[2:]
    reply = [request[0], b"", b"answer"]
    event = lbwire.decode_backend([worker, b"", *reply], known=True)
    assert event == lbwire.Reply(worker, token, Status.OK, [b"answer"], "guide")


@pytest.mark.parametrize(
    ("command", "event"),
    [(lbwire.HEARTBEAT, lbwire.Heartbeat), (lbwire.LEAVING, lbwire.Leaving),
     (lbwire.DISCONNECT, lbwire.Disconnect)],
)  # fmt: skip
def test_zmqrelay_commands(command: bytes, event: type) -> None:
    assert lbwire.decode_backend([b"w", b"", b"ZRW1", command], known=True) == event(b"w")


def test_broker_commands() -> None:
    assert (
        lbwire.decode_from_broker(lbwire.encode_command(b"w", lbwire.HEARTBEAT)[1:]) == "heartbeat"
    )
    assert (
        lbwire.decode_from_broker(lbwire.encode_command(b"w", lbwire.DISCONNECT)[1:])
        == "disconnect"
    )


@pytest.mark.parametrize(
    "frames",
    [
        [b"w", b"READY"],  # no delimiter
        [b"w", b"", b"ZRW1"],  # no command
        [b"w", b"", b"ZRW1", b"\x01", b"0"],  # no credits
        [b"w", b"", b"ZRW1", b"\x01", b"many"],
        [b"w", b"", b"ZRW1", b"\x03", b"short", b"\x00", b"x"],  # bad reply-to
        [b"w", b"", b"ZRW1", b"\x03", bytes(8), b"\x09", b"x"],  # unknown status
        [b"w", b"", b"ZRW1", b"\x04", b"extra"],
        [b"w", b"", b"ZRW1", b"\x7f"],
    ],
)
def test_protocol_violations_are_refused_by_name(frames: list[bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        lbwire.decode_backend(frames, known=True)


def test_a_new_guide_worker_must_say_ready_in_one_frame() -> None:
    with pytest.raises(RemoteProtocolError, match="READY"):
        lbwire.decode_backend([b"w", b"", b"READY", b"extra"], known=False)


@given(messages, st.booleans())
def test_any_backend_message_decodes_or_is_refused(frames: list[bytes], known: bool) -> None:
    with contextlib.suppress(RemoteProtocolError):
        lbwire.decode_backend(frames, known=known)


@given(messages)
def test_any_broker_message_decodes_or_is_refused(frames: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        lbwire.decode_from_broker(frames)
