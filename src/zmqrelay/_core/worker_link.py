"""A worker's standing with one broker: sessions, liveness, what it took and dropped.

A worker that serves several brokers keeps one :class:`Link` per broker, and one socket each:
a DEALER connected to several brokers deals what it sends round-robin (READY, heartbeats, and
replies too, whichever broker the request came from). In relay mode a link only counts; in
load-balancing mode the rules, all in this module, with time as an argument:

- A :class:`Session` starts when the worker says READY and ends when the broker says
  DISCONNECT or has been silent for ``liveness`` heartbeat intervals. The worker then
  registers again, in a new session.
- Silence counts from the last message heard, or from the last READY. A *patient* broker
  (Majordomo: a broker may not heartbeat a worker that holds one of its requests; the protocol's
  :class:`~zmqrelay._core.registration.Registration` says which) is judged only while the
  worker holds none of its requests.
- A request belongs to the session it came in, and is answered according to how that session
  stands:

  - open: its reply goes out, waiting while the broker's queue in the socket is full;
  - *forgotten* (the broker said DISCONNECT, so it ended every request it had sent before):
    the request is dropped, and its handler, if not started, never runs;
  - *silent* (the broker may be dead, restarting, or only stalled: a zmqrelay broker that
    is heard again keeps what the worker holds when it registers again): the reply goes out
    only if the socket takes it at once, else it is dropped. A dead broker holds up no
    handler, and one that comes back loses no credit to a reply the worker kept.

  Every dropped request is counted.
"""

from __future__ import annotations

from typing import NamedTuple


class WorkerLinkStatistics(NamedTuple):
    """A worker's counters for one broker (one backend endpoint)."""

    endpoint: str
    """The broker's backend endpoint."""
    registrations: int
    """READY messages sent (each failed attempt and each new session counts)."""
    requests_received: int
    """Requests taken from this broker."""
    requests_dropped: int
    """Requests not answered because this broker said DISCONNECT before their reply (the
    handler, if not started, never ran), or because their reply found the socket full after
    the broker went silent."""
    held: int
    """Requests of the current session not answered yet."""


class Session:
    """One registration with a broker, from READY to its end (see the module's rules)."""

    __slots__ = ("forgotten", "open")

    def __init__(self) -> None:
        self.open = True
        """Whether it has not ended yet."""
        self.forgotten = False
        """Whether it ended because the broker said DISCONNECT."""

    def __repr__(self) -> str:
        state = "open" if self.open else "forgotten" if self.forgotten else "silent"
        return f"<Session {state}>"


class Link:
    """A worker's standing with one broker: see the module's rules."""

    __slots__ = (
        "_heard_at",
        "_held",
        "_registrations",
        "_requests_dropped",
        "_requests_received",
        "endpoint",
        "session",
        "silence",
        "unacknowledged",
    )

    def __init__(self, endpoint: str, *, heartbeat_interval: float, liveness: int) -> None:
        self.endpoint = endpoint
        self.silence = heartbeat_interval * liveness
        """Seconds of silence after which the broker is judged gone."""
        self.session = Session()
        """The current session."""
        self.unacknowledged = False
        """Whether the worker said READY and has heard nothing from the broker since."""
        self._heard_at = 0.0
        self._held = 0
        self._registrations = 0
        self._requests_received = 0
        self._requests_dropped = 0

    def __repr__(self) -> str:
        return f"<Link {self.endpoint!r} {self.session!r} held={self._held}>"

    @property
    def registrations(self) -> int:
        """READY messages sent so far."""
        return self._registrations

    def register(self, now: float) -> None:
        """The worker says READY now: silence counts from here."""
        self._registrations += 1
        self._heard_at = now
        self.unacknowledged = True

    def heard(self, now: float) -> bool:
        """The broker sent something; returns whether it answered a READY just now."""
        self._heard_at = now
        answered, self.unacknowledged = self.unacknowledged, False
        return answered

    def take(self) -> Session:
        """A request came: count it, and return the session it belongs to."""
        self._requests_received += 1
        self._held += 1
        return self.session

    def release(self, session: Session, *, dropped: bool = False) -> None:
        """A request taken in ``session`` is done with: answered, or ``dropped``."""
        if session is self.session:
            self._held -= 1
        if dropped:
            self._requests_dropped += 1

    def gone(self, now: float, *, patient: bool) -> bool:
        """Whether the broker has been silent long enough to be judged gone.

        A ``patient`` broker is not judged while the worker holds one of its requests.
        """
        if patient and self._held:
            return False
        return now - self._heard_at >= self.silence

    def end(self, *, forgotten: bool) -> None:
        """The session is over: the broker said DISCONNECT (``forgotten``), or :meth:`gone`."""
        self.session.open = False
        self.session.forgotten = forgotten
        self.session = Session()
        self._held = 0

    def statistics(self) -> WorkerLinkStatistics:
        """A snapshot of the counters."""
        return WorkerLinkStatistics(
            endpoint=self.endpoint,
            registrations=self._registrations,
            requests_received=self._requests_received,
            requests_dropped=self._requests_dropped,
            held=self._held,
        )
