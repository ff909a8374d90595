"""The processes ``zmqrelay bench`` starts: brokers, echo workers and load clients.

Each runs until its load ends or SIGTERM ends the process. Brokers print ``serving: clients
connect to X, workers to Y`` on standard error once bound; clients print one JSON line with
their counts and write their latencies (nanoseconds, native 64-bit integers) to a file.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import zmq
import zmq.asyncio
import zmq.auth

from zmqrelay._eventloop import run as run_on_event_loop

_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_MORE = int(zmq.RCVMORE)
_MORE_FLAG = int(zmq.SNDMORE)
_STAMP = struct.Struct("<q")
_COUNTER = struct.Struct("=Q")


CURVE_ENV = "ZMQRELAY_BENCH_CURVE"
"""Set to a folder of ``broker``, ``client`` and ``worker`` key pairs, every peer uses CURVE."""
TRACING_ENV = "ZMQRELAY_BENCH_TRACING"
"""Set (to anything), zmqrelay's clients and workers trace every request (see
:func:`_trace_everything`)."""


def _trace_everything() -> None:
    """With :data:`TRACING_ENV` set, the process traces as an application would.

    OpenTelemetry's SDK becomes the global tracer provider, sampling every request, with the
    batching span processor an application would use, whose exporter drops the spans: what is
    measured is what tracing costs the process, not what a collector costs.
    """
    if not os.environ.get(TRACING_ENV):
        return

    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)


def _curve_folder() -> Path | None:
    folder = os.environ.get(CURVE_ENV)
    return Path(folder) if folder else None


def _secure(sock: zmq.Socket[bytes], role: Literal["broker", "client", "worker"]) -> None:
    """Give ``sock`` CURVE options for its role, if the bench uses CURVE."""
    folder = _curve_folder()
    if folder is None:
        return
    broker = zmq.auth.load_certificate(folder / "broker.key_secret")
    if role == "broker":
        sock.curve_server = True
        sock.curve_secretkey = broker[1] or b""
        return
    public, secret = zmq.auth.load_certificate(folder / f"{role}s" / f"{role}.key_secret")
    sock.curve_serverkey = broker[0]
    sock.curve_publickey, sock.curve_secretkey = public, secret or b""


def _curve_options(role: Literal["client", "worker"]) -> dict[str, Any]:
    """AsyncClient's or AsyncWorker's CURVE arguments, if the bench uses CURVE."""
    folder = _curve_folder()
    if folder is None:
        return {}
    return {
        "curve_keys": folder / f"{role}s" / f"{role}.key_secret",
        "curve_server_key": folder / "broker.key",
    }


def _announce(frontend: zmq.Socket[bytes], backend: zmq.Socket[bytes]) -> None:
    front, back = (sock.getsockopt_string(zmq.LAST_ENDPOINT) for sock in (frontend, backend))
    print(f"serving: clients connect to {front}, workers to {back}", file=sys.stderr, flush=True)


def _bound_pair(
    context: zmq.Context[zmq.Socket[bytes]],
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    frontend = context.socket(zmq.ROUTER)
    backend = context.socket(zmq.DEALER)
    _secure(frontend, "broker")
    _secure(backend, "broker")
    frontend.bind("tcp://127.0.0.1:*")
    backend.bind("tcp://127.0.0.1:*")
    return frontend, backend


def serve_proxy() -> None:
    """Run libzmq's proxy between a ROUTER and a DEALER on free loopback ports."""
    frontend, backend = _bound_pair(zmq.Context())
    _announce(frontend, backend)
    zmq.proxy(frontend, backend)  # until SIGTERM ends the process


def serve_python_loop(batch: int = 512) -> None:
    """The best plain synchronous relay we know how to write.

    Poll, then drain each socket up to a batch, moving frames one at a time with integer flags.
    """
    frontend, backend = _bound_pair(zmq.Context())
    _announce(frontend, backend)
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    pairs = ((frontend, backend), (backend, frontend))
    more_flag = int(zmq.SNDMORE)
    while True:
        poller.poll()
        for source, sink in pairs:
            recv, more, send = source.recv, source.get, sink.send
            for _ in range(batch):
                try:
                    frame = recv(_NOBLOCK)
                except zmq.Again:
                    break
                while more(_MORE):
                    send(frame, more_flag)  # blocking, as zmq.proxy does: backpressure
                    frame = recv(_NOBLOCK)
                send(frame, 0)


def serve_python_lb() -> None:
    """The ZeroMQ guide's load-balancing broker (lbbroker), written plainly with pyzmq.

    Workers (REQ) say READY, then answer ``[client, b"", reply]``; requests go to the worker
    that has been ready longest; clients are read only while a worker is free.
    """
    frontend, backend = _bound_pair(zmq.Context())
    backend.close(linger=0)
    backend = frontend.context.socket(zmq.ROUTER)
    _secure(backend, "broker")
    backend.bind("tcp://127.0.0.1:*")
    _announce(frontend, backend)
    ready: deque[bytes] = deque()
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    while True:
        # Clients are read only while a worker is free (flags 0 unregisters).
        poller.register(frontend, zmq.POLLIN if ready else 0)
        events = dict(poller.poll())
        if events.get(backend):
            message = backend.recv_multipart()
            ready.append(message[0])
            if len(message) > 3:  # [worker, b"", client, b"", reply...]
                frontend.send_multipart(message[2:])
        if events.get(frontend) and ready:
            client, empty, *request = frontend.recv_multipart()
            backend.send_multipart([ready.popleft(), b"", client, empty, *request])


def serve_python_lb_lowlevel(batch: int = 512) -> None:
    """The guide's load-balancing broker as :func:`serve_python_lb`, with low-level calls.

    Frames move one at a time with plain integer flags, and each socket is drained in batches
    with non-blocking receives after a poll: the fastest plain Python form we know of it.
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    frontend = context.socket(zmq.ROUTER)
    backend = context.socket(zmq.ROUTER)
    _secure(frontend, "broker")
    _secure(backend, "broker")
    frontend.bind("tcp://127.0.0.1:*")
    backend.bind("tcp://127.0.0.1:*")
    _announce(frontend, backend)
    ready: deque[bytes] = deque()
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    front_recv, back_recv = frontend.recv, backend.recv
    front_send, back_send = frontend.send, backend.send
    while True:
        poller.register(frontend, zmq.POLLIN if ready else 0)
        events = dict(poller.poll())
        if events.get(backend):
            for _ in range(batch):
                try:
                    frame = back_recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                ready.append(frame.bytes)
                frames = [back_recv(_NOBLOCK) for _ in range(2)]  # b"", then client or READY
                if frames[1] != b"READY":  # [worker, b"", client, b"", reply...]
                    front_send(frames[1], _MORE_FLAG)
                    frame = back_recv(_NOBLOCK, copy=False)
                    while frame.more:
                        front_send(frame, _MORE_FLAG)
                        frame = back_recv(_NOBLOCK, copy=False)
                    front_send(frame, 0)
        while ready:
            try:
                frame = front_recv(_NOBLOCK, copy=False)
            except zmq.Again:
                break
            back_send(ready.popleft(), _MORE_FLAG)
            back_send(b"", _MORE_FLAG)
            while frame.more:
                back_send(frame, _MORE_FLAG)
                frame = front_recv(_NOBLOCK, copy=False)
            back_send(frame, 0)


def serve_nats() -> None:
    """NATS (Debian's ``nats-server``) on a free loopback port, replacing this process.

    Clients and workers of a NATS benchmark are nats-py peers (see :func:`serve_echo` and
    :func:`generate_load`): request-reply on one subject, workers in a queue group.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"nats://127.0.0.1:{port}"
    print(f"serving: clients connect to {endpoint}, workers to {endpoint}", file=sys.stderr)
    try:
        os.execvp("nats-server", ["nats-server", "-a", "127.0.0.1", "-p", str(port)])
    except FileNotFoundError:
        sys.exit("the nats broker needs nats-server on the PATH (Debian: apt install nats-server)")


def serve_majortomo() -> None:
    """The majortomo package's Majordomo broker (one ROUTER for clients and workers alike)."""
    try:
        from majortomo.broker import Broker as MajortomoBroker
    except ImportError:
        sys.exit("the majortomo broker needs majortomo (pip install majortomo six)")
    with socket.socket() as probe:  # majortomo binds what it is given: find a free port
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    broker = MajortomoBroker(bind=endpoint, zmq_context=zmq.Context())
    # Announced before run() binds it: peers that connect first are retried by libzmq.
    print(f"serving: clients connect to {endpoint}, workers to {endpoint}", file=sys.stderr)
    broker.run()  # type: ignore[no-untyped-call]  # majortomo is not typed


# Majordomo, majortomo's variant (the one majortomo's broker speaks too): every message starts
# with an empty frame, then the header and the command.
MDP_SERVICE = b"echo"
_MDP_READY = [b"", b"MDPW02", b"\x01", MDP_SERVICE]
_MDP_HEARTBEAT = [b"", b"MDPW02", b"\x05"]
_MDP_REQUEST, _MDP_FINAL = b"\x02", b"\x04"
_MDP_CLIENT = [b"", b"MDPC02", b"\x02", MDP_SERVICE]


def _serve_mdp_echo(endpoints: Sequence[str], work: float, sockets: int) -> None:
    """Plain synchronous Majordomo workers, ``sockets`` per broker, polled in one process.

    Each takes one request at a time, and heartbeats when it has sent nothing for a second.
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    poller = zmq.Poller()
    last_sent: dict[zmq.Socket[bytes], float] = {}
    for sock in _connected(context, zmq.DEALER, endpoints, sockets):
        sock.send_multipart(_MDP_READY)
        poller.register(sock, zmq.POLLIN)
        last_sent[sock] = time.monotonic()
    announce_ready()
    interval = 1.0
    while True:
        ready = poller.poll(int(interval * 1000))
        for sock, _ in ready:
            message = sock.recv_multipart()
            if message[2] != _MDP_REQUEST:
                continue  # a heartbeat (or DISCONNECT, which a bench broker never sends)
            if work:
                time.sleep(work)
            # [b"", MDPW02, REQUEST, client, b"", body...] -> the same, as FINAL
            message[2] = _MDP_FINAL
            sock.send_multipart(message)
            last_sent[sock] = time.monotonic()
        now = time.monotonic()
        for sock, sent in last_sent.items():
            if now - sent >= interval:
                sock.send_multipart(_MDP_HEARTBEAT)
                last_sent[sock] = now


def _connected(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: int,
    endpoints: Sequence[str],
    per_endpoint: int = 1,
) -> list[zmq.Socket[bytes]]:
    """``per_endpoint`` sockets connected to each endpoint: one socket never serves two brokers.

    A DEALER or REQ connected to several brokers sends round-robin, so half of its replies
    would go to a broker that did not send the request.
    """
    made = []
    for endpoint in endpoints:
        for _ in range(per_endpoint):
            sock = context.socket(kind)
            _secure(sock, "worker")
            sock.connect(endpoint)
            made.append(sock)
    return made


def _echo_in_threads(socks: Sequence[zmq.Socket[bytes]]) -> None:
    """Echo every message of each socket in libzmq (a proxy whose two sides are one socket)."""
    threads = [
        threading.Thread(target=zmq.proxy, args=(sock, sock), daemon=True) for sock in socks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:  # until SIGTERM ends the process
        thread.join()


def _serve_guide_c(endpoints: Sequence[str], sockets: int) -> None:
    """``sockets`` workers per broker speaking as the guide's REQ workers do, echoed by libzmq.

    A REQ socket cannot be echoed by a proxy, but a DEALER that sends ``[b"", READY]`` first
    and echoes ``[b"", reply-to, b"", body...]`` whole is, on the wire, the same worker: the
    broker sees ``[worker, b"", READY]`` and then ``[worker, b"", reply-to, b"", body...]``,
    and gives it one request at a time, as it would a REQ worker.
    """
    socks = _connected(zmq.Context(), zmq.DEALER, endpoints, sockets)
    for sock in socks:
        sock.send_multipart([b"", b"READY"])
    announce_ready()
    _echo_in_threads(socks)


def _serve_guide(sock: zmq.Socket[bytes], work: float) -> None:
    """The guide's REQ worker: READY, then echo each request."""
    sock.send(b"READY")
    while True:
        message = sock.recv_multipart()
        if work:
            time.sleep(work)
        sock.send_multipart(message)


def _serve_sync(socks: Sequence[zmq.Socket[bytes]], work: float) -> None:
    """A plain DEALER loop echoing each request, over one socket per broker."""
    if len(socks) == 1:
        recv, send = socks[0].recv_multipart, socks[0].send_multipart
        while True:
            message = recv()
            if work:
                time.sleep(work)
            send(message)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            message = sock.recv_multipart()
            if work:
                time.sleep(work)
            sock.send_multipart(message)


def serve_echo(
    kind: str, endpoint: str, concurrency: int, work: float = 0.0, sockets: int = 1
) -> None:
    """An echo worker taking ``work`` seconds per request.

    ``c`` (libzmq reflects every message; no work), ``sync`` (a plain DEALER loop), ``guide``
    (the guide's REQ worker, for load-balancing brokers), ``guide-c`` (``sockets`` workers on
    the guide's wire, echoed by libzmq; no work), ``async`` (an AsyncWorker), ``async-lb``
    (an AsyncWorker in load-balancing mode), ``mdp`` (``sockets`` plain Majordomo workers of
    the ``echo`` service) and ``async-mdp`` (an AsyncWorker speaking Majordomo).

    ``endpoint`` may list several brokers' backends, separated by commas: the plain workers
    then have a socket (or ``sockets``) per broker, the AsyncWorker is given the list.
    """
    endpoints = endpoint.split(",")
    if kind == "guide":
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        first, *others = _connected(context, zmq.REQ, endpoints)
        announce_ready()
        for sock in others:
            threading.Thread(target=_serve_guide, args=(sock, work), daemon=True).start()
        _serve_guide(first, work)
    elif kind == "c":
        socks = _connected(zmq.Context(), zmq.DEALER, endpoints)
        announce_ready()
        _echo_in_threads(socks)
    elif kind == "sync":
        socks = _connected(zmq.Context(), zmq.DEALER, endpoints)
        announce_ready()
        _serve_sync(socks, work)
    elif kind == "guide-c":
        _serve_guide_c(endpoints, sockets)
    elif kind == "mdp":
        _serve_mdp_echo(endpoints, work, sockets)
    elif kind in ("async", "async-lb", "async-mdp"):
        run_on_event_loop(_async_echo, endpoints, concurrency, work, kind)
    elif kind == "nats":
        run_on_event_loop(_nats_echo, endpoint, work)
    else:
        raise ValueError(f"unknown worker kind {kind!r}")


async def _async_echo(endpoints: Sequence[str], concurrency: int, work: float, kind: str) -> None:
    from zmqrelay import AsyncWorker

    # Several brokers: one AsyncWorker serving them all (issue 15, part 1).
    endpoint: Any = endpoints[0] if len(endpoints) == 1 else list(endpoints)

    _trace_everything()

    async def echo(frames: list[bytes]) -> list[bytes]:
        if work:
            await anyio.sleep(work)
        return frames

    if kind == "async-mdp":
        worker = AsyncWorker(
            endpoint,
            echo,
            frames=True,
            service=MDP_SERVICE,
            protocol="majortomo",
            **_curve_options("worker"),
        )
    else:
        mode: Literal["relay", "load-balancing"] = (
            "load-balancing" if kind == "async-lb" else "relay"
        )
        worker = AsyncWorker(
            endpoint,
            echo,
            frames=True,
            concurrency=concurrency,
            mode=mode,
            **_curve_options("worker"),
        )
    async with anyio.create_task_group() as task_group:
        await task_group.start(worker.run)
        announce_ready()


NATS_SUBJECT = "echo"


async def _quiet(error: Exception) -> None:
    """NATS peers of a benchmark see their server stop at the end: nothing to report."""


async def _nats_echo(endpoint: str, work: float) -> None:
    """A nats-py responder in the ``workers`` queue group, echoing each request."""
    import nats  # type: ignore[import-not-found,unused-ignore]  # optional: the NATS bench only

    connection = await nats.connect(endpoint, error_cb=_quiet, allow_reconnect=False)

    async def echo(message: Any) -> None:
        if work:
            await anyio.sleep(work)
        await message.respond(message.data)

    await connection.subscribe(NATS_SUBJECT, queue="workers", cb=echo)
    await connection.flush()  # the server has the subscription
    announce_ready()
    await anyio.sleep_forever()


def generate_load(
    kind: str,
    endpoint: str,
    window: int,
    size: int,
    warmup: float,
    duration: float,
    latencies_path: str,
) -> None:
    """Keep ``window`` requests in flight for ``warmup + duration`` seconds.

    Prints ``{"requests": n, "cpu_seconds": s}`` for the measured window, and writes the
    round-trip time of each request answered in it to ``latencies_path``.
    """
    padding = b"x" * max(0, size - _STAMP.size)
    measured = _Window.agreed(warmup, duration)
    if kind == "sync":
        counted, latencies, cpu = _sync_load(endpoint, window, padding, measured)
    elif kind == "mdp":
        counted, latencies, cpu = _mdp_load(endpoint, window, padding, measured)
    elif kind == "async":
        counted, latencies, cpu = run_on_event_loop(
            _async_load, endpoint, window, padding, measured
        )
    elif kind == "async-batch":
        counted, latencies, cpu = run_on_event_loop(
            _async_batch_load, endpoint, window, padding, measured
        )
    elif kind == "c":
        counted, latencies, cpu = _c_load(endpoint, window, padding, measured)
    elif kind == "nats":
        counted, latencies, cpu = run_on_event_loop(
            _nats_load, endpoint, window, padding, measured
        )
    else:
        raise ValueError(f"unknown client kind {kind!r}")
    with open(latencies_path, "wb") as out:
        latencies.tofile(out)
    print(json.dumps({"requests": counted, "cpu_seconds": cpu}), flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


SYNC_ENV = "ZMQRELAY_BENCH_SYNC"
"""Set by ``zmqrelay bench`` for its peers: each says ``ready`` on a line of its own once set up,
and a load client then reads the measured window, ``OPENS CLOSES`` in ``perf_counter_ns``
(the system's monotonic clock, the same in every process), from its standard input."""

READY = "ready"


def announce_ready() -> None:
    """Tell the bench (when it asked, see :data:`SYNC_ENV`) that this peer is set up."""
    if os.environ.get(SYNC_ENV):
        print(READY, flush=True)


class _Window:
    """A load client's measured window: the latency of each reply in it, and the CPU used."""

    def __init__(self, opens: int, closes: int) -> None:
        self.opens, self.closes = opens, closes
        self.latencies: array.array[int] = array.array("q")
        self._cpu_start: float | None = None

    @classmethod
    def starting_in(cls, warmup: float, duration: float) -> _Window:
        """The window that opens ``warmup`` seconds from now and lasts ``duration``."""
        opens = time.perf_counter_ns() + int(warmup * 1e9)
        return cls(opens, opens + int(duration * 1e9))

    @classmethod
    def agreed(cls, warmup: float, duration: float) -> _Window:
        """The window the bench chose for every party, once this client is set up.

        Run by ``zmqrelay bench``, a client says it is ready and waits for the window, so that
        the broker's and the workers' CPU is read over the very window the clients count
        replies in, however long each process took to start. Run alone, it opens after
        ``warmup``.
        """
        if not os.environ.get(SYNC_ENV):
            return cls.starting_in(warmup, duration)
        announce_ready()
        opens, closes = (int(field) for field in sys.stdin.readline().split())
        return cls(opens, closes)

    def record(self, now: int, stamp: bytes) -> None:
        """A reply came at ``now`` for the request sent at the time packed in ``stamp``."""
        if now >= self.opens:
            if self._cpu_start is None:
                self._cpu_start = _cpu()
            self.latencies.append(now - _STAMP.unpack_from(stamp)[0])

    def result(self) -> tuple[int, array.array[int], float]:
        """Replies counted, their latencies, and the CPU seconds used meanwhile."""
        cpu = _cpu() - (self._cpu_start if self._cpu_start is not None else _cpu())
        return len(self.latencies), self.latencies, cpu


def _sleep_until(instant: int) -> None:
    """Sleep until ``perf_counter_ns()`` reaches ``instant``."""
    time.sleep(max(0.0, (instant - time.perf_counter_ns()) / 1e9))


def _sync_load(
    endpoint: str, window: int, padding: bytes, measured: _Window
) -> tuple[int, array.array[int], float]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    _secure(sock, "client")
    sock.connect(endpoint)
    clock, pack = time.perf_counter_ns, _STAMP.pack
    recv, send = sock.recv_multipart, sock.send_multipart
    for _ in range(window):
        send([b"", pack(clock()) + padding])
    while True:
        reply = recv()
        now = clock()
        if now >= measured.closes:
            break
        measured.record(now, reply[-1])
        send([b"", pack(now) + padding])
    result = measured.result()
    sock.close(linger=0)
    context.term()
    return result


def _c_load(
    endpoint: str, window: int, padding: bytes, measured: _Window
) -> tuple[int, array.array[int], float]:
    """A client whose every reply libzmq sends back at once as its next request.

    It costs the least a client can on the machine the broker shares, so the broker, not the
    client, is what a benchmark measures. It counts replies through the proxy's statistics and
    measures no latency.
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    _secure(sock, "client")
    sock.connect(endpoint)
    steering, control = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    steering.bind("inproc://steering")
    control.connect("inproc://steering")
    for _ in range(window):
        sock.send_multipart([b"", _STAMP.pack(time.perf_counter_ns()) + padding])
    echo = threading.Thread(target=zmq.proxy_steerable, args=(sock, sock, None, steering))
    echo.start()

    def replies() -> int:
        control.send(b"STATISTICS")
        frames_in = _COUNTER.unpack(control.recv_multipart()[0])[0]
        return int(frames_in) // 2  # each reply is [b"", body]

    _sleep_until(measured.opens)
    first, cpu = replies(), _cpu()
    _sleep_until(measured.closes)
    counted, cpu = replies() - first, _cpu() - cpu
    control.send(b"TERMINATE")
    echo.join()
    for each in (sock, steering, control):
        each.close(linger=0)
    context.term()
    return counted, array.array("q"), cpu


def _mdp_load(
    endpoint: str, window: int, padding: bytes, measured: _Window
) -> tuple[int, array.array[int], float]:
    """Majordomo clients have one request in flight each: ``window`` sockets, polled."""
    context = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for _ in range(window):
        sock = context.socket(zmq.DEALER)
        _secure(sock, "client")
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    clock, pack = time.perf_counter_ns, _STAMP.pack
    for sock in socks:
        sock.send_multipart([*_MDP_CLIENT, pack(clock()) + padding])
    while True:
        ready = poller.poll(max(1, (measured.closes - clock()) // 1_000_000))
        now = clock()
        if now >= measured.closes:
            break
        for sock, _ in ready:
            reply = sock.recv_multipart()  # [b"", MDPC02, FINAL, body]
            measured.record(now, reply[-1])
            sock.send_multipart([*_MDP_CLIENT, pack(clock()) + padding])
    result = measured.result()
    for sock in socks:
        sock.close(linger=0)
    context.term()
    return result


async def _async_load(
    endpoint: str, window: int, padding: bytes, measured: _Window
) -> tuple[int, array.array[int], float]:
    from zmqrelay import AsyncClient

    _trace_everything()
    clock, pack = time.perf_counter_ns, _STAMP.pack

    async def keep_one_in_flight(client: AsyncClient) -> None:
        request = client.request
        while True:
            reply = await request(pack(clock()) + padding)
            now = clock()
            if now >= measured.closes:
                return
            measured.record(now, reply)

    client = AsyncClient(endpoint, timeout=30, **_curve_options("client"))
    async with client, anyio.create_task_group() as tg:
        for _ in range(window):
            tg.start_soon(keep_one_in_flight, client)
    return measured.result()


async def _async_batch_load(
    endpoint: str, window: int, padding: bytes, measured: _Window
) -> tuple[int, array.array[int], float]:
    """As :func:`_async_load`, through the batch API: one endless batch, ``window`` in flight."""
    from zmqrelay import AsyncClient

    _trace_everything()
    clock, pack = time.perf_counter_ns, _STAMP.pack

    def bodies() -> Iterator[bytes]:
        while True:
            yield pack(clock()) + padding

    client = AsyncClient(endpoint, timeout=30, **_curve_options("client"))
    async with client, contextlib.aclosing(client.replies(bodies(), window=window)) as replies:
        async for _, reply in replies:
            now = clock()
            if now >= measured.closes:
                break
            if isinstance(reply, Exception):
                raise reply
            measured.record(now, reply)
    return measured.result()


async def _nats_load(
    endpoint: str, window: int, padding: bytes, measured: _Window
) -> tuple[int, array.array[int], float]:
    """nats-py requests, ``window`` tasks each keeping one in flight (as :func:`_async_load`)."""
    import nats  # type: ignore[import-not-found,unused-ignore]  # optional: the NATS bench only

    clock, pack = time.perf_counter_ns, _STAMP.pack
    connection = await nats.connect(endpoint, error_cb=_quiet, allow_reconnect=False)

    async def keep_one_in_flight() -> None:
        request = connection.request
        while True:
            try:
                reply = await request(NATS_SUBJECT, pack(clock()) + padding, timeout=30)
            except nats.errors.NoRespondersError:  # the workers have not subscribed yet
                await anyio.sleep(0.01)
                continue
            now = clock()
            if now >= measured.closes:
                return
            measured.record(now, reply.data)

    async with anyio.create_task_group() as tg:
        for _ in range(window):
            tg.start_soon(keep_one_in_flight)
    await connection.close()
    return measured.result()


def read_latencies(paths: Sequence[str]) -> list[int]:
    """Every latency the clients wrote, sorted."""
    merged: array.array[int] = array.array("q")
    for path in paths:
        with open(path, "rb") as source:
            merged.frombytes(source.read())
        os.unlink(path)
    return sorted(merged)
