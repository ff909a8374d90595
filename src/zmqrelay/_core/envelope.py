"""Envelopes: the routing frames in front of a request or reply.

A ZeroMQ request travels as ``[hop..., b"", body...]``: every frame before the first empty
frame (the *delimiter*) is routing information that each hop pushes on the way in and pops on
the way out; everything after it is the body. A REQ socket sends ``[b"", body...]`` and each
ROUTER prepends the sender's routing id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zmqrelay.errors import RemoteProtocolError

DELIMITER = b""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message split at its delimiter: ``routing`` frames (outermost first) and ``body``."""

    routing: list[bytes]
    body: list[bytes]

    def frames(self) -> list[bytes]:
        """Join the message back into the frames it came from."""
        return [*self.routing, DELIMITER, *self.body]

    def reply(self, body: Sequence[bytes]) -> list[bytes]:
        """The frames of a reply that retraces this message's route."""
        return [*self.routing, DELIMITER, *body]


def split(frames: Sequence[bytes]) -> Envelope:
    """Split ``frames`` at the first empty frame.

    Raises:
        RemoteProtocolError: there is no routing frame, no delimiter, or no body after it.

    """
    try:
        index = frames.index(DELIMITER)
    except ValueError:
        raise RemoteProtocolError(
            f"no empty delimiter frame in a message of {len(frames)} frame(s)"
        ) from None
    if index == 0:
        raise RemoteProtocolError("message has no routing frames before its delimiter")
    if index == len(frames) - 1:
        raise RemoteProtocolError("message has no body after its delimiter")
    return Envelope(list(frames[:index]), list(frames[index + 1 :]))


def is_routable(frames: list[bytes]) -> bool:
    """Whether ``frames`` read from a ROUTER can be relayed: ``[id, hop..., b"", body, ...]``.

    The cheap check the relay runs on every message: a delimiter after the routing id with at
    least one body frame after it. ROUTER routing ids are never empty, so the search starts at
    the second frame.
    """
    try:
        index = frames.index(DELIMITER, 1)
    except ValueError:
        return False
    return index < len(frames) - 1
