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


async def serve(
    balancer: Balancer,
    frontend: sockets.AsyncSocket,
    backend: sockets.AsyncSocket,
    *,
    batch_size: int,
    intake: bool = True,
) -> None:
    """Serve ``balancer`` on the two ROUTER sockets until cancelled.

    With ``intake`` false (a broker draining), take no new requests, and return once no
    request is pending.
    """
    loop = asyncio.get_running_loop()
    front, back = sockets.shadow(frontend), sockets.shadow(backend)
    front_events, back_events = front.getsockopt, back.getsockopt
    from_client, from_worker = balancer.from_client, balancer.from_worker
    batch = range(batch_size)

    def send(now: float) -> None:
        if balancer.to_workers or balancer.to_clients:
            _send(balancer, front, back, now)

    async with sockets.Readiness(front, back) as readiness:
        while True:
            now = loop.time()
            full = _drain(back, from_worker, send, batch, now)
            if intake:
                full = _drain(front, from_client, send, batch, now) or full
            wake = balancer.next_wakeup()
            if wake is not None and wake <= now:
                balancer.tick(now)
                send(now)
                wake = balancer.next_wakeup()
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
    feed: Callable[[list[bytes], float], None],
    send: Callable[[float], None],
    batch: range,
    now: float,
) -> bool:
    """Feed up to a batch of messages; true when a whole batch came (there may be more).

    What each message makes the balancer say is sent before the next is fed: a send that
    fails then changes how the next message is handled (a part of a streamed reply that met
    a full client queue means the later parts are dropped, not sent after a gap).
    """
    for _ in batch:
        frames = sockets.recv_message(sock)
        if frames is None:
            return False
        feed(frames, now)
        send(now)
    return True


def _send(
    balancer: Balancer, front: sockets.SyncSocket, back: sockets.SyncSocket, now: float
) -> None:
    """Send both outboxes; a failed send is fed back, and may fill the outboxes again."""
    while balancer.to_workers or balancer.to_clients:
        for_workers, balancer.to_workers = balancer.to_workers, []
        for message, token in for_workers:
            routed = sockets.route(back, message)
            if routed != "sent":
                balancer.worker_unreachable(message[0], routed, token, now)
        for_clients, balancer.to_clients = balancer.to_clients, []
        for message, stream in for_clients:
            routed = sockets.route(front, message)
            if routed != "sent":
                balancer.client_unreachable(routed, stream)
