"""The service examples of docs/deployment.md: a systemd unit and a Dockerfile.

Neither can be run here (no systemd to start units, no network to build images), so these
tests check what can be checked: the unit is valid for ``systemd-analyze verify`` (when it is
installed), the commands both run take the options they are given, the variables they set are
the broker's, the stop timeouts outlast the drain, and the container's health check passes
against a running broker and fails without one.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parent.parent / "examples" / "deploy"
UNIT = DEPLOY / "zmqrelay-broker.service"
DOCKERFILE = DEPLOY / "Dockerfile"
README = Path(__file__).parent.parent / "README.md"


def _unit() -> dict[str, list[tuple[str, str]]]:
    """The unit's sections, each a list of its ``key=value`` lines (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in UNIT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword, rest.strip()))
    return instructions


def _broker_help(*arguments: str) -> str:
    """``zmqrelay broker ARGUMENTS --help``: the options it takes, and it takes these."""
    command = [sys.executable, "-m", "zmqrelay", *arguments, "--help"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # as one line: click wraps it


def _environment(assignments: list[str]) -> dict[str, str]:
    return dict(assignment.split("=", 1) for assignment in assignments)


def test_the_unit_runs_the_broker_with_its_own_variables_and_outlasts_the_drain() -> None:
    service = _unit()["Service"]
    (start,) = _values(service, "ExecStart")
    program, *arguments = shlex.split(start)
    assert Path(program).name == "zmqrelay"
    assert arguments[0] == "broker"
    usage = _broker_help(*arguments)
    environment = _environment(_values(service, "Environment"))
    assert environment
    for name in environment:
        assert f"env var: {name}" in usage, name
    assert _values(service, "KillSignal") == ["SIGTERM"]
    (stop,) = _values(service, "TimeoutStopSec")
    assert float(stop) > float(environment["ZMQRELAY_DRAIN_TIMEOUT"])
    assert _values(service, "User") not in ([], ["root"])
    assert _values(service, "Restart") == ["on-failure"]
    assert _values(service, "NoNewPrivileges") == ["yes"]
    assert _values(service, "ProtectSystem") == ["strict"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at the one installed here.
    installed = Path(sys.executable).with_name("zmqrelay")
    if not installed.exists():
        pytest.skip(f"no zmqrelay script beside {sys.executable}")
    copy = tmp_path / UNIT.name
    copy.write_text(
        re.sub(r"^ExecStart=\S+", f"ExecStart={installed}", UNIT.read_text(), flags=re.M)
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0, done.stderr
    assert not complaints


def test_the_container_runs_the_broker_as_the_readme_installs_it() -> None:
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    (run,) = [rest for keyword, rest in instructions if keyword == "RUN"]
    assert "python3 -m venv /opt/zmqrelay" in run
    assert "/opt/zmqrelay/bin/pip install --no-cache-dir '/src[metrics]'" in run
    readme = README.read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install ." in readme  # the same steps
    (entrypoint,) = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint[0] == "/opt/zmqrelay/bin/zmqrelay"
    usage = _broker_help(*entrypoint[1:])
    (env,) = [shlex.split(rest) for keyword, rest in instructions if keyword == "ENV"]
    environment = _environment(env)
    for name in environment:
        assert f"env var: {name}" in usage, name
    ports = {
        int(environment[name].rsplit(":", 1)[1])
        for name in ("ZMQRELAY_FRONTEND", "ZMQRELAY_BACKEND", "ZMQRELAY_METRICS_ADDRESS")
    }
    (exposed,) = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    assert {int(port) for port in exposed.split()} == ports
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    (user,) = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user not in ("root", "0")
    # Docker waits 10 s by default before SIGKILL: longer than the drain.
    assert float(environment["ZMQRELAY_DRAIN_TIMEOUT"]) < 10


def _health_check() -> list[str]:
    (healthcheck,) = [rest for keyword, rest in _dockerfile() if keyword == "HEALTHCHECK"]
    command: list[str] = json.loads(healthcheck.partition("CMD ")[2])
    assert command[0] == "/opt/zmqrelay/bin/python"
    return [sys.executable, *command[1:]]


@pytest.mark.timeout(60)
def test_the_containers_health_check_passes_while_the_broker_serves_metrics() -> None:
    check = _health_check()
    assert "http://127.0.0.1:9464/metrics" in check[-1]
    broker = subprocess.Popen(
        [sys.executable, "-m", "zmqrelay", "broker", "--frontend", "tcp://127.0.0.1:0",
         "--backend", "tcp://127.0.0.1:0", "--metrics-address", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert broker.stderr is not None
        for line in broker.stderr:
            served = re.search(r"metrics served on http://127\.0\.0\.1:(\d+)/metrics", line)
            if served:
                break
        else:
            pytest.fail("the broker did not say where it serves its metrics")
        here = [*check[:-1], check[-1].replace("9464", served[1])]
        passed = subprocess.run(here, capture_output=True, timeout=30)
        assert passed.returncode == 0, passed.stderr
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)
        assert broker.stderr is not None
        broker.stderr.close()
    failed = subprocess.run(here, capture_output=True, timeout=30)
    assert failed.returncode != 0
