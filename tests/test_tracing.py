"""Tracing through real sockets: one trace from AsyncClient through the broker to AsyncWorker.

Spans go to the OpenTelemetry SDK's in-memory exporter, through a tracer provider handed to
each peer (``tracing=provider``), so that the process's global provider stays unset for the
other tests. Plain and Majordomo peers must work as before when a client sends trace context;
a malformed context is ignored; without OpenTelemetry nothing is imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

import anyio
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from peers import eventually, lb_broker, raw_socket, rep_worker, req_client
from test_majordomo import BlockingContext, blocking_context, echo, majortomo_worker
from zmqrelay import AsyncClient, AsyncWorker, Broker, NoWorkers, RemoteError
from zmqrelay._aio.tracing import BrokerTracing, WorkerTracing
from zmqrelay._core import lbwire, tag
from zmqrelay._core import trace as context_frame
from zmqrelay._core.dispatch import Waited
from zmqrelay._core.refusal import Refusal
from zmqrelay.testing import LeakCheckingContext, running

pytestmark = pytest.mark.timeout(30)
__all__ = ["blocking_context"]  # a fixture, for the Majordomo test


class Spans:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        (span,) = [span for span in self.finished() if span.name == name]
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.provider.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else int(span.parent.span_id)


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def traced_handler(spans: Spans) -> Callable[[bytes], Awaitable[bytes]]:
    """An echo handler that makes a span of its own, and fails on ``b"fail"``."""
    tracer = spans.provider.get_tracer("handler")

    async def handle(request: bytes) -> bytes:
        with tracer.start_as_current_span("handler work"):
            if request == b"fail":
                raise ValueError("no such thing")
            return request.upper()

    return handle


def check_one_trace(spans: Spans, client_name: str, worker_name: str) -> None:
    """The app's span, then the client's, then the worker's and the handler's, in one trace."""
    app = spans.named("app")
    client = spans.named(client_name)
    worker = spans.named(worker_name)
    work = spans.named("handler work")
    assert {trace_id(span) for span in (app, client, worker, work)} == {trace_id(app)}
    assert parent_of(client) == span_id(app)
    assert parent_of(worker) == span_id(client)
    assert parent_of(work) == span_id(worker)
    assert (client.kind, worker.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert client.attributes is not None
    assert client.attributes["rpc.system"] == "zmqrelay"
    assert worker.parent is not None
    assert worker.parent.is_remote


# -- one trace, both modes ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_trace_spans_client_broker_and_worker_in_load_balancing_mode(
    context: LeakCheckingContext, spans: Spans
) -> None:
    provider = spans.provider
    async with (
        running(lb_broker(context, tracing=provider)),
        running(
            AsyncWorker(
                "inproc://b",
                traced_handler(spans),
                service="echo",
                context=context,
                tracing=provider,
            )
        ),
        running(AsyncClient("inproc://f", context=context, tracing=provider)) as client,
    ):
        with provider.get_tracer("app").start_as_current_span("app"):
            assert await client.request("echo", b"hello") == b"HELLO"
    check_one_trace(spans, "zmqrelay request echo", "zmqrelay handle echo")
    queue = spans.named("zmqrelay queue echo")
    assert parent_of(queue) == span_id(spans.named("zmqrelay request echo"))
    assert trace_id(queue) == trace_id(spans.named("app"))
    assert queue.attributes is not None
    assert queue.attributes["messaging.destination.name"] == "echo"
    assert queue.start_time is not None
    assert queue.end_time is not None
    sent = spans.named("zmqrelay request echo")
    assert sent.start_time is not None
    assert sent.end_time is not None
    assert sent.start_time <= queue.start_time <= queue.end_time <= sent.end_time
    assert sent.attributes is not None
    assert sent.attributes["rpc.service"] == "echo"


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["libzmq", "python"])
async def test_one_trace_spans_client_and_worker_in_relay_mode(
    context: LeakCheckingContext, spans: Spans, engine: Literal["libzmq", "python"]
) -> None:
    provider = spans.provider
    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        engine=engine,
        drain_timeout=0,
        tracing=provider,
    )
    async with (
        running(broker),
        running(
            AsyncWorker("inproc://b", traced_handler(spans), context=context, tracing=provider)
        ),
        running(AsyncClient("inproc://f", context=context, tracing=provider)) as client,
    ):
        with provider.get_tracer("app").start_as_current_span("app"):
            assert await client.request(b"hello") == b"HELLO"
            streamed = [part async for part in client.stream(b"stream")]
            assert streamed == [b"STREAM"]
        assert client.statistics().malformed_replies == 0
    requests = [span for span in spans.finished() if span.name == "zmqrelay request"]
    handled = [span for span in spans.finished() if span.name == "zmqrelay handle"]
    assert len(requests) == len(handled) == 2
    assert {parent_of(span) for span in handled} == {span_id(span) for span in requests}
    assert not [span for span in spans.finished() if span.name.startswith("zmqrelay queue")]


@pytest.mark.asyncio
async def test_errors_set_the_status_and_record_the_exception(
    context: LeakCheckingContext, spans: Spans
) -> None:
    provider = spans.provider
    async with (
        running(lb_broker(context, tracing=provider, queue_timeout=0.05)),
        running(
            AsyncWorker(
                "inproc://b",
                traced_handler(spans),
                service="echo",
                context=context,
                tracing=provider,
            )
        ),
        running(AsyncClient("inproc://f", context=context, tracing=provider)) as client,
    ):
        with pytest.raises(RemoteError):
            await client.request("echo", b"fail")
        with pytest.raises(NoWorkers):
            await client.request("nobody", b"hello")
    worker = spans.named("zmqrelay handle echo")
    assert worker.status.status_code is StatusCode.ERROR
    assert worker.attributes is not None
    assert worker.attributes["error.type"] == "ValueError"
    assert [event.name for event in worker.events] == ["exception"]
    failed = spans.named("zmqrelay request echo")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "RemoteError"
    refused = spans.named("zmqrelay request nobody")
    assert refused.status.status_code is StatusCode.ERROR
    queue = spans.named("zmqrelay queue nobody")
    assert queue.status.status_code is StatusCode.ERROR
    assert queue.attributes is not None
    assert queue.attributes["error.type"] == "NoWorkers"
    assert parent_of(queue) == span_id(refused)


@pytest.mark.asyncio
async def test_a_handler_past_its_deadline_is_an_error(
    context: LeakCheckingContext, spans: Spans
) -> None:
    async def slow(request: bytes) -> bytes:
        await anyio.sleep(10)
        return request

    provider = spans.provider
    async with (
        running(
            Broker(frontend="inproc://f", backend="inproc://b", context=context, drain_timeout=0)
        ),
        running(AsyncWorker("inproc://b", slow, context=context, tracing=provider)),
        running(AsyncClient("inproc://f", context=context, tracing=provider)) as client,
    ):
        with pytest.raises(TimeoutError):
            await client.request(b"hello", timeout=0.05)
        await eventually(lambda: len(spans.finished()) == 2)
    worker = spans.named("zmqrelay handle")
    assert worker.status.status_code is StatusCode.ERROR
    assert worker.attributes is not None
    assert worker.attributes["error.type"] == "DeadlineExceeded"
    assert spans.named("zmqrelay request").status.status_code is StatusCode.ERROR


# -- peers that know nothing of it ----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_stock_rep_worker_echoes_the_context_and_the_client_reads_past_it(
    context: LeakCheckingContext, spans: Spans
) -> None:
    served: Counter[str] = Counter()
    async with (
        running(
            Broker(frontend="inproc://f", backend="inproc://b", context=context, drain_timeout=0)
        ),
        anyio.create_task_group() as tg,
        running(AsyncClient("inproc://f", context=context, tracing=spans.provider)) as client,
    ):
        await tg.start(rep_worker, context, "inproc://b", "rep", served)
        assert await client.request(b"hello") == b"World hello"
        assert client.statistics().malformed_replies == 0
        tg.cancel_scope.cancel()
    assert spans.named("zmqrelay request").status.status_code is StatusCode.UNSET


@pytest.mark.asyncio
async def test_what_a_plain_worker_sees_of_a_traced_request(
    context: LeakCheckingContext, spans: Spans
) -> None:
    # Relay mode: the context rides in the envelope, which a plain worker echoes unread.
    backend = raw_socket(context, zmq.DEALER, "inproc://b", bind=True)
    try:
        async with (
            running(AsyncClient("inproc://b", context=context, tracing=spans.provider)) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(client.request, b"hi")
            envelope = await backend.recv_multipart()
            assert len(envelope) == 4
            assert context_frame.decode(envelope[0]) is not None
            assert tag.decode(envelope[1]) is not None
            assert envelope[2:] == [b"", b"hi"]
            await backend.send_multipart([*envelope[:2], b"", b"HI"])
    finally:
        backend.close()


@pytest.mark.asyncio
async def test_guide_workers_in_load_balancing_mode_never_see_the_context(
    context: LeakCheckingContext, spans: Spans
) -> None:
    async with (
        running(lb_broker(context, tracing=spans.provider)),
        running(AsyncClient("inproc://f", context=context, tracing=spans.provider)) as client,
        anyio.create_task_group() as tg,
    ):
        worker = raw_socket(context, zmq.REQ, "inproc://b")
        try:
            await worker.send(b"READY")
            tg.start_soon(client.request, b"hi")
            reply_to, empty, body = await worker.recv_multipart()  # exactly three frames
            assert (len(reply_to), empty, body) == (8, b"", b"hi")
            await worker.send_multipart([reply_to, b"", b"HI"])
        finally:
            worker.close()
    # The broker still adds its span: it read the context before dropping it.
    assert parent_of(spans.named("zmqrelay queue")) == span_id(spans.named("zmqrelay request"))


@pytest.mark.asyncio
async def test_a_stock_req_client_gets_one_frame_from_a_tracing_worker(
    context: LeakCheckingContext, spans: Spans
) -> None:
    async with (
        running(
            Broker(frontend="inproc://f", backend="inproc://b", context=context, drain_timeout=0)
        ),
        running(
            AsyncWorker(
                "inproc://b", traced_handler(spans), context=context, tracing=spans.provider
            )
        ),
        req_client(context, "inproc://f") as request,
    ):
        assert await request(b"hello") == b"HELLO"  # req_client checks it is one frame
    worker = spans.named("zmqrelay handle")
    assert worker.parent is None  # no context came: the worker starts a trace
    assert parent_of(spans.named("handler work")) == span_id(worker)


@pytest.mark.asyncio
async def test_majordomo_peers_work_with_a_tracing_client(
    context: LeakCheckingContext, blocking_context: BlockingContext, spans: Spans
) -> None:
    broker = lb_broker(
        context, frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0", tracing=spans.provider
    )
    async with running(broker), majortomo_worker(blocking_context, broker, b"echo", echo):
        frontend = broker.endpoints.frontend
        async with running(AsyncClient(frontend, context=context, tracing=spans.provider)) as c:
            assert await c.request("echo", b"hello") == b"hello"
        # A Majordomo client has no room for a context; its requests are still spans.
        async with running(
            AsyncClient(frontend, context=context, protocol="mdp-0.2", tracing=spans.provider)
        ) as mdp:
            assert await mdp.request("echo", b"hello") == b"hello"
    requests = [span for span in spans.finished() if span.name == "zmqrelay request echo"]
    assert len(requests) == 2
    queues = [span for span in spans.finished() if span.name == "zmqrelay queue echo"]
    assert [parent_of(span) for span in queues] == [span_id(requests[0])]


@pytest.mark.asyncio
async def test_a_zmqrelay_mdp_worker_with_tracing_starts_its_own_trace(
    context: LeakCheckingContext, spans: Spans
) -> None:
    async with (
        running(lb_broker(context)),
        running(
            AsyncWorker(
                "inproc://b",
                traced_handler(spans),
                service="echo",
                protocol="mdp-0.2",
                context=context,
                tracing=spans.provider,
            )
        ),
        running(AsyncClient("inproc://f", context=context, tracing=spans.provider)) as client,
    ):
        assert await client.request("echo", b"hi") == b"HI"
    assert spans.named("zmqrelay handle echo").parent is None


# -- what cannot be read is ignored ---------------------------------------------------------


MALFORMED = [
    context_frame.PREFIX + b"\xff\x00",  # not even a frame
    context_frame.PREFIX + b"traceparent:00-garbage",  # a frame, but a traceparent of nothing
    context_frame.PREFIX + b"traceparent:00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",  # zeros
]


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["relay", "load-balancing"])
async def test_a_malformed_context_is_ignored(
    context: LeakCheckingContext, spans: Spans, mode: Literal["relay", "load-balancing"]
) -> None:
    broker = Broker(
        frontend="inproc://f",
        backend="inproc://b",
        context=context,
        mode=mode,
        engine="python",
        drain_timeout=0,
        tracing=spans.provider,
    )
    async with (
        running(broker),
        running(
            AsyncWorker(
                "inproc://b",
                traced_handler(spans),
                context=context,
                mode=mode,
                tracing=spans.provider,
            )
        ),
    ):
        client = raw_socket(context, zmq.DEALER, "inproc://f")
        try:
            for number, bad in enumerate(MALFORMED):
                tagged = tag.encode(number)
                await client.send_multipart([bad, tagged, b"", b"hello"])
                assert await client.recv_multipart() == [tagged, b"", b"HELLO"]
        finally:
            client.close()
    handled = [span for span in spans.finished() if span.name == "zmqrelay handle"]
    assert len(handled) == len(MALFORMED)
    assert all(span.parent is None for span in handled)
    assert not [span for span in spans.finished() if span.name == "zmqrelay queue"]


# -- switched off, and version skew ---------------------------------------------------------


@pytest.mark.asyncio
async def test_tracing_off_sends_nothing_more(context: LeakCheckingContext, spans: Spans) -> None:
    # None traces only once the application has set a provider; none is set in this process.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    backend = raw_socket(context, zmq.ROUTER, "inproc://b", bind=True)
    try:
        for setting in (False, None):
            async with (
                running(AsyncClient("inproc://b", context=context, tracing=setting)) as client,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(client.request, b"hi")
                peer, *envelope = await backend.recv_multipart()
                assert len(envelope) == 3  # [tag, "", body]: as before tracing existed
                await backend.send_multipart([peer, *envelope[:-1], b"HI"])
    finally:
        backend.close()
    assert spans.finished() == []


@pytest.mark.asyncio
async def test_a_worker_registers_without_asking_for_context_with_a_broker_that_refuses_it(
    context: LeakCheckingContext, spans: Spans
) -> None:
    # A broker older than trace context takes a READY of 9 bytes only, and answers any other
    # with DISCONNECT (a protocol violation), as zmqrelay's brokers did.
    backend = raw_socket(context, zmq.ROUTER, "inproc://b", bind=True)
    try:
        async with running(
            AsyncWorker(
                "inproc://b",
                traced_handler(spans),
                mode="load-balancing",
                context=context,
                tracing=spans.provider,
                heartbeat_interval=0.05,
            )
        ):
            worker, header = await backend.recv_multipart()
            assert len(header) == lbwire.READY_FEATURES_HEADER.size
            await backend.send_multipart([worker, lbwire.PROTOCOL + lbwire.DISCONNECT])
            while len(header) != lbwire.READY_HEADER.size:  # heartbeats may come first
                worker, header = await backend.recv_multipart()
            assert header[4:5] == lbwire.READY
    finally:
        backend.close()


def test_tracing_needs_opentelemetry_only_when_asked() -> None:
    """Without opentelemetry, nothing imports it and everything works; asking for it fails."""
    program = textwrap.dedent(
        """
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError(f"{name} is blocked")

        if sys.argv[1] == "blocked":
            sys.meta_path.insert(0, Blocked())

        import anyio
        import zmq.asyncio
        from zmqrelay import AsyncClient, AsyncWorker, Broker

        async def upper(request: bytes) -> bytes:
            return request.upper()

        async def main() -> None:
            context = zmq.asyncio.Context()
            for mode in ("relay", "load-balancing"):
                async with (
                    Broker(frontend="inproc://f", backend="inproc://b", context=context,
                           mode=mode, drain_timeout=0),
                    AsyncWorker("inproc://b", upper, context=context, mode=mode),
                    AsyncClient("inproc://f", context=context) as client,
                ):
                    assert await client.request(b"hi") == b"HI"
            context.term()

        anyio.run(main)
        assert not [name for name in sys.modules if name.startswith("opentelemetry")]
        if sys.argv[1] == "blocked":
            for make in (
                lambda: AsyncClient("inproc://f", tracing=True),
                lambda: AsyncWorker("inproc://b", upper, tracing=True),
                lambda: Broker(frontend="inproc://f", backend="inproc://b", tracing=True),
            ):
                try:
                    make()
                except ImportError as exc:
                    assert "zmqrelay[tracing]" in str(exc)
                else:
                    raise AssertionError("tracing=True without opentelemetry")
        print("ok")
        """
    )
    for how in ("blocked", "installed"):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", program, how],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"


def test_the_default_traces_once_the_application_set_a_provider() -> None:
    program = textwrap.dedent(
        """
        import anyio
        import zmq.asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from zmqrelay import AsyncClient, AsyncWorker, Broker

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        async def upper(request: bytes) -> bytes:
            return request.upper()

        async def main() -> None:
            context = zmq.asyncio.Context()
            async with (
                Broker(frontend="inproc://f", backend="inproc://b", context=context,
                       mode="load-balancing", drain_timeout=0),
                AsyncWorker("inproc://b", upper, context=context, service="up"),
                AsyncClient("inproc://f", context=context) as client,
            ):
                assert await client.request("up", b"hi") == b"HI"
            context.term()

        anyio.run(main)
        print(sorted(span.name for span in exporter.get_finished_spans()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(
        ["zmqrelay handle up", "zmqrelay queue up", "zmqrelay request up"]
    )


# -- any context, however strange, is survived ----------------------------------------------

fields = st.sampled_from(["traceparent", "tracestate", "baggage", "other"])
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)
contexts = st.one_of(
    st.dictionaries(fields, values, min_size=1).map(context_frame.encode).map(lambda f: f or b""),
    st.binary(max_size=64).map(lambda tail: context_frame.PREFIX + tail),
    st.just(b""),
)


DROPPING = TracerProvider(shutdown_on_exit=False)
"""Spans made and dropped: what matters is that nothing raises."""


@settings(max_examples=300, deadline=None)
@given(contexts, st.booleans())
def test_no_context_breaks_a_worker_or_a_broker(frame: bytes, redelivery: bool) -> None:
    provider = DROPPING
    worker = WorkerTracing(provider, b"echo")
    span, token = worker.start(frame, redelivery)
    worker.end(span, token, False)
    waits = [Waited(frame, b"echo", 1.0, 2.0, redelivery, Refusal.BUSY)]
    BrokerTracing(provider, time.monotonic).emit(waits)
    assert waits == []
