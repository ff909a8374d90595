"""Majordomo on the wire (spec 7 MDP/0.1, spec 18 MDP/0.2, majortomo 0.2.0's variant), no sockets.

What a peer encodes decodes to itself on the other side; anything else a peer may send either
decodes or is refused by name (house rule 4); the broker's rules for workers (READY once, no reply
before READY, no ``mmi.`` service) are violations. The expected wire frames in the tables below are
written from the specs, not from the codec's constants.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from strategies import frame, messages, routing
from zmqrelay._core import dialects, frontend, lbwire, mdp, tag
from zmqrelay._core.dialects import Answer, Ready, Violation
from zmqrelay._core.refusal import Refusal
from zmqrelay._core.request import ClientDialect, Request
from zmqrelay._core.tag import Status
from zmqrelay.errors import RemoteProtocolError

variants = st.sampled_from(mdp.VARIANTS)
peers = st.binary(min_size=1, max_size=8)  # routing ids, as a ROUTER prepends them
names = st.binary(max_size=16)
services = names.filter(lambda name: not mdp.is_mmi(name))
tokens = st.integers(0, 2**64 - 1)
# Bodies as the protocols carry them: several frames, empty and binary ones among them.
bodies = st.lists(st.one_of(st.just(b""), frame), min_size=1, max_size=6)
# Messages close to valid ones: the headers, commands and delimiters of every dialect.
_PIECES = [
    b"",
    b"MDPC01",
    b"MDPC02",
    b"MDPW01",
    b"MDPW02",
    b"ZRW1",
    b"ZRW2",
    b"mmi.service",
    bytes(8),
]
_PIECES += [bytes([n]) for n in range(8)]
near_misses = st.lists(st.sampled_from(_PIECES) | frame, max_size=9)
garbage = messages | near_misses


def streams(variant: mdp.Variant) -> bool:
    return variant != "mdp-0.1"


def read_client(frames: list[bytes]) -> Request | None:
    """What the broker reads off the frontend (None: in no dialect)."""
    return frontend.read_request(frames, 0.0, request_timeout=None, redeliveries=0)


def client_read(read: Request | None) -> tuple[list[bytes], str, bytes, list[bytes]] | None:
    return None if read is None else (read.envelope, read.dialect, read.service, read.body)


def request_for(
    dialect: ClientDialect,
    envelope: list[bytes] | None = None,
    service: bytes = b"echo",
    body: list[bytes] | None = None,
    token: int = 0,
) -> Request:
    request = Request(
        envelope or [b"c"], body or [b"q"], service, dialect, False, None, None, 0, 0.0
    )
    request.tagged = tag.decode(request.envelope[-1]) is not None and len(request.envelope) > 1
    request.token = token.to_bytes(8, "big")
    return request


def token_frame(token: int) -> bytes:
    return token.to_bytes(8, "big")


def read_worker(frames: list[bytes], known: bool) -> object:
    """The event a backend message carries, or its Violation."""
    return dialects.read(frames, known=known)[1]


def variant_of(frames: list[bytes], known: bool) -> str | None:
    dialect = dialects.read(frames, known=known)[0]
    return None if dialect is None else dialect.name


# -- round trips -------------------------------------------------------------------------------


@given(variants, peers, names, bodies)
def test_a_clients_request_decodes_to_itself(
    variant: mdp.Variant, client: bytes, service: bytes, body: list[bytes]
) -> None:
    read = read_client([client, *mdp.encode_request(variant, service, body)])
    assert client_read(read) == ([client], variant, service, body)


@given(st.sampled_from(["mdp-0.1", "majortomo"]), routing, names, bodies)
def test_a_request_through_hops_keeps_its_whole_envelope(
    variant: mdp.Variant, envelope: list[bytes], service: bytes, body: list[bytes]
) -> None:
    # Both variants start with an empty frame, so ROUTER hops on the way stack up before it.
    read = read_client([*envelope, *mdp.encode_request(variant, service, body)])
    assert client_read(read) == (envelope, variant, service, body)


@given(variants, peers, names, bodies, st.booleans())
def test_a_reply_reaches_the_client_as_sent(
    variant: mdp.Variant, client: bytes, service: bytes, body: list[bytes], partial: bool
) -> None:
    partial = partial and frontend.streams(variant)
    sent = frontend.answer(request_for(variant, [client], service), body, partial=partial)
    assert sent[0] == client  # the frontend ROUTER routes on it and strips it
    assert mdp.decode_reply(variant, sent[1:]) == mdp.ClientReply(body, not partial)


@given(variants, peers, services)
def test_a_workers_ready_decodes_to_itself(
    variant: mdp.Variant, worker: bytes, service: bytes
) -> None:
    frames = [worker, *mdp.encode_ready(variant, service)]
    assert read_worker(frames, known=False) == Ready(1, service)
    assert variant_of(frames, known=False) == variant


@given(variants, peers, tokens, bodies, bodies)
def test_a_request_reaches_the_worker_and_its_answers_come_back(
    variant: mdp.Variant, worker: bytes, token: int, request: list[bytes], reply: list[bytes]
) -> None:
    sent = request_for("plain", body=request, token=token)
    routed = dialects.DIALECTS[variant].request(worker, sent, 0.0)
    assert routed[0] == worker
    assignment = mdp.decode_from_broker(variant, routed[1:])
    assert assignment == mdp.MdpAssignment(variant, token_frame(token), request)
    assert isinstance(assignment, mdp.MdpAssignment)

    final = read_worker([worker, *assignment.reply(reply)], known=True)
    assert final == Answer(token_frame(token), Status.OK, reply, False)
    part = assignment.partial(reply)
    if streams(variant):
        assert part is not None
        event = read_worker([worker, *part], known=True)
        assert event == Answer(token_frame(token), Status.OK, reply, True)
    else:
        assert part is None  # 0.1 has no PARTIAL: the worker joins the parts itself
    error = read_worker([worker, *assignment.error("ValueError", "no")], known=True)
    assert error == Answer(
        token_frame(token), Status.OK, [b"zmqrelay-error: ValueError: no"], False
    )


@given(variants, peers, st.sampled_from(["heartbeat", "disconnect"]))
def test_heartbeat_and_disconnect_decode_to_themselves_both_ways(
    variant: mdp.Variant, worker: bytes, which: str
) -> None:
    to_worker = dialects.DIALECTS[variant].command(worker, which)  # type: ignore[arg-type]
    assert to_worker is not None
    assert to_worker[0] == worker
    assert mdp.decode_from_broker(variant, to_worker[1:]) == which
    frames = [worker, *mdp.encode_to_broker(variant, which)]
    assert read_worker(frames, known=True) == which
    # The dialect comes with the event: the broker answers in the worker's own variant.
    assert variant_of(frames, known=True) == variant


@given(garbage)
@example([b"c", b"MDPC02", b"\x01", b"svc", b"body"])
@example([b"c", b"", b"MDPC01", b"svc", b"body"])
@example([b"c", b"hop", b"", b"MDPC02", b"\x02", b"svc", b"body"])
def test_what_a_client_request_decodes_to_encodes_back_to_the_same_frames(
    frames: list[bytes],
) -> None:
    read = read_client(frames)
    if read is None:
        return
    if read.dialect == "plain":
        again = [*read.envelope, b"", *read.body]
    else:
        again = [*read.envelope, *mdp.encode_request(read.dialect, read.service, read.body)]
    assert again == frames


@given(garbage, st.booleans())
@example([b"w", b"MDPW02", b"\x04", bytes(8), b"", b"x"], True)
@example([b"w", b"", b"MDPW01", b"\x01", b"svc"], False)
def test_what_an_mdp_worker_message_decodes_to_encodes_back_to_the_same_frames(
    frames: list[bytes], known: bool
) -> None:
    dialect, event = dialects.read(frames, known=known)
    variant = None if dialect is None else mdp.as_variant(dialect.name)
    if variant is None or isinstance(event, Violation):
        return
    worker = frames[0]
    if isinstance(event, Ready):
        assert [worker, *mdp.encode_ready(variant, event.service)] == frames
    elif isinstance(event, Answer):
        answer = mdp.MdpAssignment(variant, event.token, [])
        again = answer.partial(event.body) if event.partial else answer.reply(event.body)
        assert again is not None
        assert [worker, *again] == frames
    else:
        assert [worker, *mdp.encode_to_broker(variant, event)] == frames


# -- every input decodes or is refused by name ---------------------------------------------------


@given(garbage)
def test_any_frontend_message_decodes_or_is_refused(frames: list[bytes]) -> None:
    read = read_client(frames)
    if read is None:
        return
    assert read.body, "a request always has a body"
    assert read.envelope, "and an envelope: the client's id, hops after it"
    assert all(read.envelope[1:]), "the delimiter ends the envelope"


@given(garbage, st.floats(0, 1e6), st.none() | st.floats(0, 60), st.integers(0, 5))
def test_the_broker_reads_any_frontend_message_or_counts_it_malformed(
    frames: list[bytes], now: float, request_timeout: float | None, redeliveries: int
) -> None:
    read = frontend.read_request(
        frames, now, request_timeout=request_timeout, redeliveries=redeliveries
    )
    assert read is None or read.redeliveries >= redeliveries


@given(garbage, st.booleans())
def test_any_backend_message_decodes_or_is_a_violation(frames: list[bytes], known: bool) -> None:
    dialect, event = dialects.read(frames, known=known)  # never raises
    if isinstance(event, Violation):
        assert event.reason
    else:
        assert dialect is not None
        assert isinstance(event, Ready | Answer) or event in ("heartbeat", "leaving", "disconnect")


@given(variants, garbage)
def test_any_message_an_mdp_worker_reads_decodes_or_is_refused(
    variant: mdp.Variant, frames: list[bytes]
) -> None:
    try:
        read = mdp.decode_from_broker(variant, frames)
    except RemoteProtocolError:
        return
    assert read in ("heartbeat", "disconnect") or isinstance(read, mdp.MdpAssignment)


@given(variants, garbage)
def test_any_message_an_mdp_client_reads_decodes_or_is_refused(
    variant: mdp.Variant, frames: list[bytes]
) -> None:
    try:
        read = mdp.decode_reply(variant, frames)
    except RemoteProtocolError:
        return
    assert read.final or streams(variant)


# -- the wire, as the specs write it -----------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "service", "body", "wire"),
    [
        ("mdp-0.1", b"echo", [b"a", b""], [b"", b"MDPC01", b"echo", b"a", b""]),
        ("mdp-0.2", b"echo", [b"a", b""], [b"MDPC02", b"\x01", b"echo", b"a", b""]),
        ("majortomo", b"echo", [b"a", b""], [b"", b"MDPC02", b"\x02", b"echo", b"a", b""]),
    ],
)
def test_client_requests_on_the_wire(
    variant: mdp.Variant, service: bytes, body: list[bytes], wire: list[bytes]
) -> None:
    assert mdp.encode_request(variant, service, body) == wire


@pytest.mark.parametrize(
    ("variant", "partial", "wire"),
    [
        ("mdp-0.1", False, [b"c", b"", b"MDPC01", b"echo", b"r"]),
        ("mdp-0.2", True, [b"c", b"MDPC02", b"\x02", b"echo", b"r"]),
        ("mdp-0.2", False, [b"c", b"MDPC02", b"\x03", b"echo", b"r"]),
        ("majortomo", True, [b"c", b"", b"MDPC02", b"\x03", b"r"]),
        ("majortomo", False, [b"c", b"", b"MDPC02", b"\x04", b"r"]),
    ],
)
def test_client_replies_on_the_wire(
    variant: mdp.Variant, partial: bool, wire: list[bytes]
) -> None:
    assert frontend.answer(request_for(variant), [b"r"], partial=partial) == wire


_T = bytes(7) + b"\x09"  # the token 9, as the reply-to frame


@pytest.mark.parametrize(
    ("variant", "request_wire", "heartbeat", "disconnect"),
    [
        (
            "mdp-0.1",
            [b"w", b"", b"MDPW01", b"\x02", _T, b"", b"q"],
            [b"w", b"", b"MDPW01", b"\x04"],
            [b"w", b"", b"MDPW01", b"\x05"],
        ),
        (
            "mdp-0.2",
            [b"w", b"MDPW02", b"\x02", _T, b"", b"q"],
            [b"w", b"MDPW02", b"\x05"],
            [b"w", b"MDPW02", b"\x06"],
        ),
        (
            "majortomo",
            [b"w", b"", b"MDPW02", b"\x02", _T, b"", b"q"],
            [b"w", b"", b"MDPW02", b"\x05"],
            [b"w", b"", b"MDPW02", b"\x06"],
        ),
    ],
)
def test_broker_to_worker_on_the_wire(
    variant: mdp.Variant,
    request_wire: list[bytes],
    heartbeat: list[bytes],
    disconnect: list[bytes],
) -> None:
    dialect = dialects.DIALECTS[variant]
    assert dialect.request(b"w", request_for("plain", token=9), 0.0) == request_wire
    assert dialect.command(b"w", "heartbeat") == heartbeat
    assert dialect.command(b"w", "disconnect") == disconnect


@pytest.mark.parametrize(
    ("frames", "variant", "event"),
    [
        ([b"w", b"", b"MDPW01", b"\x01", b"echo"], "mdp-0.1", Ready(1, b"echo")),
        ([b"w", b"MDPW02", b"\x01", b"echo"], "mdp-0.2", Ready(1, b"echo")),
        ([b"w", b"", b"MDPW02", b"\x01", b"echo"], "majortomo", Ready(1, b"echo")),
        (
            [b"w", b"", b"MDPW01", b"\x03", _T, b"", b"r", b""],
            "mdp-0.1",
            Answer(_T, Status.OK, [b"r", b""], False),
        ),
        (
            [b"w", b"MDPW02", b"\x03", _T, b"", b"r"],
            "mdp-0.2",
            Answer(_T, Status.OK, [b"r"], True),
        ),
        (
            [b"w", b"MDPW02", b"\x04", _T, b"", b"r"],
            "mdp-0.2",
            Answer(_T, Status.OK, [b"r"], False),
        ),
        (
            [b"w", b"", b"MDPW02", b"\x03", _T, b"", b"r"],
            "majortomo",
            Answer(_T, Status.OK, [b"r"], True),
        ),
    ],
)
def test_worker_messages_on_the_wire(frames: list[bytes], variant: str, event: object) -> None:
    known = not isinstance(event, Ready)
    assert read_worker(frames, known=known) == event
    assert variant_of(frames, known=known) == variant


# -- the rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", mdp.VARIANTS)
def test_an_mdp_worker_may_say_ready_only_once(variant: mdp.Variant) -> None:
    frames = [b"w", *mdp.encode_ready(variant, b"echo")]
    assert read_worker(frames, known=True) == Violation("a worker may say READY only once")
    assert variant_of(frames, known=True) == variant


@pytest.mark.parametrize(
    ("variant", "partial"),
    [(variant, False) for variant in mdp.VARIANTS] + [("mdp-0.2", True), ("majortomo", True)],
)
def test_a_reply_before_ready_is_a_violation(variant: mdp.Variant, partial: bool) -> None:
    answer = mdp.MdpAssignment(variant, token_frame(1), [b"q"])
    sent = answer.partial([b"r"]) if partial else answer.reply([b"r"])
    assert sent is not None
    violation = read_worker([b"w", *sent], known=False)
    assert isinstance(violation, Violation)
    assert variant_of([b"w", *sent], known=False) == variant
    assert "READY" in violation.reason


@pytest.mark.parametrize(
    ("frames", "variant"),
    [
        ([b"w", b"", b"MDPW01", b"\x06"], "mdp-0.1"),  # 0.1 has five commands
        ([b"w", b"", b"MDPW01", b"\x02", _T, b"", b"q"], "mdp-0.1"),  # REQUEST is the broker's
        ([b"w", b"MDPW02", b"\x07"], "mdp-0.2"),
        ([b"w", b"MDPW02", b"\x00"], "mdp-0.2"),
        ([b"w", b"", b"MDPW02", b"\x02", _T, b"", b"q"], "majortomo"),
        ([b"w", b"", b"MDPW02", b"READY"], "majortomo"),
    ],
)
@pytest.mark.parametrize("known", [False, True])
def test_an_unknown_command_is_a_violation(
    frames: list[bytes], variant: mdp.Variant, known: bool
) -> None:
    violation = read_worker(frames, known=known)
    assert isinstance(violation, Violation)
    assert variant_of(frames, known=known) == variant
    assert "command" in violation.reason


@pytest.mark.parametrize("variant", mdp.VARIANTS)
@pytest.mark.parametrize("service", [b"mmi.service", b"mmi.", b"mmi.anything"])
def test_workers_may_not_offer_mmi_services(variant: mdp.Variant, service: bytes) -> None:
    frames = [b"w", *mdp.encode_ready(variant, service)]
    assert read_worker(frames, known=False) == Violation("workers may not offer mmi.* services")
    assert variant_of(frames, known=False) == variant


def test_zmqrelay_workers_may_not_offer_mmi_services_either() -> None:
    frames = [b"w", *lbwire.encode_ready(1, b"mmi.service")]
    assert isinstance(read_worker(frames, known=False), Violation)
    assert variant_of(frames, known=False) == "zmqrelay"


@pytest.mark.parametrize(
    ("frames", "variant"),
    [
        ([b"w", b"", b"MDPW01"], "mdp-0.1"),  # no command
        ([b"w", b"MDPW02"], "mdp-0.2"),
        ([b"w", b"", b"MDPW01", b"\x01"], "mdp-0.1"),  # READY without its service
        ([b"w", b"MDPW02", b"\x01", b"a", b"b"], "mdp-0.2"),  # READY with two
        ([b"w", b"", b"MDPW02", b"\x05", b"extra"], "majortomo"),  # HEARTBEAT takes no frames
        ([b"w", b"MDPW02", b"\x06", b""], "mdp-0.2"),  # nor DISCONNECT
        ([b"w", b"", b"MDPW01", b"\x03", _T, b""], "mdp-0.1"),  # a reply without a body
        ([b"w", b"", b"MDPW01", b"\x03", _T, b"x", b"r"], "mdp-0.1"),  # no delimiter
        ([b"w", b"MDPW02", b"\x04", b"short", b"", b"r"], "mdp-0.2"),  # not a token of ours
        ([b"w", b"", b"MDPW02", b"\x04", _T], "majortomo"),
    ],
)
def test_malformed_mdp_messages_are_violations_of_their_variant(
    frames: list[bytes], variant: mdp.Variant
) -> None:
    assert isinstance(read_worker(frames, known=True), Violation)
    assert variant_of(frames, known=True) == variant


def test_messages_in_no_dialect_are_violations_without_one() -> None:
    for frames in ([], [b"w"], [b"w", b"MDPW03", b"\x01"], [b"w", b"x", b"y"]):
        assert isinstance(read_worker(frames, known=False), Violation)
        assert variant_of(frames, known=False) is None


@pytest.mark.parametrize(
    "frames",
    [
        [b"c", b"MDPC02", b"\x01", b"echo"],  # 0.2: no body
        [b"c", b"MDPC02", b"\x02", b"echo", b"x"],  # 0.2: PARTIAL is the broker's
        [b"c", b"MDPC02"],
        [b"c", b"", b"MDPC01", b"echo"],  # 0.1: no body
        [b"c", b"", b"MDPC01"],
        [b"c", b"", b"MDPC02", b"\x01", b"echo", b"x"],  # majortomo's REQUEST is 0x02
        [b"c", b"", b"MDPC02", b"\x02", b"echo"],  # and has a body
        [b"c", b"body"],  # no delimiter
        [b"c", b""],  # no body
        [b"c"],
        [],
    ],
)
def test_malformed_client_requests_are_refused(frames: list[bytes]) -> None:
    assert read_client(frames) is None


def test_a_plain_request_is_for_the_default_service() -> None:
    read = read_client([b"c", b"hop", b"", b"x", b""])
    assert client_read(read) == ([b"c", b"hop"], "plain", b"", [b"x", b""])


@pytest.mark.parametrize(
    ("variant", "frames"),
    [
        ("mdp-0.1", [b"MDPC01", b"echo", b"r"]),  # a REQ socket's view, not a DEALER's
        ("mdp-0.1", [b"", b"MDPC01", b"echo"]),
        ("mdp-0.2", [b"MDPC02", b"\x01", b"echo", b"r"]),  # REQUEST is the client's
        ("mdp-0.2", [b"", b"MDPC02", b"\x03", b"echo", b"r"]),
        ("majortomo", [b"", b"MDPC02", b"\x02", b"r"]),
        ("majortomo", [b"MDPC02", b"\x04", b"r"]),
    ],
)
def test_malformed_replies_are_refused_by_clients(
    variant: mdp.Variant, frames: list[bytes]
) -> None:
    with pytest.raises(RemoteProtocolError):
        mdp.decode_reply(variant, frames)


def test_a_worker_reads_only_its_own_variant() -> None:
    for variant in mdp.VARIANTS:
        for other in mdp.VARIANTS:
            routed = dialects.DIALECTS[other].request(b"w", request_for("plain"), 0.0)[1:]
            if other == variant:
                assert isinstance(mdp.decode_from_broker(variant, routed), mdp.MdpAssignment)
            else:
                with pytest.raises(RemoteProtocolError):
                    mdp.decode_from_broker(variant, routed)


def test_the_mmi_namespace() -> None:
    assert mdp.is_mmi(b"mmi.service")
    assert mdp.is_mmi(b"mmi.")
    assert not mdp.is_mmi(b"mmi")
    assert not mdp.is_mmi(b"echo.mmi.service")


# -- replies and refusals for each kind of client (frontend) -----------------------------------


def test_parts_are_joined_for_a_client_that_takes_one_reply() -> None:
    for dialect, answer in [
        ("mdp-0.1", [b"c", b"", b"MDPC01", b"echo", b"p1", b"", b"p2", b"end"]),
        ("plain", [b"c", b"", b"p1", b"", b"p2", b"end"]),
    ]:
        request = request_for(dialect)  # type: ignore[arg-type]
        assert frontend.reply(request, Status.OK, [b"p1", b""], partial=True) is None
        assert frontend.reply(request, Status.OK, [b"p2"], partial=True) is None
        assert frontend.reply(request, Status.OK, [b"end"]) == answer


def test_parts_stream_to_clients_that_take_them() -> None:
    request = request_for("mdp-0.2")
    part = frontend.reply(request, Status.OK, [b"p1"], partial=True)
    assert part == [b"c", b"MDPC02", b"\x02", b"echo", b"p1"]
    final = frontend.reply(request, Status.OK, [b"end"])
    assert final == [b"c", b"MDPC02", b"\x03", b"echo", b"end"]
    request = request_for("majortomo")
    part = frontend.reply(request, Status.OK, [b"p1"], partial=True)
    assert part == [b"c", b"", b"MDPC02", b"\x03", b"p1"]


@pytest.mark.parametrize("dialect", ["plain", "mdp-0.1", "mdp-0.2", "majortomo"])
@pytest.mark.parametrize("reason", list(Refusal))
def test_refusals_are_one_documented_plain_frame_for_clients_without_a_tag(
    dialect: ClientDialect, reason: Refusal
) -> None:
    frames = frontend.refusal(request_for(dialect), reason)
    variant = mdp.as_variant(dialect)
    if variant is None:
        body = frames[2:]
    else:
        reply = mdp.decode_reply(variant, frames[1:])
        assert reply.final
        body = reply.body
    (text,) = body
    assert text.startswith(f"zmqrelay-error: {reason.error.__name__}: ".encode())
    assert f"the broker refused the request: {reason.text} (service 'echo')".encode() in text


def test_a_zmqrelay_client_reads_the_refusal_in_its_tag() -> None:
    frames = frontend.refusal(request_for("plain", [b"c", tag.encode(7)]), Refusal.NO_WORKERS)
    read = tag.decode(frames[1])
    assert read is not None
    assert read.status is Status.NO_WORKERS


def test_a_client_id_that_looks_like_a_tag_is_left_alone() -> None:
    # A client may pick any routing id, even one that decodes as a zmqrelay tag: the tag is
    # never the id itself, so the id routes the refusal back unchanged, in plain framing.
    lookalike = tag.encode(7, timeout=0.001)
    frames = [lookalike, mdp.CLIENT_02, b"\x01", b"echo", b"body"]
    request = frontend.read_request(frames, 0.0, request_timeout=None, redeliveries=0)
    assert request is not None
    assert request.deadline is None  # the lookalike's timeout is not read either
    assert not request.tagged
    refusal = frontend.refusal(request, Refusal.NO_WORKERS)
    assert refusal[:4] == [lookalike, mdp.CLIENT_02, b"\x03", b"echo"]
    assert refusal[4].startswith(b"zmqrelay-error: NoWorkers: ")


def test_a_broken_stream_drops_its_parts_and_ends_in_a_busy_refusal() -> None:
    request = request_for("mdp-0.2")
    assert frontend.reply(request, Status.OK, [b"p0"], partial=True) is not None
    request.broken = frontend.LOST_PARTS  # the shell could not send a part
    assert frontend.reply(request, Status.OK, [b"p1"], partial=True) is None
    final = frontend.reply(request, Status.OK, [b"end"])
    assert final is not None
    assert final[:4] == [b"c", mdp.CLIENT_02, b"\x03", b"echo"]
    assert final[4] == b"zmqrelay-error: BrokerBusy: the broker refused the request: " + (
        frontend.LOST_PARTS.encode() + b" (service 'echo')"
    )


def test_parts_held_for_joining_are_bounded() -> None:
    request = request_for("plain")
    part = bytes(1 << 20)
    for _ in range(frontend.MAX_HELD_BYTES // len(part)):
        assert frontend.reply(request, Status.OK, [part], partial=True) is None
    assert not request.broken
    assert frontend.reply(request, Status.OK, [b"one more"], partial=True) is None
    assert request.broken == frontend.TOO_LARGE
    assert request.parts is None  # what was held is let go at once
    final = frontend.reply(request, Status.OK, [b"end"])
    assert final == [
        b"c",
        b"",
        b"zmqrelay-error: BrokerBusy: the broker refused the request: "
        + frontend.TOO_LARGE.encode()
        + b" (service 'echo')",
    ]


@given(
    st.integers(0, 2**64 - 1),
    st.none() | st.floats(0.001, 1e6),
    st.integers(0, 255),
    st.integers(0, 5),
    st.binary(min_size=tag.SIZE, max_size=tag.SIZE),
)
def test_the_broker_reads_a_tag_as_the_tag_module_does(
    request_id: int, timeout: float | None, redeliveries: int, floor: int, lookalike: bytes
) -> None:
    for hop in (tag.encode(request_id, timeout=timeout, redeliveries=redeliveries), lookalike):
        read = frontend.read_request(
            [b"c", hop, b"", b"x"], 0.0, request_timeout=None, redeliveries=floor
        )
        assert read is not None
        decoded = tag.decode(hop)
        assert read.tagged == (decoded is not None)
        if decoded is not None:
            assert read.timeout == decoded.timeout
            assert read.redeliveries == max(floor, decoded.redeliveries)


@given(frame, st.lists(frame, min_size=1, max_size=3))
def test_a_zmqrelay_clients_service_request_is_known_behind_its_first_delimiter(
    service: bytes, body: list[bytes]
) -> None:
    framed = mdp.encode_request("majortomo", service, body)
    assert framed[0] == b""  # what a relay-mode worker splits its envelope at
    assert mdp.named_service(framed[1:]) == service
    assert mdp.named_service(body) is None or body[:2] == framed[1:3]
    assert mdp.named_service(mdp.encode_request("mdp-0.2", service, body)) is None
