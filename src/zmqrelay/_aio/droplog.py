"""The broker's log of what it drops and refuses, throttled so that a flood cannot fill a disk.

Nothing is logged where messages pass: the broker counts every drop there already (its
statistics). A task reads those counters every :data:`POLL_INTERVAL` seconds and logs what a
:class:`~zmqrelay._core.throttle.Throttle` lets through: the first drop of a kind at its first
reading, then at most one line per kind every :data:`INTERVAL` seconds, with the count since
the line before; when the broker stops, what was counted since the last line of each kind.
Each line carries its figures as fields (``extra``), for a JSON log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

import anyio

from zmqrelay._aio.curve import Guard
from zmqrelay._core.balancer import Balancer
from zmqrelay._core.throttle import Report, Throttle

INTERVAL = 10.0
"""Seconds between two lines about drops of one kind."""
POLL_INTERVAL = 0.5
"""Seconds between two readings of the counters."""

_broker = logging.getLogger("zmqrelay.broker")
_security = logging.getLogger("zmqrelay.security")


class Kind(NamedTuple):
    """How drops of one kind are logged."""

    logger: logging.Logger
    level: int
    what: str
    """What happened, after a number: ``"3 malformed requests dropped"``."""


WARNING, INFO = logging.WARNING, logging.INFO
KINDS: dict[str, Kind] = {
    "malformed_requests": Kind(_broker, WARNING, "malformed requests dropped"),
    "malformed_replies": Kind(_broker, WARNING, "malformed replies dropped"),
    "protocol_violations": Kind(
        _broker, WARNING, "worker messages dropped: they broke their protocol"
    ),
    "unknown_replies": Kind(_broker, INFO, "replies dropped: their worker holds no such request"),
    "late_replies": Kind(_broker, INFO, "late replies dropped: their request had ended"),
    "unroutable_replies": Kind(_broker, WARNING, "replies dropped: their client is gone"),
    "congested_replies": Kind(_broker, WARNING, "replies dropped: their client's queue was full"),
    "forbidden_requests": Kind(_broker, WARNING, "requests refused by the policy (Forbidden)"),
    "forbidden_workers": Kind(_broker, WARNING, "worker messages refused by the policy"),
    "clients_refused": Kind(_security, WARNING, "client handshakes refused: key not allowed"),
    "workers_refused": Kind(_security, WARNING, "worker handshakes refused: key not allowed"),
    "handshakes_failed": Kind(
        _security, WARNING, "handshakes failed (plain text, garbage, wrong server key, silence)"
    ),
}  # fmt: skip
"""Every kind of drop the broker logs, by the name of its counter."""

Detail = tuple[str, dict[str, object]]
"""Words on the last drop of a kind, and the same as fields."""


async def report(
    counts: Callable[[], Mapping[str, int]], detail: Callable[[str], Detail | None]
) -> None:
    """Read ``counts`` every :data:`POLL_INTERVAL` and log what the throttle lets through.

    ``detail`` says what is known of the last drop of a kind. Runs until cancelled; then
    reads the counters a last time and logs every count not logged yet, interval or not, so
    that nothing goes unsaid (one more line per kind, once).
    """
    interval, poll_interval = INTERVAL, POLL_INTERVAL
    throttle = Throttle(interval)
    try:
        while True:
            totals = counts()
            for line in throttle.read(totals, anyio.current_time()):
                _log(line, totals[line.kind], detail(line.kind), interval)
            await anyio.sleep(poll_interval)
    finally:
        totals, now = counts(), anyio.current_time()
        for line in throttle.read(totals, now) + throttle.flush(now):
            _log(line, totals[line.kind], detail(line.kind), interval)


def _log(line: Report, total: int, detail: Detail | None, interval: float) -> None:
    kind = KINDS[line.kind]
    if line.since is None:
        when = f" (the first; then at most a line every {interval:g} s)"
    else:
        when = f" in {line.since:.1f} s"
    words, fields = detail if detail is not None else ("", {})
    kind.logger.log(
        kind.level,
        "%d %s%s%s",
        line.occurrences,
        kind.what,
        when,
        f"; the last: {words}" if words else "",
        extra={
            "kind": line.kind,
            "count": line.occurrences,
            "total": total,
            "seconds": line.since,
            **fields,
        },
    )


def broker_detail(
    balancer: Balancer | None, guard: Guard | None
) -> Callable[[str], Detail | None]:
    """What a broker knows of the last drop of each kind (its balancer's, its guard's)."""

    def detail(kind: str) -> Detail | None:
        if balancer is not None:
            if kind == "protocol_violations" and balancer.last_violation is not None:
                worker_id, reason = balancer.last_violation
                worker = worker_id.hex()
                return f"worker {worker}: {reason}", {"worker": worker, "reason": reason}
            if kind == "forbidden_requests" and balancer.last_forbidden_request is not None:
                return _forbidden(*balancer.last_forbidden_request, "calling")
            if kind == "forbidden_workers" and balancer.last_forbidden_worker is not None:
                return _forbidden(*balancer.last_forbidden_worker, "serving")
        side = {"clients_refused": "clients", "workers_refused": "workers"}.get(kind)
        if guard is not None and side in guard.last_refused:
            key = guard.last_refused[side].decode("ascii", "replace")
            return f"key {key}", {"key": key}
        return None

    return detail


def _forbidden(key: str | None, service: bytes | None, doing: str) -> Detail:
    words = "a key no longer allowed" if key is None else f"key {key}"
    if service is None:
        return words, {"key": key}
    name = service.decode("utf-8", "backslashreplace") if service else "(default)"
    return f"{words} {doing} {name}", {"key": key, "service": name}
