"""Socket creation, options, binding, closing, and the translation of ``zmq`` errors.

Every socket zmqrelay opens is made here, so options and error handling live in one place.
The hot loops receive and send through a synchronous *shadow* of each ``zmq.asyncio`` socket
with plain integer flags: a non-blocking call on the shadow costs a fraction of an awaited one,
and awaiting is needed only when a socket has nothing to read or cannot take more.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from contextlib import contextmanager

import zmq
import zmq.asyncio

from zmqrelay.errors import ClosedError, EndpointError

NOBLOCK = int(zmq.NOBLOCK)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
EHOSTUNREACH = zmq.EHOSTUNREACH

AsyncSocket = zmq.asyncio.Socket
SyncSocket = zmq.Socket[bytes]


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
) -> AsyncSocket:
    """A new ``zmq.asyncio`` socket of ``kind`` with zmqrelay's options set.

    Raises:
        ClosedError: the context is terminated.

    """
    try:
        sock = context.socket(kind)
    except zmq.ZMQError as exc:
        raise ClosedError(f"cannot open a socket: {exc}") from exc
    options: list[tuple[int, int | bytes]] = []
    if routing_id is not None:
        options.append((zmq.ROUTING_ID, routing_id))
    if router_mandatory:
        options.append((zmq.ROUTER_MANDATORY, 1))
    if max_message_size is not None:
        options.append((zmq.MAXMSGSIZE, max_message_size))
    if high_water_mark is not None:
        options += [(zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark)]
    try:
        for option, value in options:
            sock.setsockopt(option, value)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ValueError(f"invalid socket option {option!r}={value!r}: {exc}") from exc
    return sock


def shadow(sock: AsyncSocket) -> SyncSocket:
    """A synchronous handle on the same libzmq socket, for non-blocking calls."""
    return zmq.Socket.shadow(sock.underlying)


@contextmanager
def translated(action: str, endpoint: str) -> Iterator[None]:
    """Turn a ``zmq.ZMQError`` from binding or connecting into an :class:`EndpointError`."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise EndpointError(
            exc.errno or errno.EINVAL, f"cannot {action} {endpoint!r}: {exc.strerror}"
        ) from exc


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


def close(sock: AsyncSocket, linger: float) -> None:
    """Close ``sock``, letting queued messages go out for up to ``linger`` seconds."""
    if not sock.closed:
        sock.close(linger=max(0, round(linger * 1000)))


def rearm(sock: AsyncSocket) -> None:
    """Let ``zmq.asyncio`` see events that calls on the socket's shadow may have consumed.

    libzmq signals readiness on an edge-triggered descriptor, and a send or receive on the
    shadow can swallow the edge a pending ``zmq.asyncio`` future (another task's poll or
    send) waits for. Reading ``EVENTS`` through the asyncio socket makes pyzmq re-dispatch
    them.
    """
    sock.get(zmq.EVENTS)


def being_cancelled() -> bool:
    """Whether the current task has been asked to stop.

    As opposed to merely seeing a ``CancelledError`` raised by something it awaited.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def send(sock: AsyncSocket, sync: SyncSocket, frames: list[bytes]) -> None:
    """Send ``frames`` at once if the socket takes them, else wait until it can.

    Raises:
        ClosedError: the socket was closed (or its context terminated) before it took them.
    """
    try:
        sync.send_multipart(frames, NOBLOCK)
    except zmq.Again:
        try:
            await sock.send_multipart(frames)
        except asyncio.CancelledError:
            # pyzmq cancels the sends still waiting when the socket closes: that is not a
            # cancellation of this task, and must not look like one to the caller.
            if sock.closed and not being_cancelled():
                raise ClosedError("the socket closed before the message was sent") from None
            raise
        except zmq.ZMQError as exc:
            raise ClosedError(f"the socket failed: {exc}") from exc
    except zmq.ZMQError as exc:
        raise ClosedError(f"the socket failed: {exc}") from exc
    else:
        rearm(sock)


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

    async def wait(self) -> None:
        """Wait for the next signal on any of the descriptors."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
