"""What load-balancing mode has to do at a given time, kept so that a message costs little.

Three kinds of timer, each kept where it costs least:

- a request's **deadline**: requests with the same timeout reach their deadlines in the order
  they came, so each timeout has a FIFO queue (an append per request, no heap); a client that
  uses many timeouts spills into a heap;
- a request's **queue timeout**: the same for all, so one FIFO queue;
- a worker's **check** (its liveness and heartbeat): a heap, armed again after each check.

Timers are never cancelled: one that no longer means anything (its request ended, its worker
was checked since or forgotten) is skipped when it comes up, and the timers' queues are swept
now and then so that what ended does not pile up.
"""

from __future__ import annotations

import heapq
from collections import deque

from zmqrelay._core.request import Request
from zmqrelay._core.workers import Worker

_MAX_FIFOS = 8
"""Timeouts that get a FIFO queue of their own; requests with other timeouts go to a heap."""


class Timers:
    """Deadlines, queue timeouts and worker checks; every method takes times, reads no clock."""

    def __init__(self, *, queue_timeout: float) -> None:
        self.queue_timeout = queue_timeout
        self._deadlines: dict[float, deque[tuple[float, Request]]] = {}
        self._odd_deadlines: list[tuple[float, int, Request]] = []
        self._queued: deque[tuple[float, Request]] = deque()
        self._checks: list[tuple[float, int, Worker]] = []
        self._sequence = 0
        self.pending = 0
        """Requests queued or in flight: the sweeps keep each queue within a few times it."""

    def deadline(self, request: Request, deadline: float, timeout: float) -> None:
        """``request`` ends at ``deadline`` (``timeout`` after it came) unless it ends before."""
        fifo = self._deadlines.get(timeout)
        if fifo is None:
            if len(self._deadlines) >= _MAX_FIFOS:
                self._sequence += 1
                heapq.heappush(self._odd_deadlines, (deadline, self._sequence, request))
                if len(self._odd_deadlines) > 2 * self.pending + 1024:
                    self._odd_deadlines = [e for e in self._odd_deadlines if not e[2].ended]
                    heapq.heapify(self._odd_deadlines)
                return
            fifo = self._deadlines[timeout] = deque()
        fifo.append((deadline, request))
        if len(fifo) > 2 * self.pending + 1024:
            self._deadlines[timeout] = deque(entry for entry in fifo if not entry[1].ended)

    def queued(self, request: Request) -> None:
        """``request`` joined a queue: it waits there :attr:`queue_timeout` at most."""
        queued = self._queued
        queued.append((request.enqueued_at, request))
        if len(queued) > 2 * self.pending + 1024:
            self._queued = deque(entry for entry in queued if _still_queued(*entry))

    def check(self, worker: Worker, when: float) -> None:
        """Look at ``worker`` at ``when`` (the one check it has; an earlier one is dropped)."""
        if when == worker.check_at:
            return
        worker.check_at = when
        self._sequence += 1
        heapq.heappush(self._checks, (when, self._sequence, worker))

    def next_wakeup(self) -> float | None:
        """The earliest time something is due, if ever."""
        times: list[float] = []
        for timeout, fifo in list(self._deadlines.items()):
            while fifo and fifo[0][1].ended:
                fifo.popleft()
            if fifo:
                times.append(fifo[0][0])
            else:
                del self._deadlines[timeout]
        odd = self._odd_deadlines
        while odd and odd[0][2].ended:
            heapq.heappop(odd)
        if odd:
            times.append(odd[0][0])
        queued = self._queued
        while queued and not _still_queued(*queued[0]):
            queued.popleft()
        if queued:
            times.append(queued[0][0] + self.queue_timeout)
        checks = self._checks
        while checks and checks[0][2].check_at != checks[0][0]:
            heapq.heappop(checks)
        if checks:
            times.append(checks[0][0])
        return min(times, default=None)

    def due(self, now: float) -> tuple[list[Worker], list[Request], list[Request]]:
        """What is due by ``now``; the timers that went off are spent.

        Returns the workers to check, the requests past their deadline, and the queued
        requests past the queue timeout.
        """
        workers: list[Worker] = []
        checks = self._checks
        while checks and checks[0][0] <= now:
            when, _, worker = heapq.heappop(checks)
            if worker.check_at == when:
                worker.check_at = -1.0  # no check until one is armed again
                workers.append(worker)
        expired: list[Request] = []
        for fifo in self._deadlines.values():
            while fifo and (fifo[0][1].ended or fifo[0][0] <= now):
                request = fifo.popleft()[1]
                if not request.ended:
                    expired.append(request)
        odd = self._odd_deadlines
        while odd and odd[0][0] <= now:
            request = heapq.heappop(odd)[2]
            if not request.ended:
                expired.append(request)
        waited: list[Request] = []
        queued, queue_timeout = self._queued, self.queue_timeout
        while queued and queued[0][0] + queue_timeout <= now:  # as next_wakeup adds it
            enqueued_at, request = queued.popleft()
            if _still_queued(enqueued_at, request):
                waited.append(request)
        return workers, expired, waited


def _still_queued(enqueued_at: float, request: Request) -> bool:
    return request.queued and request.enqueued_at == enqueued_at
