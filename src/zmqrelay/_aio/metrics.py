"""A broker's Prometheus metrics: a collector read at scrape time, and a ``/metrics`` server.

Imported only when a broker is given ``metrics=``: ``prometheus-client`` is an optional extra
(``zmqrelay[metrics]``). Nothing here runs per message. The broker counts in plain integers
(:mod:`zmqrelay._core.metrics` and its statistics); a scrape turns them into metric families.
The server answers in the event loop that runs the broker, and reads the broker's state
there, between two of its steps, never in the middle of one; the page is written in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from importlib.metadata import version
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.to_thread
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from zmqrelay._core.balancer import Balancer, BalancerStatistics
from zmqrelay._core.metrics import (
    OTHER,
    OUTCOMES,
    Address,
    HistogramSnapshot,
    RequestMetrics,
    ServiceGauges,
    ServiceMetrics,
    label,
)
from zmqrelay._core.relay import BrokerStatistics
from zmqrelay._core.throttle import Throttle
from zmqrelay.errors import EndpointError

if TYPE_CHECKING:
    from zmqrelay._aio.broker import Broker

logger = logging.getLogger("zmqrelay.metrics")

_MAX_REQUEST_HEAD = 8192
"""Bytes of request line and headers a scrape may send; more is refused."""
_READ_TIMEOUT = 5.0
"""Seconds a scraper has to send its request."""
_COLLECT_TIMEOUT = 5.0
"""Seconds a scrape from another thread waits for the broker's event loop."""
_FAILURE_LOG_INTERVAL = 10.0
"""Seconds between two lines about scrapes that failed."""


class BrokerCollector(Collector):
    """The metrics of one broker, read from it at each scrape.

    Made in the broker's event loop. A scrape from another thread (``prometheus_client``'s
    own HTTP server, say) reads the broker in that loop, between two of its steps, and waits
    for it up to :data:`_COLLECT_TIMEOUT` seconds.
    """

    def __init__(self, broker: Broker, balancer: Balancer | None) -> None:
        self._broker = broker
        self._balancer = balancer
        self._requests = None if balancer is None else balancer.metrics
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def describe(self) -> list[Metric]:
        """The families it yields, without samples (for the registry's duplicate check)."""
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        """Every family, with the broker's counts now.

        Raises:
            TimeoutError: called from another thread, and the broker's event loop did not
                answer in time.
        """
        if threading.get_ident() == self._thread:
            return iter(self._read())
        answer: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def read() -> None:
            try:
                answer.set_result(self._read())
            except Exception as exc:  # handed to the scraping thread, raised there
                answer.set_exception(exc)

        self._loop.call_soon_threadsafe(read)
        return iter(answer.result(timeout=_COLLECT_TIMEOUT))

    def _read(self) -> list[Metric]:
        return list(self._families(self._broker.statistics()))

    def _families(self, stats: BrokerStatistics | BalancerStatistics | None) -> Iterator[Metric]:
        broker = self._broker
        info = GaugeMetricFamily(
            "zmqrelay_broker_info",
            "The broker's mode and engine, and zmqrelay's version (value 1).",
            labels=["mode", "engine", "version"],
        )
        if stats is not None:
            engine = broker.engine if broker.mode == "relay" else "python"
            info.add_metric([broker.mode, engine, _VERSION], 1)
        yield info
        if broker.mode == "load-balancing":
            assert stats is None or stats.mode == "load-balancing"
            yield from self._balanced(stats)
        else:
            assert stats is None or stats.mode == "relay"
            yield from _relayed(stats, broker.engine)
        yield from _security(stats)

    def _balanced(self, stats: BalancerStatistics | None) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "zmqrelay_requests",
            "Requests ended, by service and outcome: reply, error (the handler raised), or "
            "the broker's refusal (busy, no_workers, deadline, worker_died, forbidden).",
            labels=["service", "outcome"],
        )
        duration = HistogramMetricFamily(
            "zmqrelay_request_duration_seconds",
            "Time from the broker reading a request to it reading the reply (replies and "
            "error replies).",
            labels=["service"],
        )
        wait = HistogramMetricFamily(
            "zmqrelay_queue_wait_seconds",
            "Time a request waited in the broker for a worker, each time it was sent to one.",
            labels=["service"],
        )
        gauge_families = [
            GaugeMetricFamily(name, text, labels=["service"])
            for name, text in (
                ("zmqrelay_workers", "Workers registered for the service."),
                ("zmqrelay_worker_credits_free", "Requests the service's workers can take now."),
                ("zmqrelay_queued_requests", "Requests waiting for a worker of the service."),
                ("zmqrelay_requests_in_flight", "Requests held by the service's workers."),
            )
        ]
        if stats is not None and self._requests is not None:
            for name, counted in _merged(self._requests):
                for outcome, count in zip(OUTCOMES, counted.outcomes, strict=True):
                    requests.add_metric([name, outcome], count)
                _add_histogram(duration, name, counted.duration.snapshot())
                _add_histogram(wait, name, counted.queue_wait.snapshot())
            assert self._balancer is not None
            for name, gauges in _merged_gauges(self._requests, self._balancer.scheduler.gauges()):
                for family, value in zip(gauge_families, gauges, strict=True):
                    family.add_metric([name], value)
        yield from (requests, duration, wait, *gauge_families)
        yield from _forwarded(stats)
        scheduler = None if stats is None else stats.scheduler
        yield _counter(
            "zmqrelay_messages_dropped",
            "Messages the broker dropped, by reason: malformed (a request in no client "
            "dialect), violation (a worker broke its protocol), unroutable (the client is "
            "gone), congested (the client's queue stayed full), late (a reply after its "
            "request ended), unknown (a reply for a request the worker does not hold).",
            "reason",
            None
            if stats is None or scheduler is None
            else {
                "malformed": stats.malformed_requests,
                "violation": stats.malformed_replies - scheduler.unknown_replies,
                "unroutable": stats.unroutable_replies,
                "congested": stats.congested_replies,
                "late": scheduler.late_replies,
                "unknown": scheduler.unknown_replies,
            },
        )
        singles: tuple[tuple[str, str, int | None], ...] = (
            (
                "zmqrelay_dead_workers",
                "Workers found dead (silent past their liveness).",
                None if scheduler is None else scheduler.dead_workers,
            ),
            (
                "zmqrelay_redelivered_requests",
                "Requests sent again because their worker died.",
                None if scheduler is None else scheduler.redelivered,
            ),
            (
                "zmqrelay_forbidden_workers",
                "Workers told DISCONNECT by the authorisation policy.",
                None if stats is None else stats.forbidden_workers,
            ),
            (
                "zmqrelay_mmi_requests",
                "Service discovery requests (mmi.*) the broker answered itself.",
                None if scheduler is None else scheduler.mmi_requests,
            ),
        )
        for counter_name, text, single in singles:
            counter = CounterMetricFamily(counter_name, text)
            if single is not None:
                counter.add_metric([], single)
            yield counter


def _relayed(stats: BrokerStatistics | None, engine: str) -> Iterator[Metric]:
    held = GaugeMetricFamily(
        "zmqrelay_requests_held", "Requests read from clients that wait for a worker now."
    )
    if stats is not None:
        held.add_metric([], stats.requests_held)
    yield held
    if engine == "python":
        yield from _forwarded(stats)
        yield _counter(
            "zmqrelay_messages_dropped",
            "Messages the broker dropped, by reason: malformed (no envelope), unroutable (the "
            "client is gone), congested (the client's queue stayed full).",
            "reason",
            None
            if stats is None
            else {
                "malformed": (stats.malformed_requests or 0) + (stats.malformed_replies or 0),
                "unroutable": stats.unroutable_replies or 0,
                "congested": stats.congested_replies or 0,
            },
        )
        return
    for unit, text in (("frames", "Frames"), ("bytes", "Bytes")):
        values = (
            None
            if stats is None
            else {
                "request": getattr(stats, f"request_{unit}") or 0,
                "reply": getattr(stats, f"reply_{unit}") or 0,
            }
        )
        yield _counter(
            f"zmqrelay_relay_{unit}",
            f"{text} libzmq's proxy moved: toward workers (request) or clients (reply).",
            "direction",
            values,
        )


def _forwarded(stats: BrokerStatistics | BalancerStatistics | None) -> Iterator[Metric]:
    for name, text, field in (
        ("zmqrelay_requests_forwarded", "Requests handed to workers.", "requests_forwarded"),
        ("zmqrelay_replies_forwarded", "Replies passed to clients.", "replies_forwarded"),
    ):
        family = CounterMetricFamily(name, text)
        if stats is not None:
            family.add_metric([], getattr(stats, field) or 0)
        yield family


def _security(stats: BrokerStatistics | BalancerStatistics | None) -> Iterator[Metric]:
    security = None if stats is None else stats.security
    if stats is not None and security is None:
        return
    yield _counter(
        "zmqrelay_handshakes_refused",
        "CURVE handshakes refused because the peer's key is not allowed, by side.",
        "side",
        None
        if security is None
        else {"client": security.clients_refused, "worker": security.workers_refused},
    )
    failed = CounterMetricFamily(
        "zmqrelay_handshakes_failed",
        "CURVE handshakes that failed otherwise: plain text, garbage, a wrong server key, or "
        "silence past the handshake timeout.",
    )
    if security is not None:
        failed.add_metric([], security.handshakes_failed)
    yield failed


def _counter(name: str, text: str, label_name: str, values: dict[str, int] | None) -> Metric:
    family = CounterMetricFamily(name, text, labels=[label_name])
    for value_label, value in (values or {}).items():
        family.add_metric([value_label], value)
    return family


def _add_histogram(family: HistogramMetricFamily, name: str, snapshot: HistogramSnapshot) -> None:
    buckets = [(_bound(bound), count) for bound, count in snapshot.buckets]
    family.add_metric([name], buckets, snapshot.total)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _merged(requests: RequestMetrics) -> Iterable[tuple[str, ServiceMetrics]]:
    """Counters by label: names that read the same (or fold together) are added up."""
    merged: dict[str, ServiceMetrics] = {}
    for name, counted in requests:
        total = merged.get(name)
        if total is None:
            total = merged[name] = ServiceMetrics()
        total.add(counted)
    return merged.items()


def _merged_gauges(
    requests: RequestMetrics, gauges: Iterable[tuple[bytes, ServiceGauges]]
) -> Iterable[tuple[str, ServiceGauges]]:
    merged: dict[str, ServiceGauges] = {}
    for service, now in gauges:
        name = label(service) if requests.labelled(service) else OTHER
        before = merged.get(name)
        if before is not None:
            now = ServiceGauges(*(a + b for a, b in zip(before, now, strict=True)))
        merged[name] = now
    return merged.items()


_VERSION = version("zmqrelay")


def registry_for(collector: Collector) -> CollectorRegistry:
    """A registry of its own for a broker's endpoint: its metrics and the process's."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


async def serve(
    address: Address,
    registry: CollectorRegistry,
    *,
    task_status: anyio.abc.TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on ``address`` with ``registry``'s metrics until cancelled.

    Reports the address bound (its port, when 0 was asked) through ``task_status``.

    Raises:
        EndpointError: the address cannot be bound.
    """
    try:
        listener = await anyio.create_tcp_listener(
            local_host=address.host, local_port=address.port
        )
    except OSError as exc:
        raise EndpointError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
    async with listener:
        local = listener.extra(anyio.abc.SocketAttribute.local_address)
        assert isinstance(local, tuple)  # a TCP listener's: (host, port, ...)
        bound = Address(str(local[0]), int(local[1]))
        url = f"http://{bound}/metrics"
        logger.info("metrics served on %s", url, extra={"metrics_url": url})
        task_status.started(bound)
        async with anyio.create_task_group() as connections:
            await listener.serve(_handler(registry), connections)


def _handler(registry: CollectorRegistry) -> Callable[[anyio.abc.SocketStream], Awaitable[None]]:
    failures = Throttle(_FAILURE_LOG_INTERVAL)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(_READ_TIMEOUT):
                    head = await _read_head(stream)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
                return
            # The page is written in a thread: the broker's loop only reads the numbers (see
            # BrokerCollector), which is about a quarter of the work.
            answer, failure = await anyio.to_thread.run_sync(_respond, registry, head)
            if failure is not None:
                line = failures.add("scrape_errors", anyio.current_time())
                if line is not None:  # the first at once, then a line per interval at most
                    logger.error(
                        "%d scrape(s) failed: metrics could not be collected",
                        line.occurrences,
                        exc_info=failure,
                        extra={"kind": line.kind, "count": line.occurrences},
                    )
            await stream.send(answer)

    return handle


async def _read_head(stream: anyio.abc.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
        if len(head) > _MAX_REQUEST_HEAD:
            raise ValueError("request head too long")
    return head


def _respond(registry: CollectorRegistry, head: bytes) -> tuple[bytes, Exception | None]:
    """The answer to a request's ``head``, and why the metrics could not be read, if so."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3:
        return _response(400, "Bad Request", b"bad request\n"), None
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return _response(405, "Method Not Allowed", b"GET /metrics\n"), None
    if target.split("?", 1)[0] not in ("/metrics", "/"):
        return _response(404, "Not Found", b"metrics are at /metrics\n"), None
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    try:
        body = encoder(registry)
    except Exception as exc:  # answered with a 500, logged by the caller
        return _response(500, "Internal Server Error", b"metrics could not be collected\n"), exc
    return _response(200, "OK", body, content_type, head_only=method == "HEAD"), None


def _response(
    status: int,
    reason: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body
