"""OpenTelemetry spans around requests: the client's, the worker's and the broker's queue.

Imported only once tracing is on (see :func:`zmqrelay._aio.service.tracer_provider`): it
needs ``opentelemetry-api`` (``pip install 'zmqrelay[tracing]'``). The trace context travels
in zmqrelay's own framing (:mod:`zmqrelay._core.trace`), written and read with OpenTelemetry's
global propagator (W3C trace context and baggage unless the application set another).

Attributes follow OpenTelemetry's RPC and messaging conventions where they fit: ``rpc.system``
is ``"zmqrelay"``, ``rpc.service`` the service named (none for the default service),
``server.address`` and ``server.port`` the broker's, ``error.type`` what a failed request
raised or how the broker refused it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import Token
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import propagate, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Span, SpanKind, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from zmqrelay._core import trace as context_frame
from zmqrelay._core.dispatch import Waited

_SYSTEM = "zmqrelay"

try:
    _VERSION: str | None = version("zmqrelay")
except PackageNotFoundError:  # pragma: no cover - run from a checkout that is not installed
    _VERSION = None


def _tracer(provider: TracerProvider | None) -> trace.Tracer:
    return trace.get_tracer("zmqrelay", _VERSION, tracer_provider=provider)


def _service_label(service: bytes) -> str:
    return service.decode("utf-8", "replace")


def _span_name(what: str, service: bytes) -> str:
    return f"zmqrelay {what} {_service_label(service)}" if service else f"zmqrelay {what}"


def _endpoint_attributes(endpoint: str) -> dict[str, AttributeValue]:
    """``server.address`` and ``server.port`` of a TCP endpoint, else the endpoint itself."""
    transport, _, where = endpoint.partition("://")
    if transport == "tcp":
        host, _, port = where.rpartition(":")
        if host and port.isdigit():
            return {"server.address": host.strip("[]"), "server.port": int(port)}
    return {"server.address": endpoint}


def _failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(StatusCode.ERROR, str(exc) or type(exc).__name__)


def _parent(frame: bytes) -> Context | None:
    """The context a request's trace context frame carries, or ``None``.

    ``None`` when there is no frame, or one that cannot be read: the request is then traced
    as if it came without.
    """
    if not frame:
        return None
    carrier = context_frame.decode(frame)
    if carrier is None:
        return None
    return propagate.extract(carrier)


class ClientTracing:
    """An :class:`~zmqrelay.AsyncClient`'s spans: one of kind CLIENT per request sent."""

    def __init__(self, provider: TracerProvider | None, endpoint: str) -> None:
        self._tracer = _tracer(provider)
        self._attributes: dict[str, AttributeValue] = {
            "rpc.system": _SYSTEM,
            **_endpoint_attributes(endpoint),
        }

    def start(self, service: bytes) -> tuple[Span, bytes | None]:
        """A span for a request to ``service``, and the frame carrying its context.

        The span is a child of the caller's current span; the frame (``None``: nothing to
        carry) goes with the request to the worker.
        """
        attributes = self._attributes
        if service:
            attributes = {**attributes, "rpc.service": _service_label(service)}
        span = self._tracer.start_span(
            _span_name("request", service), kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return span, context_frame.encode(carrier) if carrier else None

    @staticmethod
    def end(span: Span, failure: BaseException | None) -> None:
        """End a request's span; a request that failed (not one cancelled) is an error."""
        if isinstance(failure, Exception):
            _failed(span, failure)
        span.end()


class WorkerTracing:
    """An :class:`~zmqrelay.AsyncWorker`'s spans: one of kind SERVER per handler call.

    Each continues the trace its request came with.
    """

    def __init__(self, provider: TracerProvider | None, service: bytes) -> None:
        self._tracer = _tracer(provider)
        self._name = _span_name("handle", service)
        self._attributes: dict[str, AttributeValue] = {"rpc.system": _SYSTEM}
        if service:
            self._attributes["rpc.service"] = _service_label(service)

    def start(self, context: bytes, redelivery: bool) -> tuple[Span, Token[Context]]:
        """The span of a request that came with ``context``, made current.

        The handler's own spans are its children. (Not a context manager, which costs more:
        this runs for every request.)
        """
        attributes = self._attributes
        if redelivery:
            attributes = {**attributes, "zmqrelay.redelivery": True}
        parent = _parent(context)
        span = self._tracer.start_span(
            self._name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return span, attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def end(span: Span, token: Token[Context], stopped: bool) -> None:
        """End the span :meth:`start` made (``stopped``: the worker stopped the handler)."""
        detach(token)
        if stopped:
            span.set_attribute("error.type", "WorkerStopped")
            span.set_status(StatusCode.ERROR, "the worker stopped")
        span.end()

    @staticmethod
    def failed(exc: BaseException | None, type_name: str = "", message: str = "") -> None:
        """The handler raised ``exc`` (or failed as ``type_name``: its deadline passed)."""
        span = trace.get_current_span()
        if exc is not None:
            _failed(span, exc)
        else:
            span.set_attribute("error.type", type_name)
            span.set_status(StatusCode.ERROR, message)


class BrokerTracing:
    """A load-balancing broker's spans: how long each traced request waited for a worker.

    The core records each wait (:class:`~zmqrelay._core.dispatch.Waited`, in the event loop's
    clock, ``clock``); :meth:`emit` turns them into spans with those times, children of the
    client's span.
    """

    def __init__(self, provider: TracerProvider | None, clock: Callable[[], float]) -> None:
        self._tracer = _tracer(provider)
        self._clock = clock

    def emit(self, waits: list[Waited]) -> None:
        """Turn ``waits`` into spans, and clear it."""
        # From the core's times (the event loop's clock, ``clock``) to the wall clock's
        # nanoseconds, read together each time: the two clocks drift apart.
        offset = time.time_ns() - round(self._clock() * 1e9)
        tracer = self._tracer
        for waited in waits:
            parent = _parent(waited.context)
            if parent is None or not trace.get_current_span(parent).get_span_context().is_valid:
                continue  # a context that cannot be read: the request is not traced here
            attributes: dict[str, AttributeValue] = {
                "messaging.system": _SYSTEM,
                "messaging.destination.name": _service_label(waited.service),
            }
            if waited.redelivery:
                attributes["zmqrelay.redelivery"] = True
            span = tracer.start_span(
                _span_name("queue", waited.service),
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=offset + round(waited.queued_at * 1e9),
            )
            refusal = waited.refusal
            if refusal is not None:
                span.set_attribute("error.type", refusal.error.__name__)
                span.set_status(StatusCode.ERROR, refusal.text)
            span.end(end_time=offset + round(waited.until * 1e9))
        waits.clear()
