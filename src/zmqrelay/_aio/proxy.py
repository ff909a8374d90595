"""Relay mode's default engine: libzmq's steerable proxy in a thread, steered from the loop.

``zmq.proxy_steerable`` moves frames between the two sockets in C, with the GIL released, so
the broker relays at libzmq's own speed while the event loop stays free. The loop owns a PAIR
socket connected to the proxy's control socket: it asks for ``STATISTICS`` and finally sends
``PAUSE``, ``STATISTICS`` and ``TERMINATE``, after which the thread returns the sockets to the
loop (for a graceful drain) or to be closed.

One thing can keep the proxy from ever reading ``TERMINATE``: it forwards requests in bursts
of up to 1,000 after seeing room for one, so when the workers stop reading (SIGSTOP, a
deadlock) it waits inside a blocking send for room that never comes. The backend therefore
also binds a private ``inproc://`` endpoint, the *release*: when the proxy has not returned
shortly after ``TERMINATE``, the loop connects a socket of its own there, which gives the
blocked send somewhere to go. What arrives there was never delivered; it is counted as such.

While the proxy runs, the loop asks for its figures every second: a question left unanswered
that long means the proxy is blocked, which is logged, and statistics then report its last
answer without waiting.
"""

from __future__ import annotations

import logging
import struct
import uuid

import anyio
import anyio.abc
import anyio.to_thread
import zmq
import zmq.asyncio

from zmqrelay._aio import sockets
from zmqrelay._core.relay import ProxyTraffic

_STATISTICS, _TERMINATE = b"STATISTICS", b"TERMINATE"
# libzmq 4.3.5 (the one pyzmq's wheels bundle) swapped PAUSE and RESUME by mistake; fixed since.
_PAUSE = b"RESUME" if zmq.zmq_version_info() == (4, 3, 5) else b"PAUSE"
_STATISTICS_DEADLINE_MS = 200
_RELEASE_AFTER = 0.1
"""Seconds the proxy may take to return after ``TERMINATE`` before it is taken to be stuck."""
_WATCH_INTERVAL = 1.0
"""Seconds between the loop's questions to the running proxy."""

logger = logging.getLogger("zmqrelay.broker")


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
        self._context = context
        self._frontend = frontend
        self._backend = backend
        name = uuid.uuid4().hex
        self._steering = context.socket(zmq.PAIR)
        self._steered = context.socket(zmq.PAIR)
        self._steering.bind(f"inproc://zmqrelay-steer-{name}")
        self._steered.connect(f"inproc://zmqrelay-steer-{name}")
        self._release = f"inproc://zmqrelay-release-{name}"
        backend.bind(self._release)
        self._running = False
        self._asked = False  # a STATISTICS question the proxy has not answered yet
        self._blocked_since: float | None = None
        self._counted = ProxyTraffic(0, 0, 0, 0)
        self._returned = anyio.Event()
        self.undelivered = 0
        """Requests the proxy sent to the release rather than to a worker."""
        self._undelivered_frames = 0
        self._undelivered_bytes = 0

    def close(self) -> None:
        """Close the control sockets (after :meth:`run` has returned)."""
        for sock in (self._steering, self._steered):
            sockets.close(sock, 0)

    def traffic(self) -> ProxyTraffic:
        """Frames and bytes moved so far: asked of the running proxy, else the last answer.

        The proxy answers within microseconds. If it does not within a short deadline, the
        last answer is returned; once the proxy is known to be blocked, at once.
        """
        if self._running and self._blocked_since is None:
            steering = sockets.shadow(self._steering)
            if self._asked:  # an earlier question's answer comes first
                steering.poll(_STATISTICS_DEADLINE_MS)
                self._read_answers(steering)
            if not self._asked:
                steering.send(_STATISTICS)
                self._asked = True
                if steering.poll(_STATISTICS_DEADLINE_MS):
                    self._read_answers(steering)
        counted = self._counted
        return counted._replace(
            request_frames=counted.request_frames - self._undelivered_frames,
            request_bytes=counted.request_bytes - self._undelivered_bytes,
        )

    def _read_answers(self, steering: sockets.SyncSocket) -> None:
        while steering.poll(0):
            answer = steering.recv_multipart()
            if len(answer) != 8:  # libzmq 4.3.5 acknowledges other commands with b""
                continue
            counts = [struct.unpack("<Q", frame)[0] for frame in answer]
            # frontend: in, bytes in, out, bytes out; backend: the same.
            self._counted = ProxyTraffic(
                request_frames=counts[6],
                request_bytes=counts[7],
                reply_frames=counts[2],
                reply_bytes=counts[3],
            )
            self._asked = False

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the proxy until cancelled; then stop it and wait for its thread to return."""
        async with anyio.create_task_group() as task_group:
            self._running = True
            task_group.start_soon(self._in_thread, task_group.cancel_scope)
            task_status.started()
            try:
                await self._watch()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop()

    async def _watch(self) -> None:
        """Ask for the figures every interval; log when the proxy stops answering, or resumes."""
        steering = sockets.shadow(self._steering)
        while True:
            await anyio.sleep(_WATCH_INTERVAL)
            self._read_answers(steering)
            now = anyio.current_time()
            if self._asked:
                if self._blocked_since is None:
                    self._blocked_since = now
                    logger.warning(
                        "the proxy is blocked sending requests to workers that stopped "
                        "reading; it forwards nothing, either way, until one reads again"
                    )
                continue
            if self._blocked_since is not None:
                blocked = now - self._blocked_since
                logger.warning(
                    "the proxy forwards again, after %.1f s blocked",
                    blocked,
                    extra={"seconds": blocked},
                )
                self._blocked_since = None
            steering.send(_STATISTICS)
            self._asked = True

    async def _stop(self) -> None:
        # Paused first, so the figures it gives next are its last.
        steering = sockets.shadow(self._steering)
        for command in (_PAUSE, _STATISTICS, _TERMINATE):
            steering.send(command)
        self._asked = True
        with anyio.move_on_after(_RELEASE_AFTER):
            await self._returned.wait()
        if not self._returned.is_set():
            await self._release_stuck()
        self._running = False
        self._read_answers(steering)

    async def _release_stuck(self) -> None:
        """Give the proxy's blocked send somewhere to go, until the proxy has returned."""
        logger.warning(
            "the proxy is blocked sending requests to workers that stopped reading: "
            "the requests it is sending are dropped so that it can stop"
        )
        release = sockets.open_socket(self._context, zmq.DEALER, high_water_mark=0)
        try:
            release.connect(self._release)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._swallow, release)
                await self._returned.wait()
                task_group.cancel_scope.cancel()
            self._swallow_ready(sockets.shadow(release))
        finally:
            sockets.close(release, 0)
        logger.warning(
            "the proxy stopped; %d requests were not delivered",
            self.undelivered,
            extra={"undelivered_requests": self.undelivered},
        )

    async def _swallow(self, release: sockets.AsyncSocket) -> None:
        while True:
            self._count_undelivered(await release.recv_multipart())

    def _swallow_ready(self, release: sockets.SyncSocket) -> None:
        while (frames := sockets.recv_message(release)) is not None:
            self._count_undelivered(frames)

    def _count_undelivered(self, frames: list[bytes]) -> None:
        self.undelivered += 1
        self._undelivered_frames += len(frames)
        self._undelivered_bytes += sum(map(len, frames))

    async def _in_thread(self, scope: anyio.CancelScope) -> None:
        front, back = sockets.shadow(self._frontend), sockets.shadow(self._backend)
        steered = sockets.shadow(self._steered)
        try:
            # Not abandoned on cancellation: the thread owns the sockets until it returns,
            # which it does once it reads TERMINATE (see _stop). A limiter of its own: the
            # proxy holds its thread for the broker's whole life, and must not take one of
            # the shared pool's (nor wait for one).
            await anyio.to_thread.run_sync(
                zmq.proxy_steerable, front, back, None, steered, limiter=anyio.CapacityLimiter(1)
            )
        finally:
            self._returned.set()
            scope.cancel()
