"""``zmqrelay top``: a running broker's rates, latencies, queues and workers, in the terminal.

It reads the broker's Prometheus metrics endpoint (``zmqrelay broker --metrics-address``): this
module fetches it (urllib), parses it (prometheus_client's parser) and draws (rich) what
:mod:`zmqrelay._core.top` works out. It imports both libraries, which come with the ``top``
extra, so the CLI imports it only when ``zmqrelay top`` runs.

To look at a broker from a test or a script::

    before = scrape(url)
    ...  # traffic
    after = scrape(url)
    view = TopView.from_scrapes(before, after)  # the figures
    print(render_text(before, after, url=url))  # the screen
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from types import FrameType

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from zmqrelay import __version__
from zmqrelay._core.top import Forwarded, Scrape, ServiceRow, TopView
from zmqrelay.errors import ZmqRelayError

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
"""Prometheus's text format: prometheus_client answers OpenMetrics only to those who ask."""


class ScrapeError(ZmqRelayError):
    """The metrics endpoint did not answer, or not with a zmqrelay broker's metrics."""


def fetch(url: str, *, timeout: float) -> str:
    """The text the endpoint serves at ``url``.

    Raises:
        ScrapeError: no answer within ``timeout`` seconds, a refused connection, an HTTP
            error, ...; its message says which, on one line.
    """
    request = urllib.request.Request(
        url, headers={"Accept": ACCEPT, "User-Agent": f"zmqrelay-top/{__version__}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ScrapeError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ScrapeError(f"cannot read {url}: {_why(exc.reason, timeout)}") from None
    except (OSError, http.client.HTTPException) as exc:  # a timeout or a reset while reading
        raise ScrapeError(f"cannot read {url}: {_why(exc, timeout)}") from None
    return body.decode(charset, "replace")


def _why(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def parse(text: str, *, at: float) -> Scrape:
    """The samples of a page of Prometheus's text format, as a scrape taken ``at`` seconds.

    Raises:
        ScrapeError: the text is not in that format.
    """
    samples: list[tuple[str, dict[str, str], float]] = []
    families: list[str] = []
    try:
        for family in text_string_to_metric_families(text):
            families.append(family.name)
            samples.extend((sample.name, sample.labels, sample.value) for sample in family.samples)
    except ValueError as exc:  # what the parser raises for anything it cannot read
        raise ScrapeError(f"not Prometheus's text format: {exc}") from None
    return Scrape.of(at, samples, families)


def scrape(
    url: str, *, timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
) -> Scrape:
    """Fetch and parse the broker's metrics at ``url``, timed by ``clock``.

    The scrape's time is halfway through the fetch.

    Raises:
        ScrapeError: the endpoint did not answer, or served no zmqrelay metrics.
    """
    start = clock()
    text = fetch(url, timeout=timeout)
    found = parse(text, at=(start + clock()) / 2)
    if not found.has_zmqrelay_metrics():
        raise ScrapeError(f"{url} serves no zmqrelay metrics (is it a broker's metrics address?)")
    return found


# -- Drawing ----------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.1f}" if abs(value) < 10 else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def _level(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{prefix}"
    return _rate(value)


def _services_table(rows: tuple[ServiceRow, ...], total: ServiceRow) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    table.add_column("service", no_wrap=True)
    for title in ("req/s", "error/s", "refused/s", "p50", "p90", "p99", "wait p99", "queued"):
        table.add_column(title, justify="right", no_wrap=True)
    for title in ("in flight", "workers", "credits"):
        table.add_column(title, justify="right", no_wrap=True)
    for row in (*rows, total):
        table.add_row(
            row.service,
            _rate(row.requests_per_second),
            _rate(row.errors_per_second),
            _rate(row.refused_per_second),
            *(_seconds(value) for value in row.latency),
            _seconds(row.queue_wait.p99),
            _level(row.queued_requests),
            _level(row.requests_in_flight),
            _level(row.workers),
            _level(row.worker_credits_free),
            style="bold" if row is total else None,
            end_section=row is rows[-1] if rows else False,
        )
    return table


def _forwarded_table(forwarded: dict[str, Forwarded]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    table.add_column("forwarded", no_wrap=True)
    for title in ("messages/s", "frames/s", "bytes/s"):
        table.add_column(title, justify="right", no_wrap=True)
    for direction, rates in forwarded.items():
        table.add_row(
            direction,
            _rate(rates.messages_per_second),
            _rate(rates.frames_per_second),
            _si(rates.bytes_per_second),
        )
    return table


def _per_second(title: str, rates: dict[str, float]) -> Text:
    seen = ", ".join(f"{name} {_rate(rate)}" for name, rate in rates.items() if rate)
    return Text(f"{title}: {seen or 'none'}")


def render(
    view: TopView | None, *, url: str, status: str | None = None, trouble: bool = False
) -> RenderableType:
    """What the screen shows: the broker, its services, what it forwarded and dropped.

    ``status`` is the last line, in red if ``trouble``; ``view`` is None before any scrape.
    """
    header = Text("zmqrelay top", style="bold")
    header.append(f"  {url}", style="cyan")
    parts: list[RenderableType] = [header]
    if view is not None:
        about = []
        if view.broker is not None:
            broker = view.broker
            about.append(
                f"{broker.mode} broker, {broker.engine} engine, zmqrelay {broker.version}"
            )
        if view.seconds is None:
            about.append("rates from the next scrape on")
        else:
            about.append(f"rates over the last {view.seconds:.1f} s")
        parts.append(Text("; ".join(about)))
        if view.services is not None and view.total is not None:
            parts += [Text(), _services_table(view.services, view.total)]
        if view.forwarded is not None:
            parts += [Text(), _forwarded_table(dict(view.forwarded))]
        notes = []
        if view.dropped_per_second is not None:
            notes.append(_per_second("dropped/s", dict(view.dropped_per_second)))
        if view.handshakes_refused_per_second is not None:
            notes.append(
                _per_second("handshakes refused/s", dict(view.handshakes_refused_per_second))
            )
        if view.handshakes_failed_per_second is not None:
            notes.append(Text(f"handshakes failed/s: {_rate(view.handshakes_failed_per_second)}"))
        if notes:
            parts += [Text(), *notes]
    if status is not None:
        parts += [Text(), Text(status, style="bold red" if trouble else "dim")]
    return Group(*parts)


def render_text(before: Scrape, after: Scrape, *, url: str, width: int = 100) -> str:
    """The screen for these two scrapes, as plain text ``width`` columns wide."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    with console.capture() as captured:
        console.print(render(TopView.from_scrapes(before, after), url=url))
    return captured.get()


def make_console() -> Console:
    """A console on standard output; one that is not a terminal is 120 columns wide.

    Rich would make it 80, which squeezes the services table; ``COLUMNS`` still decides.
    """
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


# -- Running ----------------------------------------------------------------------------------


def run_once(
    url: str, *, interval: float, timeout: float, as_json: bool, console: Console
) -> None:
    """Scrape twice, ``interval`` seconds apart, and print the view (or its JSON document).

    Raises:
        ScrapeError: a scrape failed.
    """
    before = scrape(url, timeout=timeout)
    time.sleep(max(0.0, before.at + interval - time.monotonic()))
    after = scrape(url, timeout=timeout)
    view = TopView.from_scrapes(before, after)
    if as_json:
        console.file.write(json.dumps(view.to_json(url), indent=2, allow_nan=False) + "\n")
        console.file.flush()
    else:
        console.print(render(view, url=url))


def run_live(url: str, *, interval: float, timeout: float, console: Console) -> None:
    """Show the view, scraping every ``interval`` seconds, until SIGINT or SIGTERM.

    While the endpoint does not answer, the last view stays and the status line says why. On
    a terminal the view is redrawn in place; elsewhere (a pipe, a file) each is printed after
    the last.
    """
    previous: Scrape | None = None
    view: TopView | None = None
    with suppress(KeyboardInterrupt), _on_screen(console) as show, _sigterm_interrupts():
        due = time.monotonic()
        while True:
            try:
                current = scrape(url, timeout=timeout)
            except ScrapeError as exc:
                since = ""
                if previous is not None:
                    since = f", last answer {time.monotonic() - previous.at:.0f} s ago"
                status, trouble = f"{exc}; retrying every {interval:g} s{since}", True
            else:
                view = TopView.from_scrapes(previous, current)
                previous = current
                now = datetime.now().strftime("%H:%M:%S")
                status, trouble = f"{now}, every {interval:g} s; Ctrl-C quits", False
            show(render(view, url=url, status=status, trouble=trouble))
            due = max(due + interval, time.monotonic())  # late: no catching up in a burst
            time.sleep(max(0.0, due - time.monotonic()))


@contextmanager
def _on_screen(console: Console) -> Iterator[Callable[[RenderableType], None]]:
    """A function that shows a screen: redrawn in place on a terminal, else printed after."""
    if not console.is_terminal:

        def print_next(screen: RenderableType) -> None:
            console.print(screen)
            console.print()

        yield print_next
        return
    with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
        yield lambda screen: live.update(screen, refresh=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the view as Ctrl-C does, so that the terminal gets its cursor back."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
