"""Relay mode's Python engine: both directions in one task, every message checked and counted.

The default engine (:mod:`zmqrelay._aio.proxy`) lets libzmq move the frames; this one runs when
the broker must look at each message: it refuses messages without an envelope and counts every
drop by its cause, at several times the CPU cost per message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import anyio
import zmq
from anyio.lowlevel import checkpoint

from zmqrelay._aio import sockets
from zmqrelay._core.envelope import is_routable
from zmqrelay._core.relay import RelayCounters

receive, send, route = sockets.recv_message, sockets.send_message, sockets.route

_SMALLEST_REQUEST = 3
"""Frames in the smallest request that can be answered: routing id, delimiter, body."""


class PythonRelay:
    """Both directions of relay mode in one task.

    One task owns both sockets, so every send is followed by a fresh look at both sockets'
    events before the next wait: libzmq signals readiness on an edge-triggered descriptor, and
    a send made while another task waited could swallow that edge. Each wake-up drains up to a
    batch per direction without awaiting; a full batch yields before looking again, so neither
    direction starves the other or the event loop. Frames move one at a time with plain integer
    flags, which costs far less per message than pyzmq's multipart helpers.
    """

    def __init__(
        self,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
        counters: RelayCounters,
        batch_size: int,
    ) -> None:
        self.frontend = frontend
        self.backend = backend
        self.counters = counters
        self.batch = range(batch_size)
        self.held: list[bytes] | None = None
        self.drained = anyio.Event()
        self.pending_reply_frames: int | None = None
        """When set, drain until fewer than a request's frames are still owed (the libzmq
        engine counts frames, not messages); otherwise until the message counters balance."""
        self.drained_frames = 0
        self.drained_bytes = 0

    async def run(self, intake: bool) -> None:
        """Relay until cancelled; with ``intake`` false, only replies (and a held request)."""
        front, back = sockets.shadow(self.frontend), sockets.shadow(self.backend)
        front_events, back_events = _events(front), _events(back)
        async with sockets.Readiness(front, back) as readiness:
            while True:
                busy = self._replies(back, front)
                busy = self._requests(front, back, intake) or busy
                if not intake and self._all_answered():
                    self.drained.set()
                if busy:
                    await checkpoint()
                    continue
                # Reading EVENTS also clears the descriptors' edge: wait only if nothing is
                # ready by now, or a wake-up would be lost.
                front_ready = front_events() & sockets.POLLIN and intake and self.held is None
                back_ready = back_events() & (
                    sockets.POLLIN | (sockets.POLLOUT if self.held is not None else 0)
                )
                if not (front_ready or back_ready):
                    await readiness.wait()

    def _all_answered(self) -> bool:
        if self.pending_reply_frames is not None:
            # Fewer frames owed than the smallest request has: no request can be in flight,
            # whatever frames were lost to replies shorter than their requests.
            return self.pending_reply_frames < _SMALLEST_REQUEST
        return not self.counters.outstanding

    def _requests(self, front: sockets.SyncSocket, back: sockets.SyncSocket, intake: bool) -> bool:
        """Forward requests; true when a full batch went through (there may be more)."""
        counters = self.counters
        if self.held is not None:
            if not send(back, self.held):
                return False
            self.held = None
            counters.requests_held = 0
            counters.requests_forwarded += 1
        if not intake:
            return False
        for _ in self.batch:
            frames = receive(front)
            if frames is None:
                return False
            if not is_routable(frames):
                counters.malformed_requests += 1
            elif send(back, frames):
                counters.requests_forwarded += 1
            else:
                # No worker can take it yet: hold it and stop reading clients (backpressure).
                self.held = frames
                counters.requests_held = 1
                return False
        return True

    def _replies(self, back: sockets.SyncSocket, front: sockets.SyncSocket) -> bool:
        """Forward replies; true when a full batch went through (there may be more)."""
        counters = self.counters
        for _ in self.batch:
            frames = receive(back)
            if frames is None:
                return False
            if self.pending_reply_frames is not None:
                self.pending_reply_frames -= len(frames)
            if not is_routable(frames):
                counters.malformed_replies += 1
                continue
            routed = route(front, frames)
            if routed == "sent":
                counters.replies_forwarded += 1
                if self.pending_reply_frames is not None:
                    self.drained_frames += len(frames)
                    self.drained_bytes += sum(map(len, frames))
            elif routed == "full":
                counters.congested_replies += 1
            else:
                counters.unroutable_replies += 1
        return True


def _events(sock: sockets.SyncSocket) -> Callable[[], int]:
    """A function reading the socket's ``EVENTS`` (and clearing its descriptor's edge)."""
    get, option = sock.getsockopt, int(zmq.EVENTS)

    def events() -> int:
        return cast(int, get(option))

    return events
