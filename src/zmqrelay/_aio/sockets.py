"""Socket creation, options, binding and closing, and the pump that waits on a socket.

Every socket zmqrelay opens is made here, so options live in one place; its ``zmq`` errors
become zmqrelay's in :mod:`zmqrelay._aio.zmqerrors`.
The hot loops receive and send through a synchronous *shadow* of each ``zmq.asyncio`` socket
with plain integer flags: a non-blocking call on the shadow costs a fraction of an awaited one,
and awaiting is needed only when a socket has nothing to read or cannot take more.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Literal, cast

import anyio
import zmq
import zmq.asyncio

from zmqrelay._aio.zmqerrors import broken, translated
from zmqrelay.errors import ClosedError

NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
EHOSTUNREACH = zmq.EHOSTUNREACH

AsyncSocket = zmq.asyncio.Socket
SyncSocket = zmq.Socket[bytes]

# libzmq's send as pyzmq's compiled backend exposes it: the Python layer above it (routing ids
# of draft sockets, a zero-copy threshold) costs twice the call itself, on every frame relayed.
_send_frame = cast("Callable[[SyncSocket, bytes, int], None]", zmq.backend.Socket.send)


_seeded = False


def seed_routing_ids() -> bool:
    """Make this process's ROUTER sockets hand out routing ids no other process will.

    libzmq numbers the peers of a ROUTER from the C library's ``rand()``, which it never
    seeds: every process hands out ``0x006b8b4567``, ``0x006b8b4568``... in turn. After a
    broker restarts, a reply that a worker sends late, for a client of the broker's previous
    life, then carries a routing id that now names another client, and would reach it.
    Seeding ``rand()`` from the system's randomness, once per process, before the broker's
    sockets exist, makes the ids of each broker's life different. Returns whether it could.
    """
    global _seeded
    if not _seeded:
        try:
            ctypes.CDLL(None).srand(int.from_bytes(os.urandom(4), "little"))
        except Exception:  # no C library to reach (Windows, say): ids stay libzmq's
            return False
        _seeded = True
    return True


def get_context(context: zmq.asyncio.Context | None) -> zmq.asyncio.Context:
    """``context``, or the process-wide asyncio context when it is ``None``."""
    return context if context is not None else zmq.asyncio.Context.instance()


def open_socket(
    context: zmq.asyncio.Context,
    kind: int,
    *,
    routing_id: bytes | None = None,
    router_mandatory: bool = False,
    max_message_size: int | None = None,
    high_water_mark: int | None = None,
    options: Sequence[tuple[int, int | bytes]] = (),
) -> AsyncSocket:
    """A new ``zmq.asyncio`` socket of ``kind`` with zmqrelay's options set (and ``options``).

    Raises:
        BrokenError: the context is terminated.

    """
    try:
        sock = context.socket(kind)
    except zmq.ZMQError as exc:
        raise broken(exc, "opening a socket") from exc
    settings: list[tuple[int, int | bytes]] = list(options)
    if routing_id is not None:
        settings.append((zmq.ROUTING_ID, routing_id))
    if router_mandatory:
        settings.append((zmq.ROUTER_MANDATORY, 1))
    if max_message_size is not None:
        settings.append((zmq.MAXMSGSIZE, max_message_size))
    if high_water_mark is not None:
        settings += [(zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark)]
    try:
        for option, value in settings:
            sock.setsockopt(option, value)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ValueError(f"invalid socket option {option!r}={value!r}: {exc}") from exc
    return sock


def shadow(sock: AsyncSocket) -> SyncSocket:
    """A synchronous handle on the same libzmq socket, for non-blocking calls."""
    return zmq.Socket.shadow(sock.underlying)


def bind(sock: AsyncSocket, endpoint: str) -> str:
    """Bind ``sock`` to ``endpoint`` and return the endpoint it really bound.

    ``tcp://127.0.0.1:*`` and ``tcp://127.0.0.1:0`` pick a free port; the result names it.

    Raises:
        EndpointError: the endpoint is invalid or in use.

    """
    with translated("bind", endpoint):
        sock.bind(endpoint)
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(bound, bytes)
    return bound.decode()


def connect(sock: AsyncSocket, endpoint: str) -> None:
    """Connect ``sock`` to ``endpoint``; the connection itself completes in the background.

    Raises:
        EndpointError: the endpoint is invalid.

    """
    with translated("connect to", endpoint):
        sock.connect(endpoint)


def monitor(sock: AsyncSocket, events: int) -> AsyncSocket:
    """A PAIR socket that receives ``sock``'s monitor ``events``.

    Close it, and call ``sock.disable_monitor()``, when done. Unlike pyzmq's
    ``get_monitor_socket``, whose address is made from the socket's file descriptor, each
    monitor has an address of its own: libzmq releases a monitor's address after
    ``disable_monitor()`` returns, and a new socket may get the same descriptor.
    """
    address = f"inproc://zmqrelay-monitor-{uuid.uuid4().hex}"
    sock.monitor(address, events)
    pair = sock.context.socket(zmq.PAIR)
    pair.connect(address)
    return cast(AsyncSocket, pair)


async def unbind(bound: list[tuple[AsyncSocket, str]], timeout: float = 1.0) -> None:
    """Unbind each socket from its endpoint; return once the endpoints can be bound again.

    Closing a socket does not free its endpoints at once: libzmq closes its socket later, in
    its reaper thread, and a tcp or ipc listener later still, in an I/O thread, so binding the
    same address right after would fail with EADDRINUSE (and an ipc listener closed late
    would remove the file a new one made). ``zmq_unbind`` releases an ``inproc://`` name
    before it returns; for tcp and ipc the socket's monitor reports each listener closed.
    Shielded from cancellation, and bounded by ``timeout``.
    """
    with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
        for sock, endpoint in bound:
            if sock.closed:
                continue
            listening = not endpoint.startswith("inproc://")
            watch = monitor(sock, zmq.EVENT_CLOSED) if listening else None
            try:
                with suppress(zmq.ZMQError):  # not bound (any more): nothing to wait for
                    sock.unbind(endpoint)
                    if watch is not None:
                        await watch.recv_multipart()  # the one listener, closed
            finally:
                if watch is not None:
                    sock.disable_monitor()
                    watch.close(linger=0)


def close(sock: AsyncSocket, linger: float) -> None:
    """Close ``sock``, letting queued messages go out for up to ``linger`` seconds."""
    if not sock.closed:
        sock.close(linger=max(0, round(linger * 1000)))


def recv_message(sock: SyncSocket) -> list[bytes] | None:
    """The next message's frames without waiting, or ``None`` if none is waiting.

    Frames are read one at a time as ``zmq.Frame`` objects, whose ``more`` needs no option
    lookup: far cheaper per message than ``getsockopt(RCVMORE)`` per frame (which builds an
    option enum each time) or pyzmq's ``recv_multipart``.
    """
    recv = sock.recv
    try:
        frame = recv(NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame.bytes]
    while frame.more:
        frame = recv(NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def recv_message_from(sock: SyncSocket) -> tuple[list[bytes], str] | None:
    """As :func:`recv_message`, with the User-Id its sender authenticated as (CURVE: its key)."""
    recv = sock.recv
    try:
        frame = recv(NOBLOCK, copy=False)
    except zmq.Again:
        return None
    user = str(frame.get("User-Id"))
    frames = [frame.bytes]
    while frame.more:
        frame = recv(NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames, user


def send_message(sock: SyncSocket, frames: list[bytes]) -> bool:
    """Send a message without waiting; false if the socket cannot take it now.

    libzmq accepts or refuses a message as a whole at its first frame, so a refusal never
    leaves part of a message sent.
    """
    send = _send_frame
    last = len(frames) - 1
    try:
        send(sock, frames[0], NOBLOCK_MORE if last else NOBLOCK)
    except zmq.Again:
        return False
    for index in range(1, last):
        send(sock, frames[index], NOBLOCK_MORE)
    if last:
        send(sock, frames[last], NOBLOCK)
    return True


Routed = Literal["sent", "full", "gone"]


def route(sock: SyncSocket, frames: list[bytes]) -> Routed:
    """Send a message through a ROUTER with ROUTER_MANDATORY, without waiting.

    ``"full"``: the peer's queue takes no more now; ``"gone"``: no peer has that routing id.
    """
    try:
        return "sent" if send_message(sock, frames) else "full"
    except zmq.ZMQError as exc:
        if exc.errno != EHOSTUNREACH:
            raise
        return "gone"


def being_cancelled() -> bool:
    """Whether the current task has been asked to stop.

    As opposed to merely seeing a ``CancelledError`` raised by something it awaited.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Readiness:
    """Wait until any of some sockets' descriptors signals, straight on the event loop.

    Cheaper per wait than a ``zmq.asyncio`` poller (no futures per socket, no extra poll). The
    descriptors are edge-triggered: check ``EVENTS`` of every socket before each :meth:`wait`.
    Use only on sockets that nothing else waits on through ``zmq.asyncio``, which registers
    the same descriptors.
    """

    def __init__(self, *socks: SyncSocket) -> None:
        self._fds = [sock.fileno() for sock in socks]
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Readiness:
        for fd in self._fds:
            self._loop.add_reader(fd, self._wake)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for fd in self._fds:
            self._loop.remove_reader(fd)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, until: float | None = None) -> None:
        """Wait for the next signal on any of the descriptors, or until the loop's ``until``."""
        self._waiter = self._loop.create_future()
        timer = None if until is None else self._loop.call_at(until, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


class Pump:
    """Non-blocking I/O on one socket, shared by the tasks of one event loop.

    The socket is used through its synchronous shadow, and the event loop watches its
    descriptor directly: no ``zmq.asyncio`` futures per call. libzmq's descriptor is
    edge-triggered and any call on the socket may consume the edge, so after every call that
    could change the socket's state, :meth:`kick` reads ``EVENTS`` and wakes whoever can now
    proceed: the one receiving task, and the tasks waiting to send. Nothing else may wait on
    the socket through ``zmq.asyncio`` (it would register the same descriptor).
    """

    def __init__(self, sock: AsyncSocket, name: str = "a socket") -> None:
        self.sync = shadow(sock)
        self.name = name  # for errors: "the client's socket"
        self._events = self.sync.getsockopt
        self._fd = self.sync.fileno()
        self._loop = asyncio.get_running_loop()
        self._readable: asyncio.Future[None] | None = None
        self._writable: list[asyncio.Future[None]] = []
        self._open = False
        self._kick_scheduled = False

    def __enter__(self) -> Pump:
        self._loop.add_reader(self._fd, self.kick)
        self._open = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._open = False
        self._loop.remove_reader(self._fd)
        for waiter in self._writable:
            if not waiter.done():
                waiter.set_exception(ClosedError("the socket closed before the message was sent"))
        self._writable.clear()

    def kick(self) -> None:
        """Wake the tasks that can proceed now."""
        events = cast(int, self._events(_EVENTS))
        if events & POLLIN and self._readable is not None and not self._readable.done():
            self._readable.set_result(None)
        if events & POLLOUT and self._writable:
            for waiter in self._writable:
                if not waiter.done():
                    waiter.set_result(None)
            self._writable.clear()

    async def readable(self) -> None:
        """Return once the socket has a message to read (at once if it has one already)."""
        self.kick()  # also wakes senders that a receive may have unblocked
        if cast(int, self._events(_EVENTS)) & POLLIN:
            return
        self._readable = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._readable = None

    def try_send(self, frames: list[bytes]) -> bool:
        """Send ``frames`` if the socket takes them now; false if it cannot (EAGAIN).

        Raises:
            ClosedError: the pump is closed.
            BrokenError: the socket failed.
        """
        if not self._open:
            raise ClosedError("the socket is closed")
        try:
            sent = send_message(self.sync, frames)
        except zmq.ZMQError as exc:
            raise broken(exc, self.name) from exc
        if sent:
            self._kick_soon()
        return sent

    def _kick_soon(self) -> None:
        # A call on the socket may have consumed the edge someone waits for: look again, once
        # per loop iteration however many calls the tasks make in it.
        if (self._readable is not None or self._writable) and not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._scheduled_kick)

    def _scheduled_kick(self) -> None:
        self._kick_scheduled = False
        if self._open:
            self.kick()

    async def send(self, frames: list[bytes]) -> None:
        """Send ``frames``, waiting while the socket cannot take them.

        Only for sockets whose POLLOUT means "this message fits" (DEALER, REQ, PUSH...): on a
        ROUTER it means "some peer has room", and a send to a full peer would fail again.

        Raises:
            ClosedError: the pump closed (its socket is closing) while waiting.
        """
        while not self.try_send(frames):
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._writable.append(waiter)
            self.kick()  # it may have become writable since the attempt
            await waiter

    def try_recv(self) -> list[bytes] | None:
        """The next message's frames, or ``None`` if none is waiting.

        Raises:
            ClosedError: the pump is closed.
            BrokenError: the socket failed.
        """
        if not self._open:
            raise ClosedError("the socket is closed")
        try:
            frames = recv_message(self.sync)
        except zmq.ZMQError as exc:
            raise broken(exc, self.name) from exc
        self._kick_soon()
        return frames
