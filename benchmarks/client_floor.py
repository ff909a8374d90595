"""The floor of an awaitable client, measured against the sync client and AsyncClient.

One relay broker (libzmq engine) and two C echo workers stay up while load clients take turns,
interleaved, each for ``--warmup`` then ``--duration`` seconds with ``--window`` requests in
flight:

- ``sync``: ``zmqrelay bench``'s hand-written pipelined pyzmq DEALER loop;
- ``floor``: the least an awaitable asyncio client does: one ``zmq.asyncio`` DEALER, a plain
  asyncio future per request, request ids in a dict, one receive task, ``window`` tasks each
  awaiting one request at a time;
- ``floor-drain``: the same, its receive task draining every waiting reply per wake-up with
  ``NOBLOCK`` on the socket's synchronous shadow, and sends made there too (what a careful
  hand-written asyncio client does);
- ``async``: ``zmqrelay bench``'s :class:`~zmqrelay.AsyncClient` load (``window`` tasks).

Prints each run's client CPU µs per request and throughput, then the medians and the ratios
to ``sync``. Run from a checkout::

    python benchmarks/client_floor.py --rounds 3 --pin
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import cast

import zmq
import zmq.asyncio

from zmqrelay._bench_peers import _STAMP, _Window
from zmqrelay.bench import _READY, _zmqrelay

_ID = struct.Struct("<Q")
KINDS = ("sync", "floor", "floor-drain", "async")


async def _floor_load(
    endpoint: str, window: int, padding: bytes, warmup: float, duration: float, *, drain: bool
) -> tuple[int, float]:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(endpoint)
    loop = asyncio.get_running_loop()
    pending: dict[bytes, asyncio.Future[bytes]] = {}
    measured = _Window.starting_in(warmup, duration)
    clock, pack = time.perf_counter_ns, _STAMP.pack
    ids = iter(range(1 << 62))
    shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)

    # The drain variant watches the descriptor itself. libzmq's descriptor is edge-triggered
    # and a send may consume the edge, so after sends (once per loop pass) EVENTS is read again.
    fd = shadow.fileno()
    readable: list[asyncio.Future[None]] = []
    kick_scheduled = False

    def kick() -> None:
        nonlocal kick_scheduled
        kick_scheduled = False
        if readable and _events(shadow) & zmq.POLLIN and not readable[0].done():
            readable[0].set_result(None)

    async def receive() -> None:
        if not drain:
            while True:
                frames = await sock.recv_multipart()
                waiter = pending.pop(frames[0], None)
                if waiter is not None:
                    waiter.set_result(frames[2])
        recv = shadow.recv_multipart
        loop.add_reader(fd, kick)
        while True:
            if not _events(shadow) & zmq.POLLIN:
                readable.append(loop.create_future())
                await readable[0]
                readable.clear()
            for _ in range(512):
                try:
                    frames = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                waiter = pending.pop(frames[0], None)
                if waiter is not None:
                    waiter.set_result(frames[2])
            else:
                await asyncio.sleep(0)

    async def request(body: bytes) -> bytes:
        nonlocal kick_scheduled
        key = _ID.pack(next(ids))
        waiter: asyncio.Future[bytes] = loop.create_future()
        pending[key] = waiter
        if drain:
            shadow.send_multipart([key, b"", body])
            if readable and not kick_scheduled:
                kick_scheduled = True
                loop.call_soon(kick)
        else:
            await sock.send_multipart([key, b"", body])
        return await waiter

    async def keep_one_in_flight() -> None:
        while True:
            reply = await request(pack(clock()) + padding)
            now = clock()
            if now >= measured.closes:
                return
            measured.record(now, reply)

    receiver = asyncio.create_task(receive())
    await asyncio.gather(*(keep_one_in_flight() for _ in range(window)))
    counted, _, cpu = measured.result()
    receiver.cancel()
    if drain:
        loop.remove_reader(fd)
    sock.close(linger=0)
    context.term()
    return counted, cpu


def _events(sock: zmq.Socket[bytes]) -> int:
    return cast(int, sock.get(zmq.EVENTS))


def _pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def main() -> None:
    """Start the broker and the workers, then run the clients in turn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--pin", action="store_true", help="broker on CPU 0, the rest on others")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one floor client
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    padding = b"x" * max(0, args.size - _STAMP.size)
    if args.client:
        counted, cpu = asyncio.run(
            _floor_load(
                args.endpoint, args.window, padding, args.warmup, args.duration,
                drain=args.client == "floor-drain",
            )
        )  # fmt: skip
        print(json.dumps({"requests": counted, "cpu_seconds": cpu}), flush=True)
        return
    cpus = sorted(os.sched_getaffinity(0))
    broker_cpus = {cpus[0]} if args.pin and len(cpus) > 1 else None
    peer_cpus = set(cpus[1:]) if broker_cpus else None
    started: list[subprocess.Popen[str]] = []
    try:
        broker = subprocess.Popen(
            _zmqrelay(
                "--log-level", "INFO", "broker", "--engine", "libzmq", "--mode", "relay",
                "--drain-timeout", "0",
                "--frontend", "tcp://127.0.0.1:0", "--backend", "tcp://127.0.0.1:0",
            ),
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            preexec_fn=lambda: _pin(broker_cpus),
        )  # fmt: skip
        started.append(broker)
        assert broker.stderr is not None
        for line in broker.stderr:
            found = _READY.search(line)
            if found:
                frontend, backend = found[1], found[2]
                break
        else:
            raise RuntimeError("the broker did not report its endpoints")
        started.extend(
            subprocess.Popen(
                _zmqrelay("bench-peer", "worker", "c", backend, "1", "0.0"),
                text=True,
                preexec_fn=lambda: _pin(peer_cpus),
            )
            for _ in range(2)
        )
        results: dict[str, list[tuple[float, float]]] = {}
        kinds = args.kinds.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                for kind in kinds:
                    common = [str(args.window), str(args.size), str(args.warmup)]
                    if kind.startswith("floor"):
                        command = [
                            sys.executable, __file__, "--client", kind, "--endpoint", frontend,
                            "--window", common[0], "--size", common[1], "--warmup", common[2],
                            "--duration", str(args.duration),
                        ]  # fmt: skip
                    else:
                        command = _zmqrelay(
                            "bench-peer", "client", kind, frontend, *common,
                            str(args.duration), os.path.join(tmp, "latencies"),
                        )  # fmt: skip
                    out = subprocess.run(
                        command, capture_output=True, text=True, check=True,
                        preexec_fn=lambda: _pin(peer_cpus),
                    ).stdout  # fmt: skip
                    counts = json.loads(out.strip().splitlines()[-1])
                    us = counts["cpu_seconds"] / counts["requests"] * 1e6
                    rate = counts["requests"] / args.duration
                    results.setdefault(kind, []).append((us, rate))
                    print(f"round {round_ + 1} {kind:12} {us:6.2f} µs/req {rate / 1e3:.1f}k req/s")
        base = statistics.median(us for us, _ in results["sync"]) if "sync" in results else None
        print("medians:")
        for kind, runs in results.items():
            us = statistics.median(u for u, _ in runs)
            rate = statistics.median(r for _, r in runs)
            low, high = min(u for u, _ in runs), max(u for u, _ in runs)
            ratio = f" {us / base:5.2f}x sync" if base else ""
            print(
                f"  {kind:12} {us:6.2f} µs/req ({low:.2f}-{high:.2f}) {rate / 1000:6.1f}k req/s"
                f"{ratio}"
            )
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
