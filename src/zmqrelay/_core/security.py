"""What a CURVE broker counts of the peers it refused."""

from __future__ import annotations

from typing import NamedTuple


class SecurityStatistics(NamedTuple):
    """What a CURVE broker refused: peers whose key it does not allow, failed handshakes."""

    clients_refused: int
    """Frontend handshakes refused: the client's key is not allowed."""
    workers_refused: int
    """Backend handshakes refused: the worker's key is not allowed (a client key included)."""
    handshakes_failed: int
    """Handshakes that failed otherwise: a plain-text peer, garbage, a wrong server key, or a
    peer that said nothing within the handshake timeout."""
