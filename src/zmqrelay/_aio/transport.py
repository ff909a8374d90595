"""What an :class:`~zmqrelay.AsyncClient` needs of the protocol it speaks: its transport.

The client is a facade: it checks arguments, retries, traces and counts retries, and hands
each request to the transport chosen for its ``protocol``, zmqrelay's own tagged requests
(:class:`~zmqrelay._aio.tagged.TaggedTransport`) or Majordomo
(:class:`~zmqrelay._aio.mdpclient.MajordomoTransport`), to one broker or several. Client and
transports refuse a request in the same words when the client is not running
(:func:`not_running`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from zmqrelay._core.client import ClientStatistics
from zmqrelay.errors import ClosedError

__all__ = ["Transport", "not_running"]


def closed_while_waiting() -> ClosedError:
    """What a request gets when the client closes before its reply comes."""
    return ClosedError("the client closed before the reply came")


def not_running(state: str = "closed") -> ClosedError:
    """What a request gets while the client is not running, but ``state`` (``"new"``, say)."""
    return ClosedError(f"the client is {state}; use it inside 'async with'")


class Transport(Protocol):
    """How requests reach the brokers and replies come back, for one protocol.

    ``limit`` is a request's timeout in seconds (``None``: none); ``context`` the trace
    context frame to send with it, if the protocol has room for one.
    """

    def open(self) -> AbstractAsyncContextManager[None]:
        """Connect, and serve requests while the block runs.

        On leaving, requests still waiting fail with :class:`~zmqrelay.ClosedError`.
        """
        ...

    async def exchange(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> list[bytes]:
        """One request: send it, and return its reply's frames."""
        ...

    def stream(
        self,
        service: bytes,
        frames: Sequence[bytes],
        limit: float | None,
        redeliveries: int,
        context: bytes | None = None,
    ) -> AsyncGenerator[list[bytes], None]:
        """One request, whose reply's parts are yielded as they come."""
        ...

    def batch(
        self,
        service: bytes,
        bodies: Iterable[bytes],
        limit: float | None,
        redeliveries: int,
        window: int,
    ) -> AsyncGenerator[tuple[int, bytes | Exception], None] | None:
        """Many single-frame requests on a path of the transport's own, if it has one.

        Yields ``(index, reply or error)`` as :meth:`~zmqrelay.AsyncClient.replies`;
        ``None``: the client runs them side by side, each as :meth:`exchange` makes it.
        """
        ...

    def statistics(self) -> ClientStatistics:
        """A snapshot of the transport's counters (retries are the client's to count)."""
        ...
