"""What the relay knows: which messages it may forward, and what it counted.

Relay mode keeps no state per request. Each message read from the frontend ROUTER must be
``[client id, hop..., b"", body...]`` and each reply read from the backend ``[client id,
hop..., b"", body...]``; anything else is dropped and counted (see
:func:`~zmqrelay._core.envelope.is_routable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class BrokerStatistics(NamedTuple):
    """A snapshot of a :class:`~zmqrelay.Broker`'s counters."""

    mode: str
    """The routing mode (``"relay"``)."""
    requests_forwarded: int
    """Requests passed from the frontend to the backend."""
    replies_forwarded: int
    """Replies passed from the backend to a client."""
    malformed_requests: int
    """Frontend messages dropped because they had no envelope (delimiter and body)."""
    malformed_replies: int
    """Backend messages dropped because they had no envelope."""
    unroutable_replies: int
    """Replies dropped because their client is not connected (any more)."""
    congested_replies: int
    """Replies dropped because their client's queue was full (it stopped reading)."""
    undelivered_requests: int
    """Requests read from a client but never handed to a worker, because the broker closed
    while no worker could take them."""
    requests_held: int
    """Requests read from clients that wait, now, for a worker to take them. While one waits
    the broker reads no more requests (backpressure)."""


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

    def snapshot(self, mode: str) -> BrokerStatistics:
        """The counters as an immutable :class:`BrokerStatistics`."""
        return BrokerStatistics(
            mode=mode,
            requests_forwarded=self.requests_forwarded,
            replies_forwarded=self.replies_forwarded,
            malformed_requests=self.malformed_requests,
            malformed_replies=self.malformed_replies,
            unroutable_replies=self.unroutable_replies,
            congested_replies=self.congested_replies,
            undelivered_requests=self.undelivered_requests,
            requests_held=self.requests_held,
        )
