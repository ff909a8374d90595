from __future__ import annotations

import pytest
from hypothesis import given

from strategies import body, messages, routing
from zmqrelay._core.envelope import Envelope, is_routable, split
from zmqrelay.errors import RemoteProtocolError


def test_split_a_req_style_message() -> None:
    assert split([b"client", b"", b"Hello"]) == Envelope([b"client"], [b"Hello"])


def test_split_keeps_empty_frames_in_the_body() -> None:
    assert split([b"a", b"b", b"", b"x", b"", b""]) == Envelope([b"a", b"b"], [b"x", b"", b""])


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "no empty delimiter"),
        ([b"client", b"Hello"], "no empty delimiter"),
        ([b"", b"Hello"], "no routing frames"),
        ([b"client", b""], "no body"),
    ],
)
def test_split_refuses_by_name(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        split(frames)


@given(routing, body)
def test_split_inverts_frames(hops: list[bytes], payload: list[bytes]) -> None:
    message = Envelope(hops, payload)
    assert split(message.frames()) == message
    assert message.reply([b"r"]) == [*hops, b"", b"r"]


@given(messages)
def test_any_input_splits_or_is_refused(frames: list[bytes]) -> None:
    try:
        envelope = split(frames)
    except RemoteProtocolError:
        return
    assert envelope.frames() == frames


@given(messages)
def test_is_routable_agrees_with_split(frames: list[bytes]) -> None:
    # A ROUTER never reads an empty routing id, so only messages with a non-empty first
    # frame are relevant.
    if frames and frames[0]:
        try:
            split(frames)
        except RemoteProtocolError:
            assert not is_routable(frames)
        else:
            assert is_routable(frames)
