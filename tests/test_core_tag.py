from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zmqrelay._core import tag

request_ids = st.integers(min_value=0, max_value=2**64 - 1)
statuses = st.sampled_from(tag.Status)


@given(request_ids, statuses)
def test_encode_decode_round_trip(request_id: int, status: tag.Status) -> None:
    frame = tag.encode(request_id, status)
    assert len(frame) == tag.SIZE
    assert tag.decode(frame) == tag.Tag(request_id, status)


@given(request_ids, statuses, statuses)
def test_with_status_changes_only_the_status(
    request_id: int, first: tag.Status, second: tag.Status
) -> None:
    frame = tag.with_status(tag.encode(request_id, first), second)
    assert tag.decode(frame) == tag.Tag(request_id, second)


@given(st.binary(max_size=20))
def test_any_frame_decodes_or_is_not_a_tag(frame: bytes) -> None:
    decoded = tag.decode(frame)
    if decoded is not None:
        assert tag.encode(decoded.request_id, decoded.status) == frame


def test_routing_ids_are_not_tags() -> None:
    # libzmq's generated routing ids: a zero byte and four bytes of counter.
    assert tag.decode(b"\x00\x6b\x8b\x45\x67") is None
    assert tag.decode(b"ZR\x01\x08" + bytes(13)) is None  # unknown status
    assert tag.decode(b"ZR\x02\x00" + bytes(13)) is None  # unknown version
    assert tag.decode(b"ZR\x01\x00" + bytes(8)) is None  # too short


@given(request_ids, st.none() | st.floats(0.001, 4e6), st.integers(0, 255))
def test_timeout_and_redeliveries_travel_in_the_tag(
    request_id: int, timeout: float | None, redeliveries: int
) -> None:
    decoded = tag.decode(tag.encode(request_id, timeout=timeout, redeliveries=redeliveries))
    assert decoded is not None
    assert decoded.redeliveries == redeliveries
    if timeout is None:
        assert decoded.timeout is None
    else:
        assert decoded.timeout is not None
        assert timeout <= decoded.timeout < timeout + 0.001 + 1e-9
