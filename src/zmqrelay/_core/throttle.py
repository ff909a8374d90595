"""What a flood repeats is reported, never repeated: one report per kind per interval.

Whatever a peer can make a broker or a worker log once per message or per connection (a
malformed request, a refused key) goes through a :class:`Throttle`. The first occurrence of a
kind is reported at once; after that, a kind is reported at most once per ``interval``
seconds, each report with the number of occurrences since the one before. So an attacker can
make the log grow by at most one line per kind per interval, and nothing is lost from the
counts.

Occurrences come in one at a time, from paths that are rare and already per event
(:meth:`Throttle.add`), or as counters read now and then (:meth:`Throttle.read`), so that a hot
path that already counts pays nothing more. Like the rest of the core, a throttle reads no
clock: every call takes ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class Report(NamedTuple):
    """What to report of one kind now."""

    kind: str
    """What happened, e.g. ``"malformed_requests"``."""
    occurrences: int
    """Occurrences since the previous report of this kind (all so far, in the first)."""
    since: float | None
    """Seconds since the previous report of this kind; ``None`` in the first."""


class Throttle:
    """At most one report per kind per ``interval`` seconds; the first occurrence at once.

    Two reports of one kind are always at least ``interval`` apart; occurrences in between
    wait, counted, for the next report, which comes with the next occurrence or reading after
    the interval, or from :meth:`due`; :meth:`flush` reports them all at once, as a last
    word.
    """

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._reported: dict[str, float] = {}
        self._waiting: dict[str, int] = {}
        self._read: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Throttle interval={self.interval} waiting={self._waiting}>"

    def add(self, kind: str, now: float, count: int = 1) -> Report | None:
        """``count`` occurrences of ``kind`` at ``now``: what to report now, if anything."""
        waiting = self._waiting.pop(kind, 0) + count
        if waiting <= 0:
            return None
        last = self._reported.get(kind)
        # Compared as a sum, as the time it is due is computed (last + interval), so that a
        # call at exactly that time always finds it due, whatever the rounding.
        if last is not None and now < last + self.interval:
            self._waiting[kind] = waiting
            return None
        self._reported[kind] = now
        return Report(kind, waiting, None if last is None else now - last)

    def read(self, totals: Mapping[str, int], now: float) -> list[Report]:
        """Counters read at ``now``: what to report now, :meth:`due` reports included.

        Each counter's increase since the previous reading counts as that many occurrences
        (a counter first read counts from zero; one that went down starts again from there).
        """
        reports = []
        for kind, total in totals.items():
            increase = total - self._read.get(kind, 0)
            self._read[kind] = total
            if increase > 0 and (report := self.add(kind, now, increase)) is not None:
                reports.append(report)
        reports.extend(self.due(now))
        return reports

    def due(self, now: float) -> list[Report]:
        """Reports of the occurrences that waited, for each kind whose interval has passed."""
        interval, reported = self.interval, self._reported
        ready = [kind for kind in self._waiting if now >= reported[kind] + interval]
        return [report for kind in ready if (report := self.add(kind, now, 0)) is not None]

    def flush(self, now: float) -> list[Report]:
        """Reports of every occurrence that waits, interval or not: for a last word."""
        return [Report(kind, count, now - self._reported[kind]) for kind, count in self._drain()]

    def _drain(self) -> list[tuple[str, int]]:
        waiting = list(self._waiting.items())
        self._waiting.clear()
        return waiting

    def waiting(self) -> dict[str, int]:
        """Occurrences not reported yet, per kind."""
        return dict(self._waiting)
