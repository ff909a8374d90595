"""A client's links to several brokers: which are usable, which takes the next request.

An :class:`~zmqrelay.AsyncClient` given several frontends keeps one *link* per broker (a
socket of its own, in the shell). :class:`Links` decides, from what the shell tells it and the
time it is given, which link each request goes out on, and what becomes of the requests a lost
broker held. It reads no clock and touches no socket.

The rules, in one place:

- A link starts ``DOWN``. Its connection's handshake completing (``connected``) makes it
  ``UP``. Losing the connection (``disconnected``: the broker closed or reset it, or it stayed
  silent past the heartbeat timeout) makes it ``DOWN`` again from any state, and hands back the
  ids of the requests it held: the shell ends each with :class:`~zmqrelay.BrokerLost`, which a
  retry policy may send again on another link. Nothing is ever sent again here.
- Requests that end in the client's own timeout are a weaker signal (a broker whose workers are
  gone still answers heartbeats): ``suspend_after`` of them in a row on one link, with nothing
  heard from its broker in between, make it ``SUSPENDED`` for ``suspend_time`` seconds.
- A ``SUSPENDED`` link whose time is up becomes ``PROBING``: it takes one request at a time. A
  message from its broker makes it ``UP`` (in any connected state); a timeout there suspends it
  again.
- The next request goes to a ``PROBING`` link with nothing in flight (so that it is tried), else
  to the ``UP`` link with the fewest requests in flight, ties taken in turn after the last one
  chosen. With no link ``UP`` it goes to the least loaded link that is connected at all
  (suspended or probing): a suspicion must not stop every request. With none connected there is
  no choice (``None``): the shell waits for a link to come up, within the request's timeout.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple


class LinkState(enum.Enum):
    """Where a client's link to one broker stands."""

    DOWN = "down"
    """Not connected: never yet, or the connection was lost."""
    UP = "up"
    """Connected, and taking requests."""
    SUSPENDED = "suspended"
    """Connected, but its requests kept timing out: none sent for a while."""
    PROBING = "probing"
    """Its suspension is over: it takes one request at a time until its broker answers."""


class ClientLinkStatistics(NamedTuple):
    """A snapshot of an :class:`~zmqrelay.AsyncClient`'s link to one broker."""

    endpoint: str
    """The broker's frontend."""
    state: str
    """``"up"``, ``"down"``, ``"suspended"`` or ``"probing"`` (see :class:`LinkState`)."""
    in_flight: int
    """Requests sent on this link and waiting for their reply."""
    requests_sent: int
    """Requests sent on this link."""
    failovers: int
    """Times the link was taken out of use: its connection lost, or suspended."""
    requests_lost: int
    """Requests that were in flight on this link when its connection was lost."""


class _Link:
    __slots__ = (
        "endpoint",
        "failovers",
        "in_flight",
        "requests_lost",
        "requests_sent",
        "state",
        "suspended_until",
        "timeouts_in_a_row",
    )

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.state = LinkState.DOWN
        self.in_flight: set[int] = set()
        self.timeouts_in_a_row = 0
        self.suspended_until = 0.0
        self.requests_sent = 0
        self.failovers = 0
        self.requests_lost = 0


_CONNECTED = (LinkState.UP, LinkState.PROBING, LinkState.SUSPENDED)


class Links:
    """The state of a client's links to its brokers, one per endpoint, in the given order.

    Args:
        endpoints: the brokers' frontends (names only: the shell connects them).
        suspend_after: requests in a row that end in the client's timeout on one link, with
            nothing heard from its broker in between, before the link is suspended.
        suspend_time: seconds a suspended link gets no requests (while another can take them).

    """

    def __init__(
        self, endpoints: Sequence[str], *, suspend_after: int = 3, suspend_time: float = 5.0
    ) -> None:
        if not endpoints:
            raise ValueError("a client needs at least one endpoint")
        if suspend_after < 1:
            raise ValueError("suspend_after must be at least 1")
        if suspend_time < 0:
            raise ValueError("suspend_time must not be negative")
        self._links = [_Link(endpoint) for endpoint in endpoints]
        self._suspend_after = suspend_after
        self._suspend_time = suspend_time
        self._on: dict[int, int] = {}  # request id -> index of the link it was sent on
        self._last = len(self._links) - 1  # the first choice goes to link 0

    def __len__(self) -> int:
        return len(self._links)

    def state(self, index: int) -> LinkState:
        """The state of link ``index``."""
        return self._links[index].state

    def connected(self, index: int) -> None:
        """Link ``index``'s connection completed its handshake: it is up."""
        link = self._links[index]
        link.state = LinkState.UP
        link.timeouts_in_a_row = 0

    def disconnected(self, index: int) -> list[int]:
        """Link ``index`` lost its connection; returns the ids of the requests it held.

        They are forgotten here: end each of them (with :class:`~zmqrelay.BrokerLost`).
        """
        link = self._links[index]
        if link.state is not LinkState.DOWN:
            link.failovers += 1
        link.state = LinkState.DOWN
        link.timeouts_in_a_row = 0
        lost = sorted(link.in_flight)
        for request_id in lost:
            del self._on[request_id]
        link.in_flight.clear()
        link.requests_lost += len(lost)
        return lost

    def heard(self, index: int) -> None:
        """Link ``index``'s broker sent something: it is alive and answering."""
        link = self._links[index]
        link.timeouts_in_a_row = 0
        if link.state is LinkState.SUSPENDED or link.state is LinkState.PROBING:
            link.state = LinkState.UP

    def assign(self, request_id: int, now: float) -> int | None:
        """Choose the link for a new request, and count it there; ``None``: none is connected."""
        index = self._choose(now)
        if index is not None:
            link = self._links[index]
            link.in_flight.add(request_id)
            link.requests_sent += 1
            self._on[request_id] = index
            self._last = index
        return index

    def _choose(self, now: float) -> int | None:
        links = self._links
        count = len(links)
        best: int | None = None
        best_load = 0
        fallback: int | None = None
        fallback_load = 0
        start = self._last + 1
        for offset in range(count):
            index = (start + offset) % count
            link = links[index]
            state = link.state
            load = len(link.in_flight)
            if state is LinkState.SUSPENDED and now >= link.suspended_until:
                link.state = state = LinkState.PROBING
            if state is LinkState.UP:
                if best is None or load < best_load:
                    best, best_load = index, load
            elif state is LinkState.PROBING and not load:
                return index
            elif state is not LinkState.DOWN and (fallback is None or load < fallback_load):
                fallback, fallback_load = index, load
        return best if best is not None else fallback

    def ended(self, request_id: int, now: float, *, timed_out: bool = False) -> None:
        """A request ended: answered, cancelled, or (``timed_out``) at the client's timeout.

        Idempotent; a request whose link was lost meanwhile is already forgotten.
        """
        index = self._on.pop(request_id, None)
        if index is None:
            return
        link = self._links[index]
        link.in_flight.discard(request_id)
        if not timed_out or link.state is LinkState.DOWN:
            return
        link.timeouts_in_a_row += 1
        if link.state is LinkState.PROBING or link.timeouts_in_a_row >= self._suspend_after:
            if link.state is LinkState.UP:
                link.failovers += 1
            link.state = LinkState.SUSPENDED
            link.suspended_until = now + self._suspend_time
            link.timeouts_in_a_row = 0

    def link_of(self, request_id: int) -> int | None:
        """The index of the link a request in flight was sent on."""
        return self._on.get(request_id)

    @property
    def in_flight(self) -> int:
        """Requests sent on some link and not ended yet."""
        return len(self._on)

    def statistics(self) -> tuple[ClientLinkStatistics, ...]:
        """A snapshot of every link, in the order of the endpoints."""
        return tuple(
            ClientLinkStatistics(
                endpoint=link.endpoint,
                state=link.state.value,
                in_flight=len(link.in_flight),
                requests_sent=link.requests_sent,
                failovers=link.failovers,
                requests_lost=link.requests_lost,
            )
            for link in self._links
        )
