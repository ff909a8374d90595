"""One socket to one broker's backend, and the worker's registration with that broker.

A :class:`Backend` pairs the socket with its protocol's core object (a
:class:`~zmqrelay._core.registration.Conversation`: relay, ZRW or Majordomo). The handler runner
(:mod:`zmqrelay._aio.handlers`) reads the socket and hands each message to the conversation; the
backend performs the signals the conversation reads out of them (:meth:`Backend.signalled`),
sends answers within their session (:meth:`Backend.send`), and, for a protocol that registers,
keeps the worker registered and heartbeating (:meth:`Backend.keep_registered`). What to say and
when is the core object's; this module only waits and sends.
"""

from __future__ import annotations

import contextlib
import logging
import random

import anyio

from zmqrelay._aio import sockets
from zmqrelay._aio.zmqerrors import UNUSABLE, unbroken
from zmqrelay._core.registration import Conversation, Registration, Signal
from zmqrelay._core.worker_link import Session
from zmqrelay.errors import BrokenError

logger = logging.getLogger("zmqrelay.worker")


class Backend:
    """One socket to one broker's backend, speaking ``conversation``'s protocol.

    What the tasks serving it wait on lives here; what the protocol decides lives in the
    conversation and its :class:`~zmqrelay._core.worker_link.Link`.
    """

    __slots__ = ("_waiting", "conversation", "heard", "link", "pump", "received", "register_now")

    def __init__(self, conversation: Conversation, pump: sockets.Pump) -> None:
        self.conversation = conversation
        self.link = conversation.link
        self.pump = pump
        self.received = conversation.received
        """The conversation's reading of a message from the broker: a request, or a
        :class:`Signal` for :meth:`signalled`."""
        self.register_now = anyio.Event()
        """Set when the broker said DISCONNECT: register again at once."""
        self.heard = anyio.Event()
        """Set when the broker answered the last READY."""
        self._waiting: set[anyio.CancelScope] = set()
        """The sends waiting for room in the socket."""

    async def send(self, frames: list[bytes], session: Session) -> bool:
        """Send ``frames`` of a request of ``session``; false if they were dropped.

        A send waits only while the broker's queue in the socket is full (a broker that does
        not read), and never past the end of its session: a dead broker holds up no handler
        for longer than its silence takes to notice.
        """
        if session.forgotten:
            return False
        if self.pump.try_send(frames):
            return True
        if not session.open:
            return False
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                await self.pump.send(frames)
                return True
            finally:
                self._waiting.discard(scope)
        return False

    def signalled(self, signal: Signal) -> None:
        """Perform what a broker's command asks (see :class:`Signal`)."""
        if signal is Signal.HEARD:
            return
        self.heard.set()
        if signal is Signal.ANSWERED:
            return
        if signal is Signal.NO_CONTEXT:
            logger.info(
                "the broker at %s takes no trace context: registering without it",
                self.link.endpoint,
            )
        self._session_ended()
        self.register_now.set()

    def _session_ended(self) -> None:
        """The link's session has ended: the sends of its requests wait no more."""
        for scope in self._waiting:
            scope.cancel()

    def say(self, frames: list[bytes] | None) -> None:
        """Send ``frames`` (a goodbye), if any, if the socket takes them now and still works."""
        if frames is not None:
            with contextlib.suppress(*UNUSABLE):
                self.pump.try_send(frames)

    async def keep_registered(self) -> None:
        """Register with the broker, heartbeat, and register again when it seems gone."""
        registration = self.conversation
        assert isinstance(registration, Registration)
        interval, pump = registration.heartbeat_interval, self.pump
        while True:
            self.register_now = anyio.Event()
            attempt = 1
            while (said_ready := await self._register(registration)) is None:
                await anyio.sleep(registration.retry_delay(attempt, random.random()))
                attempt += 1
            # A heartbeat is due an interval after what was said last, however the broker
            # answered the READY (a request answers it as a heartbeat does).
            due = said_ready + interval
            while True:
                with anyio.move_on_after(due - anyio.current_time()):
                    await self.register_now.wait()
                if self.register_now.is_set():
                    break  # the broker forgot this worker
                now = anyio.current_time()
                heartbeat = registration.beat(now)
                if heartbeat is None:  # the broker is gone, restarting, or stalled
                    self._session_ended()
                    break
                pump.try_send(heartbeat)
                due = now + interval

    async def _register(self, registration: Registration) -> float | None:
        """Say READY: when it was said, once registered; None if the broker did not answer."""
        said = anyio.current_time()
        greeting = registration.ready(said)
        if greeting.reconnect:
            self._reconnect()
        self.heard = anyio.Event()
        self.pump.try_send(greeting.frames)
        if not registration.registered:
            with anyio.move_on_after(registration.heartbeat_interval):
                await self.heard.wait()
        return said if registration.registered else None

    def _reconnect(self) -> None:
        """Drop the connection to the broker and make a new one: the broker sees a new peer."""
        pump, endpoint = self.pump, self.link.endpoint
        try:
            with unbroken(pump.name):
                pump.sync.disconnect(endpoint)
        except BrokenError as exc:  # the transport cannot disconnect: keep the connection
            logger.debug("could not drop the connection to %s: %s", endpoint, exc)
            return
        with unbroken(pump.name):
            pump.sync.connect(endpoint)
        pump.kick()
