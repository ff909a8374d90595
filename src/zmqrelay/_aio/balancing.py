"""Load-balancing mode's socket loop: drain both sockets, feed the balancer, send what it says.

Every decision is the pure :class:`~zmqrelay._core.balancer.Balancer`'s. One task serves both
ROUTER sockets: it reads each in batches without waiting, feeds every message to the balancer
with the time, lets the balancer's time pass when it is due, sends the balancer's outboxes
(reporting back each send that fails), and waits for either socket or the next deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._core.balancer import Balancer

Name = Callable[[str], str | None]
"""From a message's User-Id to the name of its sender's key, if that key is allowed now."""
Names = tuple[Name, Name]
"""The clients' and the workers'."""
Spans = Callable[[], None]
"""Turns the waits the balancer recorded into spans (a tracing broker)."""


async def serve(
    balancer: Balancer,
    frontend: sockets.AsyncSocket,
    backend: sockets.AsyncSocket,
    *,
    batch_size: int,
    intake: bool = True,
    names: Names | None = None,
    spans: Spans | None = None,
) -> None:
    """Serve ``balancer`` on the two ROUTER sockets until cancelled.

    With ``intake`` false (a broker draining), take no new requests, and return once no
    request is pending. A secured balancer takes each message with its sender's key name:
    ``names`` turn the User-Id of a client's and of a worker's message into it. ``spans``
    turns what the balancer recorded of traced requests into spans, once per pass.
    """
    client_name, worker_name = names if names is not None else (None, None)
    loop = asyncio.get_running_loop()
    front, back = sockets.shadow(frontend), sockets.shadow(backend)
    front_events, back_events = front.getsockopt, back.getsockopt
    batch = range(batch_size)
    async with sockets.Readiness(front, back) as readiness:
        while True:
            now = loop.time()
            full = _drain(
                back, balancer.from_worker, worker_name, balancer, front, back, batch, now
            )
            if intake:
                full = (
                    _drain(
                        front, balancer.from_client, client_name, balancer, front, back, batch, now
                    )
                    or full
                )
            wake = balancer.next_wakeup()
            if wake is not None and wake <= now:
                balancer.tick(now)
                _send(balancer, front, back, now)
                wake = balancer.next_wakeup()
            if spans is not None:
                spans()
            if not intake and not balancer.pending:
                return
            if full:
                await checkpoint()  # let other tasks run between full batches
                continue
            # The descriptors are edge-triggered, and reading EVENTS clears their edge: wait
            # only if nothing is ready by now, or a wake-up would be lost. The frontend's is
            # read even while draining, else its signal would wake this loop again and again.
            ready = int(back_events(zmq.EVENTS)) & sockets.POLLIN
            front_ready = int(front_events(zmq.EVENTS)) & sockets.POLLIN
            if ready or (intake and front_ready):
                continue
            await readiness.wait(until=wake)


def _drain(
    sock: sockets.SyncSocket,
    feed: Callable[[list[bytes], float, str | None], None],
    name: Name | None,
    balancer: Balancer,
    front: sockets.SyncSocket,
    back: sockets.SyncSocket,
    batch: range,
    now: float,
) -> bool:
    """Feed up to a batch of messages, then send what they made the balancer say.

    Returns true when a whole batch came (there may be more). What the balancer says goes out
    once per batch, or at once when it says so (:attr:`Balancer.send_now`).
    """
    to_clients, to_workers = balancer.to_clients, balancer.to_workers
    whole = True
    if name is None:
        recv = sockets.recv_message
        for _ in batch:
            frames = recv(sock)
            if frames is None:
                whole = False
                break
            feed(frames, now, None)
            if balancer.send_now:
                _send(balancer, front, back, now)
    else:
        recv_from = sockets.recv_message_from
        for _ in batch:
            received = recv_from(sock)
            if received is None:
                whole = False
                break
            feed(received[0], now, name(received[1]))
            if balancer.send_now:
                _send(balancer, front, back, now)
    if to_workers or to_clients:
        _send(balancer, front, back, now)
    return whole


def _send(
    balancer: Balancer, front: sockets.SyncSocket, back: sockets.SyncSocket, now: float
) -> None:
    """Send both outboxes; a failed send is fed back, and may fill the outboxes again.

    On a failure, what was not yet handed to the socket goes back to the outbox before the
    balancer hears of it: the balancer knows which requests never left.
    """
    route = sockets.route
    to_clients, to_workers = balancer.to_clients, balancer.to_workers
    while to_workers or to_clients:
        messages = to_workers.copy()
        to_workers.clear()
        for index, (message, token) in enumerate(messages):
            routed = route(back, message)
            if routed != "sent":
                to_workers[:0] = messages[index + 1 :]
                balancer.worker_unreachable(message[0], routed, token, now)
                break
        replies = to_clients.copy()
        to_clients.clear()
        for index, (message, stream) in enumerate(replies):
            routed = route(front, message)
            if routed != "sent":
                to_clients[:0] = replies[index + 1 :]
                balancer.client_unreachable(message, routed, stream, now)
                break
