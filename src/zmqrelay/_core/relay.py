"""What the relay knows: which messages it may forward, and what it counted.

Relay mode keeps no state per request. Each message read from the frontend ROUTER must be
``[client id, hop..., b"", body...]`` and each reply read from the backend ``[client id,
hop..., b"", body...]``; anything else is dropped and counted (see
:func:`~zmqrelay._core.envelope.is_routable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from zmqrelay._core.security import SecurityStatistics


class BrokerStatistics(NamedTuple):
    """A snapshot of a relay-mode :class:`~zmqrelay.Broker`'s counters.

    (A load-balancing broker's are a :class:`~zmqrelay.BalancerStatistics`; the two tell
    themselves apart by :attr:`mode`, which narrows the type for a type checker.)

    What is counted depends on the engine: the ``"python"`` engine looks at every message and
    counts messages and drops; the ``"libzmq"`` engine (the default, C speed) never sees a
    message and reports libzmq's frame and byte counts instead. A field the engine does not
    count is ``None``.
    """

    mode: Literal["relay"]
    """The routing mode."""
    engine: str
    """What moves the frames: ``"libzmq"`` or ``"python"``."""
    requests_forwarded: int | None
    """Requests passed from the frontend to the backend."""
    replies_forwarded: int | None
    """Replies passed from the backend to a client."""
    malformed_requests: int | None
    """Frontend messages dropped because they had no envelope (delimiter and body)."""
    malformed_replies: int | None
    """Backend messages dropped because they had no envelope."""
    unroutable_replies: int | None
    """Replies dropped because their client is not connected (any more)."""
    congested_replies: int | None
    """Replies dropped because their client's queue was full (it stopped reading)."""
    undelivered_requests: int
    """Requests read from a client but never handed to a worker, because the broker closed
    while no worker could take them."""
    requests_held: int
    """Requests read from clients that wait, now, for a worker to take them. While one waits
    the broker reads no more requests (backpressure)."""
    request_frames: int | None
    """Frames passed to workers (routing, delimiter and body frames alike)."""
    request_bytes: int | None
    """Bytes in those frames."""
    reply_frames: int | None
    """Frames passed to clients."""
    reply_bytes: int | None
    """Bytes in those frames."""
    security: SecurityStatistics | None = None
    """What CURVE refused; ``None`` when the broker does not use CURVE."""


class ProxyTraffic(NamedTuple):
    """Frames and bytes libzmq's proxy moved: requests toward workers, replies toward clients."""

    request_frames: int
    request_bytes: int
    reply_frames: int
    reply_bytes: int


@dataclass(slots=True)
class RelayCounters:
    """The relay's mutable counters; :meth:`snapshot` freezes them."""

    requests_forwarded: int = 0
    replies_forwarded: int = 0
    malformed_requests: int = 0
    malformed_replies: int = 0
    unroutable_replies: int = 0
    congested_replies: int = 0
    undelivered_requests: int = 0
    requests_held: int = 0

    @property
    def outstanding(self) -> int:
        """Requests forwarded and not yet answered, as far as counting can tell.

        Every reply read from the backend settles one request, whether it was forwarded or
        dropped. An estimate all the same (a worker that loses a request, or answers one twice,
        skews it), used only to end a graceful drain before its timeout.
        """
        settled = (
            self.replies_forwarded
            + self.malformed_replies
            + self.unroutable_replies
            + self.congested_replies
        )
        return max(0, self.requests_forwarded - settled)

    def drops(self) -> dict[str, int]:
        """What was dropped so far, by kind: the counters a throttled log reads."""
        return {
            "malformed_requests": self.malformed_requests,
            "malformed_replies": self.malformed_replies,
            "unroutable_replies": self.unroutable_replies,
            "congested_replies": self.congested_replies,
        }

    def snapshot(self, traffic: ProxyTraffic | None = None) -> BrokerStatistics:
        """The counters as an immutable :class:`BrokerStatistics`.

        With ``traffic`` (the libzmq engine's frame counts) the message counters are unknown.
        """
        if traffic is None:
            return BrokerStatistics(
                "relay", "python",
                self.requests_forwarded, self.replies_forwarded,
                self.malformed_requests, self.malformed_replies,
                self.unroutable_replies, self.congested_replies,
                self.undelivered_requests, self.requests_held,
                None, None, None, None,
            )  # fmt: skip
        return BrokerStatistics(
            "relay", "libzmq",
            None, None, None, None, None, None,
            self.undelivered_requests, self.requests_held,
            *traffic,
        )  # fmt: skip
