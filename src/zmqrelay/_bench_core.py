"""``zmqrelay bench-core``: requests per second through the load-balancing core alone.

No sockets, no event loop: a :class:`~zmqrelay._core.balancer.Balancer` is fed the frames a
broker would read, and the frames it would send are turned into the workers' and clients'
answers at once. What it measures is the Python cost of the broker's decisions and codecs per
request, so a regression shows without a rig of processes (which add libzmq's I/O threads and
the event loop's wake-ups on top).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, NamedTuple

from zmqrelay._core import lbwire, mdp, tag
from zmqrelay._core.balancer import Balancer

Peers = Literal["guide", "zmqrelay", "majortomo"]
"""Who talks to the broker: the guide's REQ workers and plain REQ clients; zmqrelay's
workers (credits) and clients (a tag with a timeout); majortomo's Majordomo workers and
clients."""


class CoreResult(NamedTuple):
    """What :func:`run_core_bench` measured."""

    peers: str
    requests: int
    seconds: float

    @property
    def requests_per_second(self) -> float:
        """Requests (and their replies) through the core per second."""
        return self.requests / self.seconds

    @property
    def us_per_request(self) -> float:
        """Microseconds of the core's time per request and its reply."""
        return self.seconds / self.requests * 1e6


def _worker_answer(peers: Peers) -> Callable[[list[bytes]], list[bytes]]:
    """How a worker of ``peers`` answers a request frame list (its id first)."""
    if peers == "guide":
        return lambda frames: frames  # [worker, "", reply-to, "", body]: echoed as it came
    if peers == "zmqrelay":
        # [worker, ZRW2 REQUEST header (reply-to at 5:13), body...]
        return lambda frames: [
            frames[0], *lbwire.encode_reply(frames[1][5:13], tag.Status.OK, frames[2:])
        ]  # fmt: skip
    final = mdp.COMMANDS["majortomo"].final
    # [worker, "", MDPW02, REQUEST, reply-to, "", body...]
    return lambda frames: [frames[0], b"", mdp.WORKER_02, final, *frames[4:]]


def _ready(peers: Peers, worker: bytes, credits: int) -> list[bytes]:
    if peers == "guide":
        return [worker, b"", b"READY"]
    if peers == "zmqrelay":
        return [worker, *lbwire.encode_ready(credits)]  # zmqrelay's clients ask the default
    return [worker, *mdp.encode_ready("majortomo", b"echo")]


def _request(peers: Peers, client: bytes, number: int) -> list[bytes]:
    body = b"x" * 16
    if peers == "guide":
        return [client, b"", body]
    if peers == "zmqrelay":
        return [client, tag.encode(number, timeout=30.0), b"", body]
    return [client, *mdp.encode_request("majortomo", b"echo", [body])]


def run_core_bench(
    peers: Peers = "guide",
    *,
    workers: int = 64,
    window: int = 256,
    requests: int = 100_000,
    metrics: bool = False,
) -> CoreResult:
    """Feed ``requests`` requests through a balancer, ``window`` in flight at a time.

    Workers take one request at a time, except zmqrelay's, which take ``window`` each. With
    ``metrics``, the balancer keeps the per-service counters a metrics endpoint reads.
    """
    balancer = Balancer(first_token=1)
    if metrics:
        balancer.measure()
    answer = _worker_answer(peers)
    now = 0.0
    credits = window if peers == "zmqrelay" else 1
    for number in range(workers):
        balancer.from_worker(_ready(peers, b"W%05d" % number, credits), now)
    balancer.to_workers.clear()
    asked = {
        client: _request(peers, client, number)
        for number, client in enumerate(b"C%05d" % number for number in range(window))
    }
    pending = list(asked.values())
    from_client, from_worker = balancer.from_client, balancer.from_worker
    answered = 0
    started = time.perf_counter()
    to_workers, to_clients = balancer.to_workers, balancer.to_clients
    while answered < requests:
        for frames in pending:
            from_client(frames, now)
        # As the socket loop does: send what the outboxes hold, clear them in place.
        for_workers = to_workers.copy()
        to_workers.clear()
        for message, _ in for_workers:
            from_worker(answer(message), now)
        replies = to_clients.copy()
        to_clients.clear()
        if not replies:
            raise RuntimeError("the core answered nothing: the bench's peers are wrong")
        answered += len(replies)
        pending = [asked[message[0]] for message, _ in replies]
        now += 0.0001
        wake = balancer.next_wakeup()
        if wake is not None and wake <= now:
            balancer.tick(now)
    seconds = time.perf_counter() - started
    return CoreResult(peers, answered, seconds)
