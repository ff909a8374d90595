"""Relay mode's default engine: libzmq's steerable proxy in a thread, steered from the loop.

``zmq.proxy_steerable`` moves frames between the two sockets in C, with the GIL released, so
the broker relays at libzmq's own speed while the event loop stays free. The loop owns a PAIR
socket connected to the proxy's control socket: it asks for ``STATISTICS`` and finally sends
``TERMINATE``, after which the thread returns the sockets to the loop (for a graceful drain)
or to be closed.
"""

from __future__ import annotations

import struct
import uuid

import anyio
import anyio.abc
import anyio.to_thread
import zmq
import zmq.asyncio

from zmqrelay._aio import sockets
from zmqrelay._core.relay import ProxyTraffic

_TERMINATE = b"TERMINATE"
_STATISTICS = b"STATISTICS"
_STATISTICS_DEADLINE_MS = 200


class ProxyEngine:
    """libzmq's proxy between ``frontend`` and ``backend``, in a thread of its own.

    While :meth:`run` runs, the sockets belong to the proxy thread; nothing else may touch
    them until it has returned.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        frontend: sockets.AsyncSocket,
        backend: sockets.AsyncSocket,
    ) -> None:
        self._frontend = frontend
        self._backend = backend
        self._address = f"inproc://zmqrelay-steer-{uuid.uuid4().hex}"
        self._steering = context.socket(zmq.PAIR)
        self._steered = context.socket(zmq.PAIR)
        self._steering.bind(self._address)
        self._steered.connect(self._address)
        self._running = False
        self._traffic = ProxyTraffic(0, 0, 0, 0)

    def close(self) -> None:
        """Close the control sockets (after :meth:`run` has returned)."""
        for sock in (self._steering, self._steered):
            sockets.close(sock, 0)

    def traffic(self) -> ProxyTraffic:
        """Frames and bytes moved so far: asked of the running proxy, else the last answer.

        The proxy answers within microseconds; if it does not within a short deadline, the
        last answer is returned, and the late one is discarded next time.
        """
        if self._running:
            steering = sockets.shadow(self._steering)
            while steering.poll(0):  # answers that came too late for an earlier call
                steering.recv_multipart()
            steering.send(_STATISTICS)
            if steering.poll(_STATISTICS_DEADLINE_MS):
                counts = [struct.unpack("<Q", frame)[0] for frame in steering.recv_multipart()]
                # frontend: in, bytes in, out, bytes out; backend: the same.
                self._traffic = ProxyTraffic(
                    request_frames=counts[6],
                    request_bytes=counts[7],
                    reply_frames=counts[2],
                    reply_bytes=counts[3],
                )
        return self._traffic

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the proxy until cancelled; then stop it and wait for its thread to return."""
        async with anyio.create_task_group() as task_group:
            self._running = True
            task_group.start_soon(self._in_thread, task_group.cancel_scope)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                try:
                    self.traffic()  # the last figures, before the proxy goes
                finally:
                    self._running = False
                    sockets.shadow(self._steering).send(_TERMINATE)

    async def _in_thread(self, scope: anyio.CancelScope) -> None:
        front, back = sockets.shadow(self._frontend), sockets.shadow(self._backend)
        steered = sockets.shadow(self._steered)
        try:
            # Not abandoned on cancellation: the thread owns the sockets until it returns,
            # which it does as soon as run() sends TERMINATE. A limiter of its own: the proxy
            # holds its thread for the broker's whole life, and must not take one of the
            # shared pool's (nor wait for one).
            await anyio.to_thread.run_sync(
                zmq.proxy_steerable, front, back, None, steered, limiter=anyio.CapacityLimiter(1)
            )
        finally:
            scope.cancel()
