"""What load-balancing mode measures per service: outcomes, durations, queue waits.

The scheduler calls in here as requests end and go to workers, so each call costs a dictionary
lookup and a few additions: no label strings are built, and no lock is taken, until a scrape
reads the numbers (:meth:`RequestMetrics.snapshot`). Histograms keep one count per bucket and
are made cumulative, as Prometheus wants them, only when read.

Label values stay bounded whatever clients send. A service gets a label of its own when a
worker registers for it, for the first ``offered_limit`` services; a name that only requests
carry gets one for the first ``requested_limit`` such names. Past those limits, a name is
counted under :data:`OTHER`, and nothing is kept per name: a client that sends ever new names
cannot grow the registry (or this module's memory).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import NamedTuple

OUTCOMES = ("reply", "error", "busy", "no_workers", "deadline", "worker_died", "forbidden")
"""How a request ends: its worker's reply, its worker's error reply (the handler raised), or
one of the broker's refusals (:class:`~zmqrelay._core.refusal.Refusal`, in lower case)."""
REPLY, ERROR = 0, 1
"""Indexes into :data:`OUTCOMES`, for the scheduler's hot path."""
OUTCOME_INDEX = {name: index for index, name in enumerate(OUTCOMES)}

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Upper bounds, in seconds, of the duration and queue wait histograms' buckets (and +Inf).

From 100 µs, about what a request costs through a broker on one machine, to 30 s."""

DEFAULT = "(default)"
"""The label of the default service (named ``b""`` on the wire)."""
OTHER = "(other)"
"""The label of every service past the limits."""


class HistogramSnapshot(NamedTuple):
    """A histogram as Prometheus exposes it."""

    buckets: tuple[tuple[float, int], ...]
    """Cumulative counts per upper bound, the last one ``inf``."""
    observations: int
    total: float
    """The sum of the values observed."""


class Histogram:
    """Counts of observations per bucket, and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a bound holds the values up to and including it)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, other: Histogram) -> None:
        """Add ``other``'s observations (same bounds) to these."""
        counts = self.counts
        for index, count in enumerate(other.counts):
            counts[index] += count
        self.sum += other.sum

    def snapshot(self) -> HistogramSnapshot:
        """The cumulative counts, with ``+Inf``."""
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return HistogramSnapshot(tuple(buckets), running, self.sum)


class ServiceMetrics:
    """One service's counters: outcomes, durations of answered requests, queue waits."""

    __slots__ = ("duration", "outcomes", "queue_wait")

    def __init__(self) -> None:
        self.outcomes = [0] * len(OUTCOMES)
        self.duration = Histogram()
        self.queue_wait = Histogram()

    def add(self, other: ServiceMetrics) -> None:
        """Add ``other``'s counts to these."""
        for index, count in enumerate(other.outcomes):
            self.outcomes[index] += count
        self.duration.add(other.duration)
        self.queue_wait.add(other.queue_wait)


class ServiceGauges(NamedTuple):
    """A service's state now, as a scrape reads it."""

    workers: int
    credits_free: int
    queued: int
    in_flight: int


class RequestMetrics:
    """Per-service counters for a load-balancing broker, with bounded labels.

    Args:
        offered_limit: services that get a label of their own when a worker offers them.
        requested_limit: names that get one when only requests carry them.
    """

    def __init__(self, *, offered_limit: int = 100, requested_limit: int = 20) -> None:
        if offered_limit < 0 or requested_limit < 0:
            raise ValueError("label limits cannot be negative")
        self.offered_limit = offered_limit
        self.requested_limit = requested_limit
        self._by_name: dict[bytes, ServiceMetrics] = {}
        self._offered = 0
        self._requested = 0
        self.other = ServiceMetrics()
        """Everything counted for services past the limits."""

    def offer(self, service: bytes) -> None:
        """A worker offers ``service``: it gets a label, while the limit allows."""
        if service not in self._by_name and self._offered < self.offered_limit:
            self._offered += 1
            self._by_name[service] = ServiceMetrics()

    def of(self, service: bytes) -> ServiceMetrics:
        """The counters ``service``'s requests are counted in (:attr:`other` past the limits)."""
        metrics = self._by_name.get(service)
        if metrics is not None:
            return metrics
        if self._requested < self.requested_limit:
            self._requested += 1
            metrics = self._by_name[service] = ServiceMetrics()
            return metrics
        return self.other

    def labelled(self, service: bytes) -> bool:
        """Whether ``service`` has a label of its own."""
        return service in self._by_name

    def __iter__(self) -> Iterator[tuple[str, ServiceMetrics]]:
        """Each label and its counters, :data:`OTHER` last once anything was counted there."""
        for name, metrics in self._by_name.items():
            yield label(name), metrics
        if any(self.other.outcomes) or any(self.other.queue_wait.counts):
            yield OTHER, self.other


def label(service: bytes) -> str:
    """A service name as a label value: UTF-8, with anything else escaped."""
    return service.decode("utf-8", "backslashreplace") if service else DEFAULT


class Address(NamedTuple):
    """Where a metrics endpoint listens."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0: any free port).

        Raises:
            ValueError: it is not of that form.
        """
        host, colon, port = text.rpartition(":")
        if not colon or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"a metrics address is HOST:PORT, not {text!r}")
        host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
        return cls(host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
