from __future__ import annotations

import pytest
from hypothesis import given

from strategies import body, messages, routing
from zmqrelay._core.client import Correlator
from zmqrelay._core.worker import PLAIN_ERROR_PREFIX, decode_request
from zmqrelay.errors import LocalProtocolError, RemoteError, RemoteProtocolError


def through_broker(client_frames: list[bytes]) -> list[bytes]:
    """A relay broker's ROUTER prepends the client's routing id."""
    return [b"\x00client", *client_frames]


def back_to_client(worker_frames: list[bytes]) -> list[bytes]:
    assert worker_frames[0] == b"\x00client"
    return worker_frames[1:]


@given(body, body)
def test_client_worker_client_round_trip(
    request_body: list[bytes], reply_body: list[bytes]
) -> None:
    correlator: Correlator[str] = Correlator(first_id=5)
    _, frames = correlator.open("waiter", request_body)
    request = decode_request(through_broker(frames))
    assert request.body == request_body
    assert request.tagged
    matched = correlator.receive(back_to_client(request.reply(reply_body)))
    assert matched is not None
    assert matched[1].result() == reply_body


def test_error_reaches_a_zmqrelay_client_as_remote_error() -> None:
    correlator: Correlator[str] = Correlator(first_id=5)
    _, frames = correlator.open("waiter", [b"x"])
    request = decode_request(through_broker(frames))
    matched = correlator.receive(back_to_client(request.error("KeyError", "'missing'")))
    assert matched is not None
    with pytest.raises(RemoteError, match="KeyError: 'missing'"):
        matched[1].result()


@given(routing)
def test_error_reaches_a_plain_client_as_one_documented_frame(hops: list[bytes]) -> None:
    # What a REQ client sent through one or more ROUTERs: routing ids only, no tag.
    hops = [b"\x00" + hop for hop in hops]
    request = decode_request([*hops, b"", b"x"])
    assert not request.tagged
    assert request.error("ValueError", "bad") == [
        *hops,
        b"",
        PLAIN_ERROR_PREFIX + b"ValueError: bad",
    ]


def test_replies_must_be_bytes_frames() -> None:
    request = decode_request([b"\x00client", b"", b"x"])
    with pytest.raises(LocalProtocolError, match="bytes, not str"):
        request.reply(["text"])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="at least one"):
        request.reply([])


@given(messages)
def test_any_message_decodes_or_is_refused(frames: list[bytes]) -> None:
    try:
        request = decode_request(frames)
    except RemoteProtocolError:
        return
    assert request.reply(request.body) == frames
