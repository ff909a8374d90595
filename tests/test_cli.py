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
from collections import Counter
from collections.abc import AsyncIterator
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
    assert result.exit_code == 2
    assert "a file name without a directory" in result.output
    assert list(tmp_path.parent.glob("alice.key*")) == []


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
        assert run["client_cpu_seconds"] > 0


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
