from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process
from click.testing import CliRunner

from peers import echo_handler
from zmqrelay import AsyncWorker, Broker, CurveKeyPair
from zmqrelay.cli import cli
from zmqrelay.testing import LeakCheckingContext

ZMQRELAY = [sys.executable, "-m", "zmqrelay"]


def test_demo_runs_the_seed_scenario_and_exits_0() -> None:
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    served = re.findall(
        r"client-(\d) request +\d+: Hello -> World  \(served by (worker-\d)\)", result.output
    )
    assert len(served) == 20
    assert Counter(client for client, _ in served) == {"1": 10, "2": 10}
    assert {worker for _, worker in served} == {"worker-1", "worker-2", "worker-3"}
    assert "20 of 20 requests answered 'World'" in result.output


def test_demo_over_tcp() -> None:
    result = CliRunner().invoke(cli, ["demo", "--transport", "tcp", "--requests", "3"])
    assert result.exit_code == 0, result.output
    assert "6 of 6 requests answered 'World'" in result.output


def test_request_without_a_broker_fails_with_a_typed_timeout() -> None:
    result = CliRunner().invoke(
        cli, ["request", "--connect", "tcp://127.0.0.1:9", "--timeout", "0.05", "Hello"]
    )
    assert result.exit_code == 1
    assert "RequestTimeout" in result.output


def test_an_invalid_endpoint_is_reported_not_raised() -> None:
    result = CliRunner().invoke(
        cli, ["broker", "--frontend", "nonsense", "--backend", "inproc://b"]
    )
    assert result.exit_code == 1
    assert "cannot bind 'nonsense'" in result.output


async def _line_containing(stream: ByteReceiveStream, marker: bytes) -> bytes:
    buffer = b""
    with anyio.fail_after(20):
        while marker not in buffer:
            buffer += await stream.receive()
    return next(line for line in buffer.splitlines() if marker in line)


async def _stop(process: Process, signum: signal.Signals) -> int:
    process.send_signal(signum)
    with anyio.fail_after(20):
        return await process.wait()


async def _count(body: bytes) -> AsyncIterator[bytes]:
    for n in range(int(body)):
        yield b"part %d" % n


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["zmqrelay", "mdp-0.2"])
async def test_request_names_a_service_and_prints_a_streamed_reply_part_by_part(
    context: LeakCheckingContext, protocol: str
) -> None:
    broker = Broker(
        frontend="tcp://127.0.0.1:0",
        backend="tcp://127.0.0.1:0",
        mode="load-balancing",
        context=context,
    )
    async with (
        broker,
        AsyncWorker(broker.endpoints.backend, _count, service="count", context=context),
    ):
        command = [*ZMQRELAY, "request", "--timeout", "30", "--connect", broker.endpoints.frontend]
        result = await anyio.run_process(
            [*command, "--service", "count", "--protocol", protocol, "3"]
        )
    assert result.stdout == b"part 0\npart 1\npart 2\n"


@pytest.mark.asyncio
async def test_request_to_a_service_no_worker_offers_prints_the_brokers_refusal(
    context: LeakCheckingContext,
) -> None:
    """With every default, the broker's NoWorkers comes before the command's own timeout."""
    broker = Broker(
        frontend="tcp://127.0.0.1:0",
        backend="tcp://127.0.0.1:0",
        context=context,
        mode="load-balancing",
    )
    async with broker:
        command = [*ZMQRELAY, "request", "--connect", broker.endpoints.frontend, "-s", "resize"]
        result = await anyio.run_process([*command, "x"], check=False)
    assert result.returncode == 1
    assert b"NoWorkers" in result.stderr
    assert b"(service 'resize')" in result.stderr


def test_broker_help_names_both_modes() -> None:
    result = CliRunner().invoke(cli, ["broker", "--help"])
    assert result.exit_code == 0
    assert "Run a broker (relay or load-balancing" in result.output


def test_a_majordomo_request_needs_a_service() -> None:
    result = CliRunner().invoke(cli, ["request", "--protocol", "majortomo", "Hello"])
    assert result.exit_code == 2
    assert "--service" in result.output


@pytest.mark.asyncio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_broker_command_serves_and_stops_on_a_signal(
    context: LeakCheckingContext, signum: signal.Signals
) -> None:
    env = {**os.environ, "ZMQRELAY_FRONTEND": "tcp://127.0.0.1:0"}
    command = [*ZMQRELAY, "broker", "--backend", "tcp://127.0.0.1:0"]
    process = await anyio.open_process(command, env=env, stdout=None)
    try:
        assert process.stderr is not None
        line = await _line_containing(process.stderr, b"serving:")
        frontend, backend = re.findall(rb"tcp://127\.0\.0\.1:\d+", line)
        served: Counter[str] = Counter()
        async with AsyncWorker(backend.decode(), echo_handler("w", served), context=context):
            result = await anyio.run_process(
                # A generous timeout: on a loaded machine the process alone starts slowly.
                [*ZMQRELAY, "request", "--timeout", "30", "--connect", frontend.decode(), "Hello"]
            )
        assert result.stdout == b"World Hello\n"
        assert await _stop(process, signum) == 0
        assert b"broker stopped" in await process.stderr.receive()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


def test_keys_generate_writes_a_pair_and_never_overwrites_it(tmp_path: Path) -> None:
    folder = tmp_path / "clients"
    result = CliRunner().invoke(cli, ["keys", "generate", str(folder), "alice"])
    assert result.exit_code == 0, result.output
    public, secret = folder / "alice.key", folder / "alice.key_secret"
    assert result.output.splitlines() == [str(public), str(secret)]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pair = CurveKeyPair.load(secret)
    assert pair.secret
    assert CurveKeyPair.load(public) == CurveKeyPair(pair.public)
    before = public.read_bytes(), secret.read_bytes()

    again = CliRunner().invoke(cli, ["keys", "generate", str(folder), "alice"])
    assert again.exit_code == 1
    assert f"Error: {public} exists" in again.output
    assert (public.read_bytes(), secret.read_bytes()) == before

    public.unlink()  # half a pair is not overwritten either
    assert CliRunner().invoke(cli, ["keys", "generate", str(folder), "alice"]).exit_code == 1
    assert secret.read_bytes() == before[1]


def test_keys_generate_takes_a_plain_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keys", "generate", str(tmp_path), "../alice"])
    assert result.exit_code == 1
    assert "a file name, without a directory" in result.output
    assert list(tmp_path.parent.glob("alice.key*")) == []


def _garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('curve\n    public-key = "not a key"\n')
    return path


@pytest.mark.parametrize("bad", ["secret key", "public key only", "client key", "policy"])
def test_broker_with_a_bad_key_file_or_policy_fails_at_start_naming_it(
    tmp_path: Path, bad: str
) -> None:
    public, secret = CurveKeyPair.create(tmp_path / "broker", "broker")
    clients = _key_pairs(tmp_path / "clients", "alice")
    policy = tmp_path / "policy.toml"
    policy.write_text("[clients]\nalice = ['echo']\n")
    if bad == "secret key":
        named = secret = _garbage(tmp_path / "garbage.key_secret")
    elif bad == "public key only":
        named = secret = public
    elif bad == "client key":
        named = _garbage(clients / "mallory.key")
    else:
        named = policy
        policy.write_text("[clients]\nalice = ['echo'\n")
    options = ["--frontend", "inproc://front", "--backend", "inproc://back"]
    options += ["--mode", "load-balancing", "--curve-secret-key", str(secret)]
    options += ["--client-keys", str(clients), "--authorization", str(policy)]
    result = CliRunner().invoke(cli, ["broker", *options])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ")
    assert str(named) in line


def test_request_needs_both_curve_keys(tmp_path: Path) -> None:
    _, secret = CurveKeyPair.create(tmp_path, "alice")
    result = CliRunner().invoke(cli, ["request", "--curve-key", str(secret), "Hello"])
    assert result.exit_code == 2
    assert "CURVE needs both --curve-key and --curve-server-key" in result.output


class _Log:
    """A process's standard error, read line by line as far as a test waits."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self.text = b""
        self._read = 0

    async def line(self, marker: bytes) -> bytes:
        """The next line holding ``marker``, after those returned so far."""
        with anyio.fail_after(20):
            while True:
                end = self.text.find(b"\n", self._read)
                while end != -1:
                    line, self._read = self.text[self._read : end], end + 1
                    if marker in line:
                        return line
                    end = self.text.find(b"\n", self._read)
                self.text += await self._stream.receive()

    async def rest(self) -> bytes:
        """What the process writes after the last line returned, until it closes the stream."""
        with anyio.fail_after(20):
            async for chunk in self._stream:
                self.text += chunk
        return self.text[self._read :]


@dataclass
class _BrokerProcess:
    process: Process
    log: _Log
    frontend: str
    backend: str


@asynccontextmanager
async def _broker_process(
    *options: str, env: dict[str, str] | None = None
) -> AsyncIterator[_BrokerProcess]:
    """``zmqrelay broker`` on free loopback ports, serving; killed on the way out if need be."""
    command = [*ZMQRELAY, "broker", "--frontend", "tcp://127.0.0.1:0"]
    command += ["--backend", "tcp://127.0.0.1:0", *options]
    process = await anyio.open_process(command, env={**os.environ, **(env or {})}, stdout=None)
    try:
        assert process.stderr is not None
        log = _Log(process.stderr)
        line = await log.line(b"serving:")
        frontend, backend = (found.decode() for found in re.findall(rb"tcp://[\d.]+:\d+", line))
        yield _BrokerProcess(process, log, frontend, backend)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def _stop_broker(broker: _BrokerProcess) -> bytes:
    """Stop the broker with SIGTERM; what it logged from then on (it must exit with 0)."""
    status = await _stop(broker.process, signal.SIGTERM)
    rest = await broker.log.rest()
    assert status == 0, broker.log.text.decode()
    return rest


async def _request_as(
    broker: _BrokerProcess, keys: Path, name: str, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """``zmqrelay request Hello`` with the key pair ``keys/NAME.key_secret``.

    The broker's key comes from the environment, to try that way too.
    """
    command = [*ZMQRELAY, "request", "--connect", broker.frontend, "--timeout", str(timeout)]
    command += ["--curve-key", str(keys / f"{name}.key_secret"), "Hello"]
    env = {**os.environ, "ZMQRELAY_CURVE_SERVER_KEY": str(keys / "broker.key")}
    with anyio.fail_after(timeout + 20):  # the process starts slowly on a loaded machine
        return await anyio.run_process(command, env=env, check=False)


def _assert_served(result: subprocess.CompletedProcess[bytes]) -> None:
    assert (result.returncode, result.stdout) == (0, b"World Hello\n"), result.stderr


def _assert_refused(result: subprocess.CompletedProcess[bytes]) -> None:
    """The request timed out: a CURVE client refused by the broker hears nothing back."""
    assert result.returncode == 1, result.stdout
    assert b"RequestTimeout" in result.stderr, result.stderr


def _key_pairs(folder: Path, *names: str) -> Path:
    """Create NAME.key and NAME.key_secret in ``folder`` for each name; ``folder``."""
    for name in names:
        CurveKeyPair.create(folder, name)
    return folder


def _refusals(log: bytes) -> dict[str, int]:
    """The peers refused, from the statistics a broker logs when it stops."""
    (line,) = (line for line in log.splitlines() if b"broker stopped" in line)
    return {key.decode(): int(value) for key, value in re.findall(rb"(\w+_refused)=(\d+)", line)}


@pytest.mark.asyncio
async def test_curve_broker_serves_the_keys_it_allows_and_refuses_others(
    context: LeakCheckingContext, tmp_path: Path
) -> None:
    keys = _key_pairs(tmp_path / "keys", "broker", "alice", "mallory", "w")
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "w.key").write_bytes((keys / "w.key").read_bytes())
    options = ["--curve-secret-key", str(keys / "broker.key_secret")]
    options += ["--worker-keys", str(workers), "--handshake-timeout", "2"]
    async with _broker_process(*options, env={"ZMQRELAY_CLIENT_KEYS": str(clients)}) as broker:
        # Logged before the broker reports ready, so before "serving:".
        curve = f"CURVE: clients: 1 keys from {clients}; workers: 1 keys from {workers}"
        assert curve.encode() in broker.log.text
        served: Counter[str] = Counter()
        async with AsyncWorker(
            broker.backend,
            echo_handler("w", served),
            context=context,
            curve_keys=keys / "w.key_secret",
            curve_server_key=keys / "broker.key",
        ):
            _assert_served(await _request_as(broker, keys, "alice"))
            _assert_refused(await _request_as(broker, keys, "mallory", timeout=1))
            mallory = CurveKeyPair.load(keys / "mallory.key").public
            assert b"the last: key " + mallory in await broker.log.line(
                b"client handshakes refused"
            )
        assert served == {"w": 1}
        refused = _refusals(await _stop_broker(broker))
        assert refused["clients_refused"] >= 1  # a client may try its handshake again
        assert refused["workers_refused"] == 0


@pytest.mark.asyncio
async def test_sighup_reloads_the_keys_and_keeps_the_old_ones_when_a_file_is_bad(
    context: LeakCheckingContext, tmp_path: Path
) -> None:
    keys = _key_pairs(tmp_path / "keys", "broker", "alice", "bob", "w")
    clients = tmp_path / "clients"
    clients.mkdir()
    for name in ("alice", "bob"):
        (clients / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    options = ["--curve-secret-key", str(keys / "broker.key_secret")]
    async with _broker_process(*options, "--client-keys", str(clients)) as broker:
        # No --worker-keys: any CURVE worker, and the log says so at the default level.
        assert b"workers: any CURVE key (encrypted, not authenticated)" in broker.log.text
        async with AsyncWorker(
            broker.backend,
            echo_handler("w", Counter()),
            context=context,
            curve_keys=keys / "w.key_secret",
            curve_server_key=keys / "broker.key",
        ):
            _assert_served(await _request_as(broker, keys, "bob"))

            (clients / "bob.key").unlink()
            broker.process.send_signal(signal.SIGHUP)
            await broker.log.line(b"keys reloaded: clients: 1 keys from")
            _assert_refused(await _request_as(broker, keys, "bob", timeout=1))
            bob = CurveKeyPair.load(keys / "bob.key").public
            assert b"the last: key " + bob in await broker.log.line(b"client handshakes refused")
            _assert_served(await _request_as(broker, keys, "alice"))

            _garbage(clients / "eve.key")
            broker.process.send_signal(signal.SIGHUP)
            line = await broker.log.line(b"SIGHUP: KeyFileError")
            assert str(clients / "eve.key").encode() in line
            assert line.endswith(b"still serving with the keys and the policy as they were")
            _assert_served(await _request_as(broker, keys, "alice"))
            _assert_refused(await _request_as(broker, keys, "bob", timeout=1))
        # Refusals are logged at most every 10 s, but all are counted: bob's twice at least.
        assert _refusals(await _stop_broker(broker))["clients_refused"] >= 2


@pytest.mark.asyncio
async def test_sighup_without_curve_has_nothing_to_reload() -> None:
    async with _broker_process() as broker:
        broker.process.send_signal(signal.SIGHUP)
        await broker.log.line(b"SIGHUP: nothing to reload")
        await _stop_broker(broker)  # still running: SIGHUP would have ended it by default


def test_bench_measures_zmqrelay_against_the_proxy() -> None:
    command = [*ZMQRELAY, "bench", "--compare", "proxy", "--warmup", "0.2", "--duration", "0.5"]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    runs = {run["broker"]: run for run in json.loads(result.stdout)}
    assert set(runs) == {"zmqrelay", "proxy"}
    for run in runs.values():
        assert run["requests"] > 0
        assert run["requests_per_second"] == pytest.approx(run["requests"] / run["seconds"])
        assert run["broker_cpu_seconds"] >= 0


def test_bench_runs_every_kind_of_party() -> None:
    command = [
        *ZMQRELAY, "bench", "--broker", "python-loop", "--broker", "zmqrelay-python",
        "--worker-kind", "async", "--client-kind", "async", "--window", "4",
        "--warmup", "0.2", "--duration", "0.4", "--json",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [run["broker"] for run in runs] == ["python-loop", "zmqrelay-python"]
    for run in runs:
        assert run["requests"] > 0
        assert 0 < run["latency_p50_us"] <= run["latency_p99_us"] <= run["latency_p999_us"]
        # Every party is read over the one window the clients count in, however slowly each
        # process started: the Python broker and workers did work in it.
        assert run["client_cpu_seconds"] > 0
        assert run["worker_cpu_seconds"] > 0
        assert run["broker_cpu_seconds"] > 0


def test_bench_says_why_a_rig_whose_peers_do_not_fit_cannot_run() -> None:
    command = [
        *ZMQRELAY, "bench", "--broker", "zmqrelay-lb", "--worker-kind", "async",
        "--client-kind", "async", "--window", "4", "--workers", "1",
        "--warmup", "0.2", "--duration", "0.4",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "NoWorkers" in result.stderr  # the client's own error
    assert result.stderr.rstrip().splitlines()[-1] == (
        "Error: the async client against zmqrelay-lb ended without a result (exit code 1; its "
        "error is above): do --worker-kind async workers speak that broker's protocol?"
    )


def test_bench_names_a_peer_that_never_got_ready() -> None:
    from zmqrelay.bench import _await_ready

    dying = subprocess.Popen(
        [sys.executable, "-c", "print('no such kind')"], stdout=subprocess.PIPE, text=True
    )
    with pytest.raises(RuntimeError, match=rf"a worker \(PID {dying.pid}\) did not start"):
        _await_ready([dying], "worker")
    dying.wait(10)
    assert dying.stdout is not None
    dying.stdout.close()


def test_bench_measures_an_external_broker_command() -> None:
    external = f"{sys.executable} -m zmqrelay broker --frontend {{frontend}} --backend {{backend}}"
    command = [
        *ZMQRELAY, "bench", "--broker-command", external,
        "--warmup", "0.2", "--duration", "0.4", "--json",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["broker"] == "external"
    assert run["requests"] > 0


def test_bench_load_balancing_brokers_with_guide_and_async_workers() -> None:
    common = ["--warmup", "0.2", "--duration", "0.4", "--json", "--work-ms", "0.5"]
    runs: tuple[tuple[str, str, list[str]], ...] = (
        ("python-lb", "guide", []),
        ("python-lb-lowlevel", "guide-c", ["--sockets-per-worker", "4", "--pin"]),
        ("zmqrelay-lb", "async-lb", []),
    )
    for broker, worker, more in runs:
        command = [
            *ZMQRELAY, "bench", "--broker", broker, "--worker-kind", worker, *common, *more
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        (run,) = json.loads(result.stdout)
        assert run["broker"] == broker
        assert run["requests"] > 0


def test_bench_runs_several_brokers_sharing_the_workers_beside_one() -> None:
    common = ["--brokers", "2", "--clients", "2", "--warmup", "0.2", "--duration", "0.4"]
    runs: tuple[tuple[str, str, list[str]], ...] = (
        ("zmqrelay", "c", []),
        ("zmqrelay", "sync", []),
        ("zmqrelay-lb", "guide-c", ["--sockets-per-worker", "4"]),
        ("zmqrelay-lb", "guide", []),
    )
    for broker, worker, more in runs:
        command = [
            *ZMQRELAY, "bench", "--broker", broker, "--worker-kind", worker, *common, *more
        ]  # fmt: skip
        result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        one, two = json.loads(result.stdout)
        assert (one["broker"], two["broker"]) == (broker, f"{broker} x2")
        assert one["requests"] > 0
        assert two["requests"] > 0
    table = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert re.search(r"^zmqrelay-lb x2 +\d+\.\d\dx", table.stdout, re.MULTILINE), table.stdout


def test_bench_majordomo_brokers_with_plain_and_async_majordomo_peers() -> None:
    common = ["--warmup", "0.2", "--duration", "0.4", "--json", "--client-kind", "mdp"]
    runs = (("majortomo", "mdp"), ("zmqrelay-lb", "mdp"), ("zmqrelay-lb", "async-mdp"))
    for broker, worker in runs:
        command = [*ZMQRELAY, "bench", "--broker", broker, "--worker-kind", worker, *common]
        command += ["--sockets-per-worker", "3"] if worker == "mdp" else []
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        (run,) = json.loads(result.stdout)
        assert run["broker"] == broker
        assert run["requests"] > 0


def test_bench_core_feeds_the_balancer_with_every_kind_of_peer() -> None:
    command = [*ZMQRELAY, "bench-core", "--requests", "2000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["guide", "zmqrelay", "majortomo"]
    assert all(float(row[2]) > 0 for row in rows)


def _nats_available() -> bool:
    return shutil.which("nats-server") is not None and importlib.util.find_spec("nats") is not None


@pytest.mark.skipif(not _nats_available(), reason="needs nats-server and nats-py (extra 'bench')")
def test_bench_measures_nats_with_its_own_python_peers() -> None:
    command = [
        *ZMQRELAY, "bench", "--broker", "nats", "--worker-kind", "async-lb",
        "--client-kind", "async", "--window", "8", "--warmup", "0.3", "--duration", "0.5",
        "--json",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["broker"] == "nats"
    assert run["requests"] > 0
    assert run["latency_p50_us"] > 0


@pytest.mark.asyncio
async def test_broker_serves_metrics_on_the_address_given() -> None:
    async with _broker_process(
        "--mode", "load-balancing", "--metrics-address", "127.0.0.1:0"
    ) as broker:
        # Logged before "serving:", once the endpoint is up.
        url = re.findall(rb"metrics served on (http://\S+)", broker.log.text)[0].decode()
        command = [*ZMQRELAY, "request", "--connect", broker.frontend, "-s", "nobody", "x"]
        with anyio.fail_after(60):
            result = await anyio.run_process(command, check=False)
        assert b"NoWorkers" in result.stderr, result.stderr
        scraped = await anyio.to_thread.run_sync(_fetch, url)
        assert 'zmqrelay_requests_total{outcome="no_workers",service="nobody"} 1.0' in scraped
        await _stop_broker(broker)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def test_a_bad_metrics_address_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["broker", "--metrics-address", "9464"])
    assert result.exit_code == 2
    assert "HOST:PORT" in result.output
