"""Answers that a client's queue in the broker could not take yet: they wait, in order.

libzmq keeps a bounded queue per peer of a ROUTER socket (1,000 messages by default). When many
requests end at once (a burst of refusals, say) their answers can overflow it although the
client reads. Rather than drop them, the broker keeps what did not fit, per client and in
order, and sends it again as the client's queue drains; messages for a client that has some
waiting go behind them. Every request still ends once, at its client.

What waits is bounded: parts of streamed replies wait up to ``limit`` per client (past it,
the part is dropped and counted, and the stream ends in a refusal saying parts were lost, never
with a gap); a final answer always waits (a client has at most one per request it sent, and the
broker bounds those).
"""

from __future__ import annotations

from collections import deque

from zmqrelay._core import frontend
from zmqrelay._core.request import Request

ToClient = tuple[list[bytes], Request | None]

RETRY_INTERVAL = 0.005
"""Seconds between two tries of a client whose queue was full at the last."""
RELEASE = 256
"""Messages released per client per try (so a large backlog drains at about 50,000 a
second, and never holds the loop)."""


class Backlog:
    """Answers waiting, per client, for the client's queue in the broker to take them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[bytes, deque[ToClient]] = {}
        self.retry_at: float | None = None
        """When to try again, while anything waits."""
        self.dropped = 0
        """Parts of streamed replies dropped because their client's backlog was full."""

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())

    def answers(self) -> int:
        """How many of the messages waiting end a request (the others are parts of streams)."""
        return sum(stream is None for waiting in self._waiting.values() for _, stream in waiting)

    def holds(self, client: bytes) -> bool:
        """Whether answers for ``client`` wait (a new one must go behind them)."""
        return client in self._waiting

    def add(self, message: ToClient) -> None:
        """``message`` goes behind what waits for its client."""
        self._keep(self._waiting[message[0][0]], message)

    def full(self, message: ToClient, outbox: list[ToClient], now: float) -> None:
        """``message`` met its client's full queue: it waits.

        So does what the outbox holds for that client, and before what already waited, which
        is younger.
        """
        client = message[0][0]
        fresh = [message, *(entry for entry in outbox if entry[0][0] == client)]
        outbox[:] = [entry for entry in outbox if entry[0][0] != client]
        waiting = self._waiting.setdefault(client, deque())
        for entry in reversed(fresh):
            waiting.appendleft(entry)
        self.retry_at = now + RETRY_INTERVAL

    def gone(self, client: bytes) -> int:
        """``client`` is gone: what waited for it is dropped; returns how much."""
        waiting = self._waiting.pop(client, None)
        return 0 if waiting is None else len(waiting)

    def release(self, outbox: list[ToClient], now: float) -> None:
        """Put the oldest of what waits for each client back in the outbox, to be tried."""
        for client, waiting in list(self._waiting.items()):
            outbox.extend(waiting.popleft() for _ in range(min(RELEASE, len(waiting))))
            if not waiting:
                # All of it is in the outbox: what comes next for the client goes behind it
                # there (or waits again, behind it, if the client's queue is still full).
                del self._waiting[client]
        self.retry_at = now + RETRY_INTERVAL if self._waiting else None

    def _keep(self, waiting: deque[ToClient], message: ToClient) -> None:
        stream = message[1]
        if stream is not None and len(waiting) >= self.limit:
            # A part that cannot wait: the stream cannot reach its client whole.
            self.dropped += 1
            stream.broken = frontend.LOST_PARTS
            return
        waiting.append(message)
