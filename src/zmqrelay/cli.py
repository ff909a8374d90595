"""The ``zmqrelay`` command: run a broker, run the demo, send a request, make CURVE keys.

Every option can also come from an environment variable, named in ``--help``
(``ZMQRELAY_FRONTEND``, ``ZMQRELAY_BACKEND``, ...).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar, TypeVarTuple, cast

import anyio
import click
from click.core import ParameterSource

from zmqrelay import __version__
from zmqrelay._aio.broker import Broker, Engine
from zmqrelay._aio.client import AsyncClient
from zmqrelay._aio.curve import CurveKeyPair
from zmqrelay._aio.service import Mode, ProtocolName
from zmqrelay._bench_core import Peers, run_core_bench
from zmqrelay._bench_peers import (
    generate_load,
    serve_echo,
    serve_majortomo,
    serve_nats,
    serve_proxy,
    serve_python_lb,
    serve_python_lb_lowlevel,
    serve_python_loop,
)
from zmqrelay._core.top import metrics_url
from zmqrelay._demo import run_demo
from zmqrelay._eventloop import backend_options
from zmqrelay._eventloop import run as run_on_event_loop
from zmqrelay._logs import LogFormat, formats_json
from zmqrelay._logs import configure as configure_logging
from zmqrelay.bench import BROKERS, BenchConfig, report, run_bench
from zmqrelay.errors import KeyFileError, ZmqRelayError

logger = logging.getLogger("zmqrelay.cli")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


_LOGGING = "zmqrelay.logging"
"""Where the root context keeps the logging options, for a command's own to change."""

FC = TypeVar("FC", bound=Callable[..., object])


def _env_option(*declarations: str, **options: Any) -> Callable[[FC], FC]:
    """A click option that may also come from the environment, and says so in ``--help``.

    Its variable is ``ZMQRELAY_`` and the option's long name (``--drain-timeout``:
    ``ZMQRELAY_DRAIN_TIMEOUT``), unless ``envvar=`` names another.
    """
    name = next(declaration for declaration in declarations if declaration.startswith("--"))
    options.setdefault("envvar", "ZMQRELAY_" + name[2:].upper().replace("-", "_"))
    return click.option(*declarations, show_envvar=True, **options)


def _logging_options(command: FC) -> FC:
    """``--log-level`` and ``--log-format`` after a long-running command's name too.

    Given there, they win over the same before it (``zmqrelay --log-format json broker``) and
    over the environment, which the group reads.
    """
    for option in (
        _env_option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default=None,
            help="How to log to standard error: lines of text, or a JSON object per line "
            "[default: text].",
            expose_value=False,
            callback=_relog,
        ),
        _env_option(
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            default=None,
            help="How much to log to standard error [default: INFO for broker, else WARNING].",
            expose_value=False,
            callback=_relog,
        ),
    ):
        command = option(command)
    return command


def _relog(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """A command's own logging option, given on the command line: log as it says."""
    if value is None or ctx.get_parameter_source(param.name or "") != ParameterSource.COMMANDLINE:
        return  # the group applied the environment already
    settings = ctx.find_root().meta[_LOGGING]
    settings[param.name] = value
    _configure_logging(settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="zmqrelay")
@_env_option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="How much to log to standard error [default: INFO for broker, else WARNING].",
)
@_env_option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="How to log to standard error: lines of text, or a JSON object per line.",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: LogFormat) -> None:
    """zmqrelay: an embeddable ZeroMQ request-reply broker.

    The logging options may also follow a long-running command's name (``zmqrelay broker
    --log-format json``).
    """
    default = "INFO" if ctx.invoked_subcommand == "broker" else "WARNING"
    settings = {"log_level": log_level or default, "log_format": log_format}
    ctx.meta[_LOGGING] = settings
    _configure_logging(settings)


def _configure_logging(settings: dict[str, str]) -> None:
    configure_logging(settings["log_level"], cast("LogFormat", settings["log_format"]))


@cli.command()
@_env_option(
    "--frontend",
    default="tcp://*:5559",
    help="Endpoint to bind for clients.",
)
@_env_option(
    "--backend",
    default="tcp://*:5560",
    help="Endpoint to bind for workers.",
)
@_env_option(
    "--drain-timeout",
    type=float,
    default=5.0,
    help="On SIGINT/SIGTERM, seconds to keep relaying replies of requests in flight.",
)
@_env_option(
    "--mode",
    type=click.Choice(["relay", "load-balancing"]),
    default="relay",
    help="relay: frames pass through; load-balancing: workers announce readiness.",
)
@_env_option(
    "--redeliveries",
    type=click.IntRange(0, 100),
    default=0,
    help="Load-balancing: times a request whose worker died is sent again (0: at most once).",
)
@_env_option(
    "--heartbeat-interval",
    type=click.FloatRange(0.001, 3600),
    default=2.5,
    help="Load-balancing: seconds between heartbeats to and from workers.",
)
@_env_option(
    "--liveness",
    type=click.IntRange(1, 100),
    default=3,
    help="Load-balancing: heartbeat intervals of silence after which a worker is dead.",
)
@_env_option(
    "--queue-limit",
    type=click.IntRange(0, 10_000_000),
    default=10_000,
    help="Load-balancing: requests that may wait for a worker.",
)
@_env_option(
    "--queue-timeout",
    type=click.FloatRange(0, 3600),
    default=5.0,
    help="Load-balancing: seconds a request may wait for a worker.",
)
@_env_option(
    "--request-timeout",
    type=click.FloatRange(0.001, 10_000_000),
    default=60.0,
    help="Load-balancing: deadline of requests whose client set none.",
)
@_env_option(
    "--engine",
    type=click.Choice(["libzmq", "python"]),
    default="libzmq",
    help="libzmq: C speed; python: checks and counts every message.",
)
@_env_option(
    "--max-message-size",
    type=int,
    default=None,
    help="Disconnect clients and workers that send larger frames (bytes).",
)
@_env_option(
    "--curve-secret-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="CURVE: the broker's key pair (a .key_secret file, see 'zmqrelay keys generate'); "
    "both sockets then take CURVE peers only, encrypted.",
)
@_env_option(
    "--client-keys",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="CURVE: a directory of *.key files, the clients allowed [default: any CURVE client, "
    "encrypted but not authenticated].",
)
@_env_option(
    "--worker-keys",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="CURVE: a directory of *.key files, the workers allowed [default: any CURVE worker, "
    "encrypted but not authenticated].",
)
@_env_option(
    "--authorization",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="CURVE, load-balancing: a policy file (TOML) saying which client keys may call which "
    "services and which worker keys may serve them.",
)
@_env_option(
    "--handshake-timeout",
    type=click.FloatRange(0.001, 3600),
    default=5.0,
    help="CURVE: seconds a peer has to complete its handshake.",
)
@_env_option(
    "--metrics-address",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (needs "
    "zmqrelay[metrics]; port 0: any free port, logged).",
)
@_logging_options
def broker(
    frontend: str,
    backend: str,
    drain_timeout: float,
    mode: Mode,
    redeliveries: int,
    heartbeat_interval: float,
    liveness: int,
    queue_limit: int,
    queue_timeout: float,
    request_timeout: float,
    engine: Engine,
    max_message_size: int | None,
    curve_secret_key: Path | None,
    client_keys: Path | None,
    worker_keys: Path | None,
    authorization: Path | None,
    handshake_timeout: float,
    metrics_address: str | None,
) -> None:
    """Run a broker (relay or load-balancing, see --mode) until SIGINT or SIGTERM.

    It first finishes the requests in flight (--drain-timeout); a second signal stops it at once.
    SIGHUP reads the CURVE keys and the policy again; if they cannot be read, the broker logs
    why and keeps the ones it has.
    """
    if curve_secret_key is None and (client_keys or worker_keys or authorization):
        raise click.UsageError(
            "--client-keys, --worker-keys and --authorization need --curve-secret-key"
        )
    if authorization is not None and mode != "load-balancing":
        raise click.UsageError(
            "--authorization applies to services: it needs --mode load-balancing"
        )
    with _usage_errors(), _one_line_errors():  # a key file, the policy; the metrics address
        instance = Broker(
            frontend=frontend,
            backend=backend,
            drain_timeout=drain_timeout,
            max_message_size=max_message_size,
            engine=engine,
            mode=mode,
            redeliveries=redeliveries,
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            queue_limit=queue_limit,
            queue_timeout=queue_timeout,
            request_timeout=request_timeout,
            curve_secret_key=curve_secret_key,
            client_keys=client_keys,
            worker_keys=worker_keys,
            authorization=authorization,
            handshake_timeout=handshake_timeout,
            metrics=metrics_address,
        )
    _run(_serve_until_signalled, instance, curve_secret_key is not None)


async def _serve_until_signalled(instance: Broker, curve: bool) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:
            endpoints = await tg.start(instance.run)
            logger.info(
                "serving: clients connect to %s, workers to %s",
                endpoints.frontend,
                endpoints.backend,
                extra={"frontend": endpoints.frontend, "backend": endpoints.backend},
            )
            stopping = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    _reload_keys(instance, curve)
                    continue
                if stopping:
                    logger.info("%s again: stopping now", name, extra={"signal": name})
                    tg.cancel_scope.cancel()
                    break
                logger.info(
                    "%s: finishing requests in flight, then stopping", name, extra={"signal": name}
                )
                stopping = True
                tg.start_soon(_close_then_stop, instance, tg.cancel_scope)


async def _close_then_stop(instance: Broker, scope: anyio.CancelScope) -> None:
    await instance.aclose()
    scope.cancel()


def _reload_keys(instance: Broker, curve: bool) -> None:
    """SIGHUP: read the CURVE keys and the policy again; if that fails, serve on with the old."""
    if not curve:
        logger.warning("SIGHUP: nothing to reload: the broker runs without --curve-secret-key")
        return
    logger.info("SIGHUP: reloading the CURVE keys and the policy")
    try:
        instance.reload_keys()  # logs what it reloaded
    except ZmqRelayError as exc:  # KeyFileError, PolicyError: nothing was changed
        logger.error(  # noqa: TRY400 - one line, no traceback: the message says it all
            "SIGHUP: %s: %s; still serving with the keys and the policy as they were",
            type(exc).__name__,
            exc,
            extra={"error": type(exc).__name__},
        )


@cli.command()
@_env_option(
    "--transport",
    type=click.Choice(["inproc", "tcp"]),
    default="inproc",
    envvar="ZMQRELAY_DEMO_TRANSPORT",
    help="inproc: all in memory; tcp: over loopback on free ports.",
)
@click.option("--clients", type=click.IntRange(1, 100), default=2, help="Clients.")
@click.option("--workers", type=click.IntRange(1, 100), default=3, help="Workers.")
@click.option(
    "--requests", type=click.IntRange(1, 10_000), default=10, help="Requests per client."
)
@_logging_options
def demo(transport: str, clients: int, workers: int, requests: int) -> None:
    """Run the guide's scenario in one process: 2 clients, 3 workers, 10 requests each."""
    result = run_on_event_loop(
        lambda: run_demo(transport=transport, clients=clients, workers=workers, requests=requests)
    )
    if result.failures or len(result.served_by) != clients * requests:
        sys.exit(1)


@cli.command()
@_env_option(
    "--connect",
    default="tcp://localhost:5559",
    help="The broker's frontend.",
)
@_env_option(
    "--timeout",
    type=float,
    # Longer than a broker's default queue timeout, so that its refusal (NoWorkers) comes first.
    default=10.0,
    help="Seconds to wait for the reply (a load-balancing broker refuses a request no worker "
    "took within its --queue-timeout, 5 s by default).",
)
@click.option(
    "--service",
    "-s",
    default="",
    help="The service to ask (a load-balancing broker's; default: the default service).",
)
@click.option(
    "--protocol",
    type=click.Choice(["zmqrelay", "mdp-0.1", "mdp-0.2", "majortomo"]),
    default="zmqrelay",
    help="Speak Majordomo to another Majordomo broker (needs --service).",
)
@_env_option(
    "--curve-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="CURVE: this client's key pair (a .key_secret file), for a broker that takes CURVE "
    "peers only (needs --curve-server-key).",
)
@_env_option(
    "--curve-server-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="CURVE: the broker's public key (its .key file).",
)
@click.argument("frames", nargs=-1, required=True)
@_logging_options
def request(
    connect: str,
    timeout: float,
    service: str,
    protocol: ProtocolName,
    curve_key: Path | None,
    curve_server_key: Path | None,
    frames: Sequence[str],
) -> None:
    """Send one request (one frame per argument) and print the reply, a frame per line.

    A streamed reply is printed part by part, as the parts come.
    """
    if protocol != "zmqrelay" and not service:
        raise click.UsageError("a Majordomo request names a --service")
    if (curve_key is None) != (curve_server_key is None):
        raise click.UsageError("CURVE needs both --curve-key and --curve-server-key")
    _run(
        _request,
        connect,
        timeout,
        service,
        protocol,
        [frame.encode() for frame in frames],
        curve_key,
        curve_server_key,
    )


async def _request(
    endpoint: str,
    timeout: float,
    service: str,
    protocol: ProtocolName,
    frames: list[bytes],
    curve_key: Path | None,
    curve_server_key: Path | None,
) -> None:
    async with AsyncClient(
        endpoint,
        timeout=timeout,
        protocol=protocol,
        curve_keys=curve_key,
        curve_server_key=curve_server_key,
    ) as client:
        async for part in client.stream_frames(service, frames):
            for frame in part:
                click.echo(frame.decode("utf-8", "backslashreplace"))


@cli.group()
def keys() -> None:
    """Make CURVE keys for a broker, its clients and its workers."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@click.argument("name")
def keys_generate(directory: Path, name: str) -> None:
    """Write a new CURVE key pair in DIR and print the paths of its two files.

    NAME.key holds the public key, to hand out (a broker allows a client or a worker by finding
    its NAME.key in --client-keys or --worker-keys); NAME.key_secret holds the pair, to keep,
    readable by its owner only. An existing pair is never overwritten.
    """
    try:
        public, secret = CurveKeyPair.create(directory, name)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or directory}: {exc.strerror}") from exc
    click.echo(public)
    click.echo(secret)


@cli.command()
@click.argument("url", envvar="ZMQRELAY_METRICS_URL")
@_env_option(
    "--interval",
    type=click.FloatRange(0.05, 3600),
    default=2.0,
    envvar="ZMQRELAY_TOP_INTERVAL",
    help="Seconds between scrapes; the rates are averaged over it.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.01, 600),
    default=5.0,
    help="Seconds to wait for the endpoint's answer.",
)
@click.option(
    "--once", is_flag=True, help="Scrape twice, --interval apart, print the view and exit."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document instead of the table (implies --once).",
)
def top(url: str, interval: float, timeout: float, once: bool, as_json: bool) -> None:
    """Show a running broker's request rates, latencies, queues and workers, live.

    URL is the broker's metrics endpoint (zmqrelay broker --metrics-address), as
    http://HOST:PORT/metrics or HOST:PORT; it may come from ZMQRELAY_METRICS_URL. The view is
    scraped again every --interval seconds until Ctrl-C. Needs the 'top' extra:
    pip install 'zmqrelay[top]'.
    """
    try:
        from zmqrelay import _top  # here: without 'zmqrelay top', the extra costs nothing
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in ("rich", "prometheus_client"):
            raise
        raise click.ClickException(
            f"zmqrelay top needs the 'top' extra ({missing} is not installed): "
            "pip install 'zmqrelay[top]'"
        ) from None
    try:
        endpoint = metrics_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    console = _top.make_console()
    try:
        if once or as_json:
            _top.run_once(
                endpoint, interval=interval, timeout=timeout, as_json=as_json, console=console
            )
        else:
            _top.run_live(endpoint, interval=interval, timeout=timeout, console=console)
    except _top.ScrapeError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option(
    "--broker",
    "brokers",
    type=click.Choice(BROKERS),
    multiple=True,
    help="Broker to measure; repeat for several [default: zmqrelay].",
)
@click.option(
    "--broker-command",
    help="Measure an external broker started by this command, in which {frontend} and "
    "{backend} stand for the tcp endpoints it must bind.",
)
@click.option("--compare", type=click.Choice(["proxy"]), help="Also measure libzmq's proxy.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, help="Echo worker processes.")
@click.option(
    "--worker-kind",
    type=click.Choice(["c", "sync", "async", "guide", "guide-c", "async-lb", "mdp", "async-mdp"]),
    default="c",
    help="c: libzmq echoes; sync: a plain pyzmq loop; async: AsyncWorker; for "
    "load-balancing brokers, guide: the guide's REQ worker; guide-c: workers on the guide's "
    "wire echoed by libzmq; async-lb: AsyncWorker; for Majordomo brokers, mdp: plain "
    "Majordomo workers; async-mdp: AsyncWorker.",
)
@click.option(
    "--sockets-per-worker",
    type=click.IntRange(1, 1024),
    default=1,
    help="Workers in each worker process, a socket each (guide-c and mdp workers).",
)
@click.option(
    "--work-ms", type=click.FloatRange(0, 10_000), default=0.0, help="Work per request, ms."
)
@click.option(
    "--slow-factor",
    type=click.FloatRange(1, 1000),
    default=1.0,
    help="The first worker works this many times longer (fairness).",
)
@click.option("--clients", type=click.IntRange(1, 64), default=1, help="Load client processes.")
@click.option(
    "--client-kind",
    type=click.Choice(["sync", "async", "async-batch", "mdp", "c"]),
    default="sync",
    help="sync: a plain pipelined pyzmq DEALER; async: AsyncClient; async-batch: "
    "AsyncClient's batch API (replies()) keeping the window in flight; mdp: plain Majordomo "
    "clients, a socket per request in flight; c: libzmq sends each reply back as the next "
    "request (the cheapest client; measures no latency).",
)
@click.option(
    "--window", type=click.IntRange(1, 100_000), default=100, help="Requests in flight per client."
)
@click.option(
    "--size", type=click.IntRange(8, 64 * 1024 * 1024), default=16, help="Payload bytes."
)
@click.option(
    "--warmup", type=click.FloatRange(0, 60), default=1.0, help="Seconds before measuring."
)
@click.option("--duration", type=click.FloatRange(0.1, 600), default=3.0, help="Seconds measured.")
@click.option(
    "--pin",
    is_flag=True,
    help="Linux: the broker on the first CPU, the other parties on the rest.",
)
@click.option(
    "--tracing",
    is_flag=True,
    help="Also run each broker with its AsyncClients and AsyncWorkers tracing every request "
    "(OpenTelemetry's SDK, spans exported nowhere), reported as BROKER+tracing.",
)
@click.option(
    "--curve",
    is_flag=True,
    help="Also run each broker with CURVE on every connection (throw-away keys; zmqrelay's "
    "brokers authenticate both sides, the others only encrypt), reported as BROKER+curve.",
)
@click.option(
    "--metrics",
    is_flag=True,
    help="Also run each zmqrelay broker with Prometheus metrics on, scraped once a second, "
    "reported as BROKER+metrics.",
)
@click.option(
    "--brokers",
    "broker_count",
    type=click.IntRange(1, 8),
    default=1,
    help="Run this many of each broker, every worker connected to all of them and the clients "
    "spread over them; each is measured with one broker first, with the same workers.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_logging_options
def bench(
    brokers: Sequence[str],
    broker_command: str | None,
    compare: str | None,
    workers: int,
    worker_kind: str,
    sockets_per_worker: int,
    work_ms: float,
    slow_factor: float,
    clients: int,
    client_kind: str,
    window: int,
    size: int,
    warmup: float,
    duration: float,
    pin: bool,
    tracing: bool,
    curve: bool,
    metrics: bool,
    broker_count: int,
    as_json: bool,
) -> None:
    """Measure throughput, latency and CPU per request; every party is a process of its own."""
    load = BenchConfig(
        workers=workers,
        worker_kind=worker_kind,
        worker_concurrency=max(window, 1),
        sockets_per_worker=sockets_per_worker,
        work=work_ms / 1000,
        slow_factor=slow_factor,
        clients=clients,
        client_kind=client_kind,
        window=window,
        size=size,
        warmup=warmup,
        duration=duration,
        pin=pin,
    )
    configs = [replace(load, broker=broker) for broker in brokers]
    if broker_command:
        configs.append(replace(load, broker="external", broker_command=broker_command))
    if not configs:
        configs.append(load)
    if compare and all(config.broker != compare for config in configs):
        configs.append(replace(load, broker=compare))
    if curve:  # each with CURVE right after it without, so that they share the conditions
        configs = [twin for config in configs for twin in (config, replace(config, curve=True))]
    if metrics:  # likewise, for the zmqrelay brokers
        configs = [
            twin
            for config in configs
            for twin in (
                (config, replace(config, metrics=True))
                if config.broker.startswith("zmqrelay") and config.broker_command is None
                else (config,)
            )
        ]
    if tracing:  # each traced right after it is not, as with CURVE
        configs = [twin for config in configs for twin in (config, replace(config, tracing=True))]
    if broker_count > 1:  # each with several brokers right after it with one
        configs = [
            twin for config in configs for twin in (config, replace(config, brokers=broker_count))
        ]
    show = _progress_line if sys.stderr.isatty() and not as_json else lambda _: None
    try:
        results = [run_bench(config, progress=show) for config in configs]
    except (ValueError, RuntimeError) as exc:  # a rig that cannot run: say why, no traceback
        raise click.ClickException(str(exc)) from exc
    click.echo(report(results, as_json=as_json))


@cli.command("bench-core")
@click.option(
    "--peers",
    type=click.Choice(["guide", "zmqrelay", "majortomo"]),
    multiple=True,
    help="Whose messages to feed; repeat for several [default: all three].",
)
@click.option("--workers", type=click.IntRange(1, 100_000), default=64, help="Workers.")
@click.option("--window", type=click.IntRange(1, 100_000), default=256, help="Requests in flight.")
@click.option(
    "--requests", type=click.IntRange(1, 10**9), default=200_000, help="Requests to feed."
)
@click.option(
    "--metrics", is_flag=True, help="Also run each with the counters metrics read, after it."
)
def bench_core(
    peers: Sequence[str], workers: int, window: int, requests: int, metrics: bool
) -> None:
    """Measure the load-balancing core alone: no sockets, no event loop, one process."""
    click.echo(f"{'peers':<22}{'req/s':>12}{'µs/request':>12}")
    for kind in peers or ("guide", "zmqrelay", "majortomo"):
        for measured in (False, True) if metrics else (False,):
            result = run_core_bench(
                cast("Peers", kind),
                workers=workers,
                window=window,
                requests=requests,
                metrics=measured,
            )
            name = f"{kind}+metrics" if measured else kind
            click.echo(
                f"{name:<22}{result.requests_per_second:>12,.0f}{result.us_per_request:>12.2f}"
            )


def _progress_line(text: str) -> None:
    click.echo(f"\r{text:<60}", nl=False, err=True)


@cli.group("bench-peer", hidden=True)
def bench_peer() -> None:
    """The processes ``zmqrelay bench`` starts."""


@bench_peer.command("proxy")
def bench_proxy() -> None:
    """LibZMQ's proxy on free loopback ports."""
    serve_proxy()


@bench_peer.command("python-loop")
def bench_python_loop() -> None:
    """A plain synchronous pyzmq relay on free loopback ports."""
    serve_python_loop()


@bench_peer.command("python-lb")
def bench_python_lb() -> None:
    """The guide's load-balancing broker, written plainly with pyzmq."""
    serve_python_lb()


@bench_peer.command("python-lb-lowlevel")
def bench_python_lb_lowlevel() -> None:
    """The guide's load-balancing broker in plain pyzmq, with low-level frame calls."""
    serve_python_lb_lowlevel()


@bench_peer.command("majortomo")
def bench_majortomo() -> None:
    """The majortomo package's Majordomo broker on a free loopback port."""
    serve_majortomo()


@bench_peer.command("nats")
def bench_nats() -> None:
    """NATS's server on a free loopback port (for comparison; needs nats-server)."""
    serve_nats()


@bench_peer.command("worker")
@click.argument("kind")
@click.argument("endpoint")
@click.argument("concurrency", type=int)
@click.argument("work", type=float)
@click.argument("sockets", type=int, default=1)
def bench_worker(kind: str, endpoint: str, concurrency: int, work: float, sockets: int) -> None:
    """An echo worker."""
    serve_echo(kind, endpoint, concurrency, work, sockets)


@bench_peer.command("client")
@click.argument("kind")
@click.argument("endpoint")
@click.argument("window", type=int)
@click.argument("size", type=int)
@click.argument("warmup", type=float)
@click.argument("duration", type=float)
@click.argument("latencies")
def bench_client(
    kind: str, endpoint: str, window: int, size: int, warmup: float, duration: float,
    latencies: str,
) -> None:  # fmt: skip
    """A pipelined load client."""
    generate_load(kind, endpoint, window, size, warmup, duration, latencies)


def _run(function: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run ``function`` on the CLI's event loop; zmqrelay's errors end it in one line, status 1."""
    with _usage_errors():
        options = backend_options()
    with _one_line_errors():
        return run_on_event_loop(function, *args, options=options)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Report zmqrelay's errors as a one-line message and exit status 1, without a traceback."""
    try:
        yield
    except ZmqRelayError as exc:
        _fail(exc, exc)
    except BaseExceptionGroup as group:
        ours, rest = group.split(ZmqRelayError)
        if ours is None or rest is not None:
            raise
        first = ours.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        _fail(first, group)


def _fail(error: BaseException, cause: BaseException) -> NoReturn:
    """Exit with status 1 after saying why on one line: a log record when logging JSON."""
    message = f"{type(error).__name__}: {error}"
    if formats_json():
        logger.error(message, extra={"error": type(error).__name__})
        raise click.exceptions.Exit(1) from cause
    raise click.ClickException(message) from cause


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Report an option's bad value, or a missing extra, as a usage error."""
    try:
        yield
    except (ValueError, ImportError) as exc:
        raise click.UsageError(str(exc)) from exc


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``zmqrelay`` console script and ``python -m zmqrelay``."""
    cli.main(args=argv, prog_name="zmqrelay")
