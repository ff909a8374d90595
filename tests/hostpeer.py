"""A worker, a client or an application, run inside a host of ``netns.py``.

Each prints ``ready`` once it runs, and on SIGTERM stops and prints one JSON line of what it
counted. Times are ``time.monotonic()``, which every namespace of the machine shares.

``worker``
    Echoes each request's body followed by ``|NAME``. ``--kind sockets``: plain DEALERs, one
    per broker (relay mode); ``--kind dealer``: one plain DEALER connected to every broker;
    ``--kind async``: an ``AsyncWorker`` (``--mode``), given the list of endpoints when there
    are several. Counts what it served, and prints ``taking N T`` when its socket (or the
    ``AsyncWorker``'s link) to the ``N``-th broker takes a request after none for
    ``QUIET`` seconds, or its first (T: when it came, or was seen in the link's counters, which
    are read every ``POLL`` seconds).
``client``
    ``--concurrency`` tasks each send a request, wait for its outcome, pause ``--interval``,
    and again, through one ``AsyncClient`` (given the list of endpoints when there are
    several). Prints ``served T`` after its first reply and after each reply that follows a
    failure, ``failing T`` after each failure that follows a reply, and ``steady T`` once
    ``--steady`` replies in a row have followed a failure (T: when the first of them came).
    Reports every request: when it was sent
    and finished, and its outcome (``ok``, ``misdelivered`` for a reply to another request, or
    the exception's type). With ``--embed FRONTEND BACKEND`` it is an application that also
    runs a ``Broker`` bound there, in the same process. ``--retry`` gives the client the
    default ``RetryPolicy``; ``--heartbeat-interval`` and ``--heartbeat-timeout`` its
    heartbeats. With several endpoints it prints ``link N STATE T`` as its link to the
    ``N``-th broker changes state (read every ``POLL`` seconds).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from typing import Any

import anyio
import zmq

from zmqrelay import AsyncClient, AsyncWorker, Broker, RetryPolicy

QUIET = 0.2
"""Seconds without a request through a socket after which its next one is printed."""
POLL = 0.002
"""Seconds between two readings of a client's or a worker's statistics."""


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker", "client"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--endpoint", action="append", required=True)
    parser.add_argument("--kind", choices=["sockets", "dealer", "async"], default="async")
    parser.add_argument("--mode", choices=["relay", "load-balancing"], default="relay")
    parser.add_argument("--heartbeat-interval", type=float)
    parser.add_argument("--heartbeat-timeout", type=float)
    parser.add_argument("--retry", action="store_true")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--steady", type=int, default=100)
    parser.add_argument("--embed", nargs=2, metavar=("FRONTEND", "BACKEND"))
    arguments: argparse.Namespace = parser.parse_args(argv)
    return arguments


def _one_or_all(endpoints: list[str]) -> Any:
    """One endpoint as a string (every version of the API takes it), several as a list."""
    return endpoints[0] if len(endpoints) == 1 else endpoints


def _report(document: dict[str, Any]) -> None:
    print(json.dumps(document), flush=True)


class _Taking:
    """Prints ``taking N T`` when socket ``N`` takes a request after a quiet spell."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}

    def took(self, index: int, now: float) -> None:
        last = self._last.get(index)
        if last is None or now - last > QUIET:
            print(f"taking {index} {now:.6f}", flush=True)
        self._last[index] = now


def _serve_sockets(arguments: argparse.Namespace) -> None:
    """Plain DEALER echo workers: one per broker, or one connected to every broker."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    if arguments.kind == "dealer":
        dealer = context.socket(zmq.DEALER)
        for endpoint in arguments.endpoint:
            dealer.connect(endpoint)
        sockets = [dealer]
    else:
        sockets = []
        for endpoint in arguments.endpoint:
            sock = context.socket(zmq.DEALER)
            sock.connect(endpoint)
            sockets.append(sock)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    suffix = b"|" + arguments.name.encode()
    served: Counter[int] = Counter()
    taking = _Taking()
    print("ready", flush=True)
    while not stopping:
        for sock, _ in poller.poll(100):
            frames = sock.recv_multipart()
            frames[-1] += suffix
            sock.send_multipart(frames)
            index = sockets.index(sock)
            served[index] += 1
            taking.took(index, time.monotonic())
    for sock in sockets:
        sock.close(linger=0)
    context.term()
    _report({"name": arguments.name, "served": sum(served.values()), "by_socket": served})


async def _serve_async(arguments: argparse.Namespace) -> None:
    suffix = b"|" + arguments.name.encode()
    served = 0

    async def echo(request: bytes) -> bytes:
        nonlocal served
        served += 1
        reply: bytes = request + suffix
        return reply

    worker = AsyncWorker(
        _one_or_all(arguments.endpoint),
        echo,
        concurrency=16,
        mode=arguments.mode,
        heartbeat_interval=arguments.heartbeat_interval or 0.5,
        linger=0,
        drain_timeout=0.5,
    )
    stopping = anyio.Event()

    async def watch_links() -> None:
        taking = _Taking()
        received: dict[int, int] = {}
        while not stopping.is_set():
            for index, link in enumerate(worker.statistics().links):
                if link.requests_received > received.get(index, 0):
                    received[index] = link.requests_received
                    taking.took(index, time.monotonic())
            await anyio.sleep(POLL)

    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(watch_links)
            print("ready", flush=True)
            async for _ in signals:
                stopping.set()
                break
        links = [link._asdict() for link in worker.statistics().links]
    _report({"name": arguments.name, "served": served, "links": links})


async def _load(arguments: argparse.Namespace) -> None:
    timeline: list[tuple[float, float, str]] = []
    stopping = anyio.Event()
    sent = 0
    last = "none"
    streak, streak_start, failed = 0, 0.0, False
    links: list[dict[str, Any]] = []

    async def keep_asking(client: AsyncClient, task: int) -> None:
        nonlocal sent, last, streak, streak_start, failed
        number = 0
        while not stopping.is_set():
            body = f"{arguments.name}:{task}:{number}".encode()
            number += 1
            sent += 1
            started = time.monotonic()
            try:
                reply = await client.request(body)
            except Exception as exc:  # every failure is counted by its type
                outcome = type(exc).__name__
            else:
                outcome = "ok" if reply.partition(b"|")[0] == body else "misdelivered"
            finished = time.monotonic()
            timeline.append((started, finished, outcome))
            state = "served" if outcome == "ok" else "failing"
            if (state == "served") != (last == "served"):
                last = state
                print(f"{state} {finished:.6f}", flush=True)
            if outcome != "ok":
                streak, failed = 0, True
            elif failed:
                streak += 1
                if streak == 1:
                    streak_start = finished
                if streak == arguments.steady:
                    failed = False
                    print(f"steady {streak_start:.6f}", flush=True)
            await anyio.sleep(arguments.interval)

    async def run_until_signalled() -> None:
        nonlocal links
        heartbeats = {
            name: value
            for name, value in (
                ("heartbeat_interval", arguments.heartbeat_interval),
                ("heartbeat_timeout", arguments.heartbeat_timeout),
            )
            if value is not None
        }
        client = AsyncClient(
            _one_or_all(arguments.endpoint),
            timeout=arguments.timeout,
            retry=RetryPolicy() if arguments.retry else None,
            **heartbeats,
        )
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with client, anyio.create_task_group() as tg:
                for task in range(arguments.concurrency):
                    tg.start_soon(keep_asking, client, task)
                if len(arguments.endpoint) > 1:
                    tg.start_soon(watch_links, client)
                print("ready", flush=True)
                async for _ in signals:
                    stopping.set()  # the tasks finish the request each has in flight
                    break
            links = [link._asdict() for link in client.statistics().links]

    async def watch_links(client: AsyncClient) -> None:
        states: dict[int, str] = {}
        while not stopping.is_set():
            for index, link in enumerate(client.statistics().links):
                if states.get(index) != link.state:
                    states[index] = link.state
                    print(f"link {index} {link.state} {time.monotonic():.6f}", flush=True)
            await anyio.sleep(POLL)

    if arguments.embed:
        frontend, backend = arguments.embed
        async with Broker(frontend=frontend, backend=backend, mode=arguments.mode):
            await run_until_signalled()
    else:
        await run_until_signalled()
    outcomes = Counter(outcome for _, _, outcome in timeline)
    longest = max((done - sent for sent, done, _ in timeline), default=0.0)
    _report(
        {
            "name": arguments.name,
            "sent": sent,
            "finished": len(timeline),
            "outcomes": outcomes,
            "longest": longest,
            "timeline": timeline,
            "links": links,
        }
    )


def main(argv: list[str]) -> None:
    arguments = _arguments(argv)
    if arguments.role == "worker" and arguments.kind != "async":
        _serve_sockets(arguments)
    elif arguments.role == "worker":
        anyio.run(_serve_async, arguments)
    else:
        anyio.run(_load, arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
