r"""The trace context frame: W3C trace context carried between zmqrelay peers.

A zmqrelay client that traces its requests sends what OpenTelemetry's propagator writes
(``traceparent``, ``tracestate``, and ``baggage`` if the propagator adds it) in one frame of
its own, which only zmqrelay peers read:

- in relay mode, and to a load-balancing broker, just before the request's
  :mod:`tag <zmqrelay._core.tag>`: ``[trace, tag, "", body...]``. Stock workers echo it back
  with the rest of the envelope, as they echo the tag; a zmqrelay worker leaves it out of its
  reply, and the client ignores it in a reply either way;
- from a load-balancing broker to a ZRW2 worker that asked for it, right after the REQUEST
  header (:mod:`zmqrelay._core.lbwire`). Other workers never see it: their framing has no room.

Layout: the 5 bytes ``ZRTC\x01`` (the version), then the fields as ``name:value`` lines joined
by ``\n``: names are lower-case ASCII letters, digits, ``-``, ``_`` or ``.``, values printable
ASCII, as W3C trace context and baggage headers are. At most :data:`MAX_SIZE` bytes.

A frame that breaks these rules is ignored (:func:`decode` returns ``None``): a malformed
context costs the request its trace, never the request.
"""

from __future__ import annotations

from collections.abc import Mapping

MAGIC = b"ZRTC"
VERSION = 1
PREFIX = MAGIC + bytes([VERSION])
_PREFIX_SIZE = len(PREFIX)
MAX_SIZE = 8192
"""The most a trace context frame may hold (W3C baggage may take 8192 bytes alone)."""

_NAME_CHARACTERS = b"abcdefghijklmnopqrstuvwxyz0123456789-_."
_PRINTABLE = bytes(range(0x20, 0x7F))
_MAX_NAME = 64


def _valid_name(name: bytes) -> bool:
    # What is left once the allowed characters are deleted must be nothing.
    return 0 < len(name) <= _MAX_NAME and not name.translate(None, _NAME_CHARACTERS)


def _valid_value(value: bytes) -> bool:
    return not value.translate(None, _PRINTABLE)


def encode(carrier: Mapping[str, str]) -> bytes | None:
    """The frame carrying ``carrier`` (as a propagator's ``inject`` filled it).

    Fields the frame cannot carry (a name or value out of the rules above, or one that would
    take it past :data:`MAX_SIZE`) are left out; ``None`` when none is left.
    """
    lines: list[bytes] = []
    size = len(PREFIX) - 1
    for name, value in carrier.items():
        try:
            field = b"%s:%s" % (name.encode("ascii"), value.encode("ascii"))
        except UnicodeEncodeError:
            continue
        cut = len(name)
        if not (_valid_name(field[:cut]) and _valid_value(field[cut + 1 :])):
            continue
        if size + 1 + len(field) > MAX_SIZE:
            continue
        size += 1 + len(field)
        lines.append(field)
    if not lines:
        return None
    return PREFIX + b"\n".join(lines)


def decode(frame: bytes) -> dict[str, str] | None:
    """The fields of a trace context frame, or ``None`` when it is none, or is malformed.

    Never raises. A field named twice keeps its last value.
    """
    if not frame.startswith(PREFIX) or len(frame) > MAX_SIZE or len(frame) == len(PREFIX):
        return None
    fields: dict[str, str] = {}
    for line in frame[len(PREFIX) :].split(b"\n"):
        name, colon, value = line.partition(b":")
        if not colon or not _valid_name(name) or not _valid_value(value):
            return None
        fields[name.decode("ascii")] = value.decode("ascii")
    return fields


def is_context(frame: bytes) -> bool:
    """Whether ``frame`` claims to be a trace context frame (it may still be malformed)."""
    return frame[:_PREFIX_SIZE] == PREFIX
