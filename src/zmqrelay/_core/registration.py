"""What a worker says to one broker and how it reads it: one class per protocol.

The worker's shell feeds these what a socket read and the time, and sends what they return:
the handler runner (:mod:`zmqrelay._aio.handlers`) feeds them the broker's messages, a
:class:`~zmqrelay._aio.backends.Backend` sends READY and heartbeats, and the worker's facade
(:mod:`zmqrelay._aio.worker`) the goodbyes. The rules, each with its class:

- :class:`Relayed` (relay mode): no registration, no heartbeats, no goodbye. A request is read
  as the broker forwarded it; one for a named service is refused at once (a relay broker routes
  no services).
- :class:`Zrw` (zmqrelay's load-balancing protocol, :mod:`~zmqrelay._core.lbwire`): READY
  carries the worker's credits, and the broker answers it at once (with a heartbeat). A READY
  not answered within a heartbeat interval is sent again after
  :meth:`Registration.retry_delay`. As the
  worker starts draining it says LEAVING (the broker sends no more), and DISCONNECT as it stops.
- :class:`Majordomo` (its three variants, :mod:`~zmqrelay._core.mdp`): READY names the service
  and goes unanswered: the worker takes itself to be registered. Registering again, it first
  drops its connection and makes a new one (specs 7 and 18: the broker then sees a new peer,
  and nothing queued for the old session reaches the new one). Its broker is *patient* (see
  :mod:`~zmqrelay._core.worker_link`). It has no LEAVING: it says
  DISCONNECT once its last reply has gone (the broker hands a worker that answered the next
  request at once), or as it stops, and nothing after it.

For the two that register (:class:`Registration`), in the terms of
:mod:`~zmqrelay._core.worker_link`: every heartbeat interval the worker heartbeats, unless the
broker has been silent long enough to be judged gone (:meth:`~Link.gone`): the session then
ends and the worker registers again. A DISCONNECT from the broker means it forgot the worker
(it restarted, say): the session ends, forgotten, and the worker registers again at once. A
DISCONNECT in answer to a READY that asked for trace context means a broker older than that
feature: the worker registers again without asking.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from zmqrelay._core import lbwire, mdp, tag
from zmqrelay._core.worker import Answerable, Request, Unanswerable, decode_request
from zmqrelay._core.worker_link import Link
from zmqrelay.errors import NoWorkers

MAX_RETRY_DELAY = 30.0
"""Seconds: the longest wait before a READY is sent again (at most 32 heartbeat intervals)."""


class Signal(enum.Enum):
    """What a broker's command, as read by :meth:`Registration.received`, asks of the worker."""

    HEARD = "heard"
    """A heartbeat: nothing to do (silence counts from it)."""
    ANSWERED = "answered"
    """The broker answered the last READY: registered."""
    FORGOTTEN = "forgotten"
    """The broker said DISCONNECT: the session has ended; register again at once."""
    NO_CONTEXT = "no context"
    """As :attr:`FORGOTTEN`, in answer to a READY that asked for trace context: the broker is
    older than that feature, and the next READY does not ask."""


class Greeting(NamedTuple):
    """A READY to send."""

    frames: list[bytes]
    reconnect: bool
    """Whether to drop the connection and make a new one before sending it."""


class Conversation:
    """A worker's part in one protocol with one broker; the base of each protocol's class."""

    __slots__ = ("link", "said_disconnect")

    registers: ClassVar[bool] = False
    """Whether the worker registers and heartbeats (:class:`Registration`)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.said_disconnect = False
        """Whether the worker said DISCONNECT: nothing may follow it."""

    def received(self, frames: list[bytes], now: float) -> Answerable | Signal:
        """Read what the broker sent at ``now``: a request, or a :class:`Signal`.

        Raises:
            RemoteProtocolError: it is not a message of this protocol from a broker.
            Unanswerable: a request the worker answers at once instead of handling it.
        """
        raise NotImplementedError

    def draining(self) -> list[bytes] | None:
        """What to say as the worker starts draining (it takes no more requests), if anything."""
        return None

    def idle(self) -> list[bytes] | None:
        """What to say when, draining, the worker's last reply has gone, if anything."""
        return None

    def stopped(self) -> list[bytes] | None:
        """What to say as the worker stops (not when aborted), if anything."""
        return None


class Relayed(Conversation):
    """Relay mode: requests come as the broker forwarded them; nothing else is said."""

    __slots__ = ()

    def received(self, frames: list[bytes], now: float) -> Request:
        """Decode a request (``now`` is unused: a relay broker is never judged silent)."""
        request = decode_request(frames)
        service = mdp.named_service(request.body)
        if service:
            reason = (
                f"no worker serves {service.decode('utf-8', 'replace')!r}: the broker is in "
                "relay mode, which does not route services (start it with "
                "mode='load-balancing')"
            )
            answer = request.refuse(tag.Status.NO_WORKERS, NoWorkers.__name__, reason)
            raise Unanswerable(reason, request, answer)
        return request


BrokerMessage = Answerable | lbwire.BrokerCommand


class Registration(Conversation):
    """A protocol whose worker registers with its broker and heartbeats: see the module."""

    __slots__ = ("_decode", "_heartbeat", "ask_context", "heartbeat_interval", "service")

    registers = True
    patient: ClassVar[bool] = False
    """Whether the broker may not heartbeat a worker that holds one of its requests (see
    :meth:`~zmqrelay._core.worker_link.Link.gone`)."""

    def __init__(
        self,
        link: Link,
        *,
        service: bytes,
        heartbeat_interval: float,
        decode: Callable[[list[bytes]], BrokerMessage],
        heartbeat: list[bytes],
    ) -> None:
        super().__init__(link)
        self.service = service
        self.heartbeat_interval = heartbeat_interval
        self.ask_context = False
        """Whether READY asks the broker for the requests' trace context."""
        self._decode = decode
        self._heartbeat = heartbeat

    def ready(self, now: float) -> Greeting:
        """Register at ``now``: the READY to send."""
        raise NotImplementedError

    @property
    def registered(self) -> bool:
        """Whether the broker has answered the last READY (or need not)."""
        return not self.link.unacknowledged

    def received(self, frames: list[bytes], now: float) -> Answerable | Signal:
        """Read what the broker sent at ``now``: a request, or a :class:`Signal`.

        Raises:
            RemoteProtocolError: it is not a message of this protocol from a broker.
        """
        message = self._decode(frames)
        answered = self.link.heard(now)
        if not isinstance(message, str):
            return message
        if message == "heartbeat":
            return Signal.ANSWERED if answered else Signal.HEARD
        # DISCONNECT: whatever the broker sent before, it has ended.
        self.link.end(forgotten=True)
        if answered and self.ask_context:
            self.ask_context = False
            return Signal.NO_CONTEXT
        return Signal.FORGOTTEN

    def beat(self, now: float) -> list[bytes] | None:
        """A heartbeat interval has passed: the heartbeat to send, or ``None``.

        ``None``: the broker is judged gone, and the session has ended (register again).
        """
        if self.link.gone(now, patient=self.patient):
            self.link.end(forgotten=False)
            return None
        return self._heartbeat

    def retry_delay(self, attempt: int, jitter: float) -> float:
        """Seconds to wait before sending READY again after ``attempt`` went unanswered.

        It doubles with each attempt, from one heartbeat interval up to
        :data:`MAX_RETRY_DELAY` or 32 intervals, plus ``jitter`` (drawn from ``[0, 1)``) of an
        interval, so that many workers do not all knock at once on a broker that restarts.
        """
        interval = self.heartbeat_interval
        cap = min(MAX_RETRY_DELAY, 32 * interval)
        return min(interval * 2.0 ** (attempt - 1), cap) + jitter * interval


class Zrw(Registration):
    """zmqrelay's load-balancing protocol (:mod:`~zmqrelay._core.lbwire`)."""

    __slots__ = ("credits",)

    def __init__(
        self,
        link: Link,
        *,
        credits: int,
        service: bytes,
        heartbeat_interval: float,
        ask_context: bool,
    ) -> None:
        super().__init__(
            link,
            service=service,
            heartbeat_interval=heartbeat_interval,
            decode=lbwire.decode_from_broker,
            heartbeat=lbwire.encode_command_to_broker(lbwire.HEARTBEAT),
        )
        self.credits = credits
        self.ask_context = ask_context

    def ready(self, now: float) -> Greeting:
        """Register at ``now`` with the worker's credits."""
        self.link.register(now)
        ready = lbwire.encode_ready(self.credits, self.service, context=self.ask_context)
        return Greeting(ready, reconnect=False)

    def draining(self) -> list[bytes]:
        """LEAVING: the broker sends no more requests."""
        return lbwire.encode_command_to_broker(lbwire.LEAVING)

    def stopped(self) -> list[bytes]:
        """DISCONNECT."""
        self.said_disconnect = True
        return lbwire.encode_command_to_broker(lbwire.DISCONNECT)


class Majordomo(Registration):
    """A Majordomo worker, of one of its variants (:mod:`~zmqrelay._core.mdp`)."""

    __slots__ = ("variant",)

    patient = True  # a Majordomo broker may not heartbeat a worker that holds its request

    def __init__(
        self, link: Link, *, variant: mdp.Variant, service: bytes, heartbeat_interval: float
    ) -> None:
        super().__init__(
            link,
            service=service,
            heartbeat_interval=heartbeat_interval,
            decode=lambda frames: mdp.decode_from_broker(variant, frames),
            heartbeat=mdp.encode_to_broker(variant, "heartbeat"),
        )
        self.variant = variant

    @property
    def registered(self) -> bool:
        """Always: a Majordomo broker does not answer READY."""
        return True

    def ready(self, now: float) -> Greeting:
        """Register at ``now``, on a new connection if registered before."""
        reconnect = self.link.registrations > 0
        self.link.register(now)
        return Greeting(mdp.encode_ready(self.variant, self.service), reconnect=reconnect)

    def idle(self) -> list[bytes] | None:
        """DISCONNECT, once, right after the last reply.

        That leaves the broker the least time to hand this worker another request (one it
        still sends is not answered: the broker ends it, or sends it to another worker).
        """
        return self.stopped()

    def stopped(self) -> list[bytes] | None:
        """DISCONNECT, unless said already."""
        if self.said_disconnect:
            return None
        self.said_disconnect = True
        return mdp.encode_to_broker(self.variant, "disconnect")
