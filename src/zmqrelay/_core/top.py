"""What ``zmqrelay top`` shows, worked out from two scrapes of a broker's Prometheus metrics.

Pure: a :class:`Scrape` holds samples already parsed (a name, labels, a value) and the time the
shell took it; :meth:`TopView.from_scrapes` turns two of them into rates, percentiles, gauges
and totals. Nothing here fetches, parses text, draws or reads a clock.

How the figures are made, as Prometheus makes them:

- A counter's **increase** between two scrapes is its new value minus its old one, unless the
  counter was reset in between (the broker restarted): it went down, or its ``_created`` time
  changed. Then, as ``rate()`` assumes, it counted from zero and its increase is its new value.
  A series that was not there at the first scrape started from zero in between, too.
- A **rate** is an increase divided by the seconds between the two scrapes.
- A **percentile** is interpolated from the increases of a histogram's buckets, as
  ``histogram_quantile(q, rate(..._bucket[...]))`` does (:func:`bucket_quantile`); a histogram
  that went down anywhere was reset as a whole. The totals row sums the buckets of every
  service first, as ``sum by (le)`` does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from zmqrelay._core.refusal import Refusal

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name: hashable, and equal whatever order they came in."""

# The broker's metrics, named as it exposes them.
BROKER_INFO = "zmqrelay_broker_info"
REQUESTS = "zmqrelay_requests_total"
REQUEST_DURATION = "zmqrelay_request_duration_seconds"
QUEUE_WAIT = "zmqrelay_queue_wait_seconds"
WORKERS = "zmqrelay_workers"
WORKER_CREDITS_FREE = "zmqrelay_worker_credits_free"
QUEUED_REQUESTS = "zmqrelay_queued_requests"
REQUESTS_IN_FLIGHT = "zmqrelay_requests_in_flight"
MESSAGES_DROPPED = "zmqrelay_messages_dropped_total"
REQUESTS_FORWARDED = "zmqrelay_requests_forwarded_total"
REPLIES_FORWARDED = "zmqrelay_replies_forwarded_total"
RELAY_FRAMES = "zmqrelay_relay_frames_total"
RELAY_BYTES = "zmqrelay_relay_bytes_total"
HANDSHAKES_REFUSED = "zmqrelay_handshakes_refused_total"
HANDSHAKES_FAILED = "zmqrelay_handshakes_failed_total"

GAUGES = (WORKERS, WORKER_CREDITS_FREE, QUEUED_REQUESTS, REQUESTS_IN_FLIGHT)
"""The gauges labelled by service, read from the later scrape."""
PER_SERVICE = (REQUESTS, REQUEST_DURATION, QUEUE_WAIT, *GAUGES)
"""The metrics labelled by service, which load-balancing mode exposes."""

OUTCOMES = ("reply", "error", *(refusal.name.lower() for refusal in Refusal))
"""The outcomes of a request: a worker's reply, its error reply, or one of the refusals."""
DROP_REASONS = ("malformed", "violation", "unroutable", "congested", "late", "unknown")
"""Why the broker drops a message, as ``zmqrelay_messages_dropped_total`` labels it."""
DIRECTIONS = ("request", "reply")
"""Toward the workers, toward the clients."""
HANDSHAKE_SIDES = ("client", "worker")
"""The broker's sockets whose CURVE handshakes are counted."""
QUANTILES = (0.5, 0.9, 0.99)
"""The percentiles shown: p50, p90, p99."""
TOTAL = "(all)"
"""The service name of the totals row."""
SCHEMA = "zmqrelay-top/1"
"""The ``schema`` of the JSON document, changed when a field changes meaning or goes away."""


def labels_of(labels: Mapping[str, str]) -> Labels:
    """A series' labels in their sorted, hashable form."""
    return tuple(sorted(labels.items()))


def metrics_url(text: str) -> str:
    """The URL to scrape, from what the user typed.

    ``HOST:PORT`` and ``http://HOST:PORT`` mean ``http://HOST:PORT/metrics``; a URL with a path
    is taken as it is.

    Raises:
        ValueError: not an http(s) URL with a host.
    """
    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - it parses the port and raises on a bad one
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not HOST:PORT or an http:// URL")
    if parts.path in ("", "/"):
        url = parts._replace(path="/metrics").geturl()
    return url


@dataclass(frozen=True)
class Scrape:
    """What one scrape of a metrics endpoint read, and when.

    Build one with :meth:`of`. ``at`` is in seconds on any clock that only goes forward (the
    shell's monotonic clock): only the difference between two scrapes is used.
    """

    at: float
    """When it was taken, in seconds."""
    samples: Mapping[str, Mapping[Labels, float]]
    """Each sample's value, by sample name then labels."""
    families: frozenset[str]
    """The names of the metrics the endpoint declared, even those with no series yet."""

    @classmethod
    def of(
        cls,
        at: float,
        samples: Iterable[tuple[str, Mapping[str, str], float]],
        families: Iterable[str] = (),
    ) -> Scrape:
        """A scrape of these ``(name, labels, value)`` samples, taken ``at`` seconds.

        ``families`` are the declared metric names (a counter's with or without ``_total``):
        the names of the samples count as declared too.
        """
        indexed: defaultdict[str, dict[Labels, float]] = defaultdict(dict)
        for name, labels, value in samples:
            indexed[name][labels_of(labels)] = value
        return cls(at=at, samples=dict(indexed), families=frozenset((*families, *indexed)))

    def series(self, name: str) -> Mapping[Labels, float]:
        """The values of the samples called ``name``, by labels."""
        return self.samples.get(name, {})

    def declares(self, metric: str) -> bool:
        """Whether the endpoint exposes ``metric`` (a histogram by its base name)."""
        names = {metric, metric.removesuffix("_total"), f"{metric}_bucket"}
        return not names.isdisjoint(self.families)

    def has_zmqrelay_metrics(self) -> bool:
        """Whether any of its metrics is a zmqrelay broker's."""
        return any(name.startswith("zmqrelay_") for name in self.families)


def _created(metric: str) -> str:
    """The name of the sample holding the time ``metric``'s series were created, or reset."""
    return f"{metric.removesuffix('_total')}_created"


def _was_reset(before: Scrape, after: Scrape, metric: str, labels: Labels) -> bool:
    created = _created(metric)
    old, new = before.series(created).get(labels), after.series(created).get(labels)
    return old is not None and new is not None and old != new


def increases(before: Scrape, after: Scrape, counter: str) -> dict[Labels, float]:
    """How much each series of ``counter`` grew between the two scrapes, by labels.

    A series that went down, whose ``_created`` time changed, or that is new, counted from
    zero in between: its increase is its value at ``after``.
    """
    old_values = before.series(counter)
    grown: dict[Labels, float] = {}
    for labels, value in after.series(counter).items():
        old = old_values.get(labels)
        if old is None or value < old or _was_reset(before, after, counter, labels):
            grown[labels] = value
        else:
            grown[labels] = value - old
    return grown


Buckets = dict[float, float]
"""A histogram's cumulative bucket counts by upper bound (``le``), ``math.inf`` included."""


def _buckets(scrape: Scrape, histogram: str) -> dict[Labels, Buckets]:
    """Each series of ``histogram`` (labels without ``le``) with its buckets."""
    found: defaultdict[Labels, Buckets] = defaultdict(dict)
    for labels, count in scrape.series(f"{histogram}_bucket").items():
        rest = tuple(pair for pair in labels if pair[0] != "le")
        le = dict(labels).get("le")
        if le is None:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        if not math.isnan(bound):  # "1" and "1.0" are one bucket, as Prometheus merges them
            found[rest][bound] = found[rest].get(bound, 0.0) + count
    return dict(found)


def bucket_increases(before: Scrape, after: Scrape, histogram: str) -> dict[Labels, Buckets]:
    """How much each bucket of each series of ``histogram`` grew, by labels without ``le``.

    A series with a bucket that went down or that is new, or whose ``_created`` time changed,
    was reset as a whole: its increases are its counts at ``after``.
    """
    old_series = _buckets(before, histogram)
    grown: dict[Labels, Buckets] = {}
    for labels, buckets in _buckets(after, histogram).items():
        old = old_series.get(labels, {})
        reset = any(
            old.get(bound) is None or count < old[bound] for bound, count in buckets.items()
        ) or _was_reset(before, after, histogram, labels)
        if reset:
            grown[labels] = dict(buckets)
        else:
            grown[labels] = {bound: count - old[bound] for bound, count in buckets.items()}
    return grown


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q``-quantile of a histogram, interpolated as Prometheus's histogram_quantile does.

    ``buckets`` are cumulative counts by upper bound. Within a bucket the observations are
    taken as spread evenly, from 0 in the lowest bucket if its bound is positive; a quantile in
    the ``+Inf`` bucket is the highest finite bound. Counts that go down from one bucket to
    the next are raised to the highest count below them. None where Prometheus answers NaN: no
    observations, no ``+Inf`` bucket, fewer than two buckets, or ``q`` 0 and an empty lowest
    bucket.

    Raises:
        ValueError: ``q`` is not between 0 and 1.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or len(bounds) < 2:
        return None
    counts = [buckets[bound] for bound in bounds]
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    observations = counts[-1]
    if not observations > 0:
        return None
    rank = q * observations
    b = next(i for i, count in enumerate(counts) if count >= rank or i == len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:  # q == 0 and an empty lowest bucket: Prometheus answers NaN
        return None
    return start + (end - start) * (rank / count)


class Percentiles(NamedTuple):
    """p50, p90 and p99 of what a histogram observed between two scrapes, in seconds.

    Each is None when nothing was observed.
    """

    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, buckets: Mapping[float, float] | None) -> Percentiles:
        """The percentiles of these bucket increases (None: no second scrape)."""
        if buckets is None:
            return cls(None, None, None)
        p50, p90, p99 = (bucket_quantile(q, buckets) for q in QUANTILES)
        return cls(p50, p90, p99)


def _sum_buckets(all_buckets: Iterable[Mapping[float, float]]) -> Buckets:
    summed: defaultdict[float, float] = defaultdict(float)
    for buckets in all_buckets:
        for bound, count in buckets.items():
            summed[bound] += count
    return dict(summed)


@dataclass(frozen=True)
class ServiceRow:
    """One service's line: rates over the interval, percentiles, and gauges at its end.

    Rates and percentiles are None when there was only one scrape; a gauge is None when the
    broker does not expose it.
    """

    service: str
    """The service's name (``(default)``, ``(other)``, or ``(all)`` on the totals row)."""
    outcomes_per_second: Mapping[str, float] | None
    """Requests ended per second by outcome: every one of :data:`OUTCOMES`, and any other."""
    latency: Percentiles
    """Broker in to reply out, of requests that ended in a reply or an error reply."""
    queue_wait: Percentiles
    """Arrival to dispatch to a worker."""
    workers: float | None
    worker_credits_free: float | None
    queued_requests: float | None
    requests_in_flight: float | None

    @property
    def requests_per_second(self) -> float | None:
        """Requests ended per second, whatever their outcome."""
        if self.outcomes_per_second is None:
            return None
        return sum(self.outcomes_per_second.values(), 0.0)

    @property
    def errors_per_second(self) -> float | None:
        """Error replies per second: the worker's handler raised."""
        if self.outcomes_per_second is None:
            return None
        return self.outcomes_per_second.get("error", 0.0)

    @property
    def refused_per_second(self) -> float | None:
        """Requests per second that the broker ended without a worker's answer."""
        if self.outcomes_per_second is None:
            return None
        return sum(
            (
                rate
                for outcome, rate in self.outcomes_per_second.items()
                if outcome not in ("reply", "error")
            ),
            0.0,
        )

    def to_json(self) -> dict[str, Any]:
        """This row as the JSON document has it."""
        return {
            "service": self.service,
            "requests_per_second": self.requests_per_second,
            "outcomes_per_second": _json_map(self.outcomes_per_second),
            "latency_seconds": self.latency._asdict(),
            "queue_wait_seconds": self.queue_wait._asdict(),
            "workers": _json_number(self.workers),
            "worker_credits_free": _json_number(self.worker_credits_free),
            "queued_requests": _json_number(self.queued_requests),
            "requests_in_flight": _json_number(self.requests_in_flight),
        }


class Forwarded(NamedTuple):
    """What one direction carried per second; None where the broker does not count it."""

    messages_per_second: float | None
    frames_per_second: float | None
    bytes_per_second: float | None


class BrokerInfo(NamedTuple):
    """The broker's ``zmqrelay_broker_info`` labels."""

    mode: str
    engine: str
    version: str


@dataclass(frozen=True)
class TopView:
    """Everything ``zmqrelay top`` shows, from two scrapes (or one, before the second comes).

    Mappings and rows are None for what the broker does not expose (a relay broker has no
    services); rates are None until there are two scrapes.
    """

    seconds: float | None
    """Seconds between the two scrapes: what the rates are averaged over."""
    broker: BrokerInfo | None
    services: tuple[ServiceRow, ...] | None
    """Busiest first (then by name); None when the broker serves no services (relay mode)."""
    total: ServiceRow | None
    """Every service together; None with ``services``."""
    forwarded: Mapping[str, Forwarded] | None
    """Messages, frames and bytes per second by direction (``request``, ``reply``)."""
    dropped_per_second: Mapping[str, float] | None
    """Messages dropped per second by reason: every one of :data:`DROP_REASONS`, and others."""
    handshakes_refused_per_second: Mapping[str, float] | None
    """CURVE handshakes refused per second, by side (``client``, ``worker``)."""
    handshakes_failed_per_second: float | None

    @classmethod
    def from_scrapes(cls, before: Scrape | None, after: Scrape) -> TopView:
        """The view at ``after``, with rates since ``before`` (None: gauges only, no rates)."""
        seconds = None if before is None else after.at - before.at
        rates = _Rates(before, after) if before is not None and after.at > before.at else None
        info = next(iter(after.series(BROKER_INFO)), None)
        broker = None
        if info is not None:
            found = dict(info)
            broker = BrokerInfo(
                found.get("mode", "?"), found.get("engine", "?"), found.get("version", "?")
            )
        services, total = _service_rows(after, rates, broker)
        return cls(
            seconds=seconds,
            broker=broker,
            services=services,
            total=total,
            forwarded=_forwarded(after, rates),
            dropped_per_second=_by_label(after, rates, MESSAGES_DROPPED, "reason", DROP_REASONS),
            handshakes_refused_per_second=_by_label(
                after, rates, HANDSHAKES_REFUSED, "side", HANDSHAKE_SIDES
            ),
            handshakes_failed_per_second=(
                rates.total(HANDSHAKES_FAILED)
                if rates is not None and after.declares(HANDSHAKES_FAILED)
                else None
            ),
        )

    def to_json(self, url: str) -> dict[str, Any]:
        """The JSON document of ``zmqrelay top --once --json``, for the endpoint at ``url``.

        Numbers that are not finite (a broker's counter gone wrong) are null, as JSON has none.
        """
        document = {
            "schema": SCHEMA,
            "url": url,
            "seconds": self.seconds,
            "broker": None if self.broker is None else self.broker._asdict(),
            "services": (
                None if self.services is None else [row.to_json() for row in self.services]
            ),
            "total": None if self.total is None else self.total.to_json(),
            "forwarded": (
                None
                if self.forwarded is None
                else {direction: rates._asdict() for direction, rates in self.forwarded.items()}
            ),
            "dropped_per_second": _json_map(self.dropped_per_second),
            "handshakes_per_second": {
                "refused": _json_map(self.handshakes_refused_per_second),
                "failed": self.handshakes_failed_per_second,
            },
        }
        finite: dict[str, Any] = _finite(document)
        return finite


class _Rates:
    """Per-second increases between two scrapes, worked out once per metric."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after
        self.seconds = after.at - before.at
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, Buckets]] = {}

    def counter(self, name: str) -> dict[Labels, float]:
        """Each series' rate."""
        if name not in self._counters:
            self._counters[name] = {
                labels: grown / self.seconds
                for labels, grown in increases(self.before, self.after, name).items()
            }
        return self._counters[name]

    def total(self, name: str) -> float:
        """The rate of every series together."""
        return sum(self.counter(name).values(), 0.0)

    def by(self, name: str, label: str) -> dict[str, float]:
        """The rates summed by one label's value."""
        summed: defaultdict[str, float] = defaultdict(float)
        for labels, rate in self.counter(name).items():
            summed[dict(labels).get(label, "")] += rate
        return dict(summed)

    def buckets(self, name: str) -> dict[Labels, Buckets]:
        """Each series' bucket increases (the same for rates: the interval cancels out)."""
        if name not in self._histograms:
            self._histograms[name] = bucket_increases(self.before, self.after, name)
        return self._histograms[name]


def _service_of(labels: Labels) -> str:
    return dict(labels).get("service", "")


def _services_seen(scrape: Scrape) -> list[str]:
    names = (
        REQUESTS,
        f"{REQUEST_DURATION}_bucket",
        f"{QUEUE_WAIT}_bucket",
        *GAUGES,
    )
    return sorted({_service_of(labels) for name in names for labels in scrape.series(name)})


def _per_service(buckets: Mapping[Labels, Buckets]) -> dict[str, Buckets]:
    grouped: defaultdict[str, list[Buckets]] = defaultdict(list)
    for labels, found in buckets.items():
        grouped[_service_of(labels)].append(found)
    return {service: _sum_buckets(found) for service, found in grouped.items()}


def _service_rows(
    after: Scrape, rates: _Rates | None, broker: BrokerInfo | None
) -> tuple[tuple[ServiceRow, ...] | None, ServiceRow | None]:
    if (broker is not None and broker.mode == "relay") or not any(
        after.declares(metric) for metric in PER_SERVICE
    ):
        return None, None
    outcomes: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    latency: dict[str, Buckets] = {}
    queue_wait: dict[str, Buckets] = {}
    if rates is not None:
        for labels, rate in rates.counter(REQUESTS).items():
            found = dict(labels)
            outcomes[found.get("service", "")][found.get("outcome", "")] += rate
        latency = _per_service(rates.buckets(REQUEST_DURATION))
        queue_wait = _per_service(rates.buckets(QUEUE_WAIT))
    levels: dict[str, defaultdict[str, float]] = {}
    for gauge in GAUGES:
        if after.declares(gauge):
            levels[gauge] = defaultdict(float)
            for labels, value in after.series(gauge).items():
                levels[gauge][_service_of(labels)] += value

    def row(name: str, services: Sequence[str]) -> ServiceRow:
        """The row named ``name`` of these services together."""
        outcome_rates = None
        if rates is not None:
            outcome_rates = dict.fromkeys(OUTCOMES, 0.0)
            for service in services:
                for outcome, rate in outcomes[service].items():
                    outcome_rates[outcome] = outcome_rates.get(outcome, 0.0) + rate

        def percentiles(buckets: Mapping[str, Buckets]) -> Percentiles:
            if rates is None:
                return Percentiles.of(None)
            return Percentiles.of(_sum_buckets(buckets.get(service, {}) for service in services))

        def level(gauge: str) -> float | None:
            if gauge not in levels:
                return None
            return sum((levels[gauge][service] for service in services), 0.0)

        return ServiceRow(
            service=name,
            outcomes_per_second=outcome_rates,
            latency=percentiles(latency),
            queue_wait=percentiles(queue_wait),
            workers=level(WORKERS),
            worker_credits_free=level(WORKER_CREDITS_FREE),
            queued_requests=level(QUEUED_REQUESTS),
            requests_in_flight=level(REQUESTS_IN_FLIGHT),
        )

    names = _services_seen(after)
    rows = sorted(
        (row(name, [name]) for name in names),
        key=lambda found: (-(found.requests_per_second or 0.0), found.service),
    )
    return tuple(rows), row(TOTAL, names)


def _forwarded(after: Scrape, rates: _Rates | None) -> Mapping[str, Forwarded] | None:
    counted = (REQUESTS_FORWARDED, REPLIES_FORWARDED, RELAY_FRAMES, RELAY_BYTES)
    if not any(after.declares(name) for name in counted):
        return None

    def total(name: str) -> float | None:
        return rates.total(name) if rates is not None and after.declares(name) else None

    def direction(name: str, which: str) -> float | None:
        if rates is None or not after.declares(name):
            return None
        return rates.by(name, "direction").get(which, 0.0)

    messages = {"request": total(REQUESTS_FORWARDED), "reply": total(REPLIES_FORWARDED)}
    return {
        which: Forwarded(
            messages[which], direction(RELAY_FRAMES, which), direction(RELAY_BYTES, which)
        )
        for which in DIRECTIONS
    }


def _by_label(
    after: Scrape, rates: _Rates | None, counter: str, label: str, known: Sequence[str]
) -> Mapping[str, float] | None:
    if rates is None or not after.declares(counter):
        return None
    return {**dict.fromkeys(known, 0.0), **rates.by(counter, label)}


def _json_number(value: float | None) -> float | int | None:
    if value is not None and value.is_integer():
        return int(value)
    return value


def _json_map(values: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if values is None else dict(values)


def _finite(value: Any) -> Any:
    """``value`` with its infinite and NaN numbers, however deep, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
