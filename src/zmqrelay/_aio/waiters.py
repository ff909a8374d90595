"""What a client's caller waits on while a request is in flight, besides a plain future.

A request answered in one reply is awaited through an ``asyncio.Future``. A streamed request
queues its parts in a :class:`Stream`; the requests of a batch report to one :class:`Batch`
through a :class:`Slot` each, so that its consumer is woken once per receive batch rather than
a task per reply. All three are what the correlator holds for a request (a :data:`Waiter`):
the receive task hands each its reply with ``set_result`` or its failure with
``set_exception``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from zmqrelay._core import tag
from zmqrelay._core.client import Reply, single_frame

__all__ = ["Batch", "Slot", "Stream", "Waiter"]


class Stream:
    """The waiter of a streamed request: the parts of its reply queue up for the caller."""

    __slots__ = ("_ended", "_finished", "_items", "_wake", "failure")

    def __init__(self) -> None:
        self._items: deque[Reply | BaseException] = deque()
        self._wake = asyncio.Event()
        self._finished = False
        self._ended: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def done(self) -> bool:
        return self._finished

    def ended(self) -> asyncio.Future[None]:
        """A future done once the stream has ended (its last part, or a failure, came)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self._finished:
                self._ended.set_result(None)
        return self._ended

    def set_result(self, reply: Reply) -> None:
        self._items.append(reply)
        self._finished = reply.status is not tag.Status.PARTIAL
        self._wake.set()
        if self._finished and self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def set_exception(self, exc: BaseException) -> None:
        self._items.append(exc)
        self._finished = True
        self.failure = exc
        self._wake.set()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def next(self) -> Reply:
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


class Batch:
    """What the requests of one batch have come to, queued for its single consumer.

    Whoever ends a request records its reply (or failure) here and wakes the consumer only
    when it waits: once per receive batch, never a task per reply.
    """

    __slots__ = ("_wake", "ready")

    def __init__(self) -> None:
        # A reply, a failure, or None: a request run as a task of its own ended (see the task).
        self.ready: deque[tuple[int, Reply | BaseException | None]] = deque()
        self._wake: asyncio.Future[None] | None = None

    def put(self, index: int, outcome: Reply | BaseException | None) -> None:
        self.ready.append((index, outcome))
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return once something is ready (at once if something is)."""
        if not self.ready:
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None


class Slot:
    """A batch's request as the correlator sees it: a waiter that feeds its batch."""

    __slots__ = ("_batch", "_done", "index")

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self.index = index
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, reply: Reply) -> None:
        self._done = True
        self._batch.put(self.index, reply)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._batch.put(self.index, exc)


Waiter = asyncio.Future[Reply] | Stream | Slot
"""What the correlator holds for a request in flight."""


class _Done(Protocol):
    """A request that ended with a reply: a :class:`Reply`, or the task that made it."""

    def result(self) -> list[bytes]: ...


def settled(outcome: BaseException | _Done) -> bytes | Exception:
    """What a batch yields for one request: its reply's one frame, or the error that ended it.

    Raises:
        BaseException: the outcome is one that is not an ``Exception`` (a cancellation).
    """
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, Exception):
            raise outcome
        return outcome
    try:
        return single_frame(outcome.result())
    except Exception as exc:  # yielded in place
        return exc
