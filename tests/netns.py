"""Several hosts on this machine: network namespaces joined by veth links to a bridge.

A :class:`Network` makes a namespace for the bridge and one per host; each host has a loopback
that is up and an ``eth0`` with its own address in ``10.77.0.0/24``, joined by a veth pair to
the bridge (its other end, ``hN``, is a port of the bridge, inside the bridge's namespace).
Nothing is made in the machine's own namespace, so deleting the namespaces deletes every link.

Processes run inside a host with ``ip netns exec``; a host's link can be cut (its bridge port
down, as a pulled cable: nothing tells the host's sockets) or its packets dropped (a
``blackhole`` qdisc on both ends of its veth pair), and brought back.

Names carry this process's PID and a random token, so that parallel and crashed runs never
collide. :meth:`Network.close` stops every process it started (SIGKILL, by PID) and deletes
every namespace it made (by name), whatever happened before; processes also get SIGKILL if the
test process dies (``PR_SET_PDEATHSIG``), so a crashed run leaves no process behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

SUBNET = "10.77.0"
PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostpeer.py")
"""The program that runs workers and clients inside a host (see ``hostpeer.py``)."""

Cut = Literal["down", "drop"]

_PR_SET_PDEATHSIG = 1


def unavailable() -> str | None:
    """Why hosts cannot be made on this machine, or None if they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making network namespaces needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "making network namespaces needs iproute2's ip command"
    probe = f"zrprobe{os.getpid()}x{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        veth = subprocess.run(
            [
                "ip",
                "-n",
                probe,
                "link",
                "add",
                "name",
                "probe0",
                "type",
                "veth",
                "peer",
                "name",
                "probe1",
            ],
            capture_output=True,
            text=True,
        )
        if veth.returncode != 0:
            return f"ip link add ... type veth failed: {veth.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _tc(namespace: str, *args: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "tc", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {namespace}: {done.stderr.strip()}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Process:
    """A process started in a host; its output is read as it comes, line by line."""

    def __init__(self, host: Host, name: str, args: Sequence[str]) -> None:
        self.host = host
        self.name = name
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PYTHONUNBUFFERED": "1",
        }
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.popen.stdout, self.stdout),
                (self.popen.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid} on {self.host.name}>"

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, pattern: str, timeout: float, *, stream: str = "stdout", count: int = 1
    ) -> re.Match[str]:
        """The ``count``-th line of ``stream`` that matches ``pattern``, once printed."""
        lines = self.stdout if stream == "stdout" else self.stderr
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [m for m in map(compiled.search, lines) if m]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reading()):
                    raise AssertionError(
                        f"{self!r} printed no line matching {pattern!r} "
                        f"(exit status {self.popen.poll()}); stdout: {self.stdout[-10:]}, "
                        f"stderr: {self.stderr[-10:]}"
                    )
                self._changed.wait(min(left, 0.5))

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def kill(self) -> None:
        """SIGKILL, as a crash would, and wait for it to be gone."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def finish(self, timeout: float) -> dict[str, Any]:
        """SIGTERM, then the JSON document it prints last, once it has exited."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self!r} did not exit within {timeout} s of SIGTERM; stderr: {self.stderr[-10:]}"
            ) from None
        for reader in self._readers:
            reader.join(5)
        if status != 0:
            raise AssertionError(f"{self!r} exited with status {status}: {self.stderr[-20:]}")
        document: dict[str, Any] = json.loads(self.stdout[-1])
        return document


class Host:
    """One host: a network namespace with ``eth0`` at :attr:`address` on the bridge."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.network = network
        self.name = name
        self.index = index
        self.namespace = f"{network.tag}-{name}"
        self.address = f"{SUBNET}.{index}"
        self.port = f"h{index}"
        """The bridge's end of this host's link."""

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"

    def endpoint(self, port: int) -> str:
        """``tcp://ADDRESS:PORT`` on this host."""
        return f"tcp://{self.address}:{port}"

    def start(self, name: str, *args: str) -> Process:
        """Run ``args`` inside this host (stopped by :meth:`Network.close` at the latest)."""
        process = Process(self, name, args)
        self.network.processes.append(process)
        return process

    def python(self, name: str, *args: str) -> Process:
        """Run this Python, with the test process's import path, inside this host."""
        return self.start(name, sys.executable, *args)

    def run(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside this host to the end; its exit status is not checked."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )

    def peer(self, name: str, *args: str) -> Process:
        """Run ``hostpeer.py`` (a worker, a client or an embedding application) here."""
        return self.python(name, PEER, *args, "--name", name)

    def broker(
        self, name: str, *options: str, frontend: int = 5559, backend: int = 5560
    ) -> Process:
        """``python -m zmqrelay broker`` bound to this host's address; returns once serving."""
        process = self.python(
            name,
            "-m",
            "zmqrelay",
            "broker",
            "--frontend",
            self.endpoint(frontend),
            "--backend",
            self.endpoint(backend),
            *options,
        )
        process.wait_for("serving: clients connect to", 20, stream="stderr")
        return process

    def cut(self, how: Cut = "down") -> None:
        """Cut this host off: its bridge port down, or every packet dropped both ways."""
        if how == "down":
            _ip("-n", self.network.bridge, "link", "set", self.port, "down")
        else:
            _tc(self.network.bridge, "qdisc", "add", "dev", self.port, "root", "blackhole")
            _tc(self.namespace, "qdisc", "add", "dev", "eth0", "root", "blackhole")

    def restore(self, how: Cut = "down") -> None:
        """Undo :meth:`cut`."""
        if how == "down":
            _ip("-n", self.network.bridge, "link", "set", self.port, "up")
        else:
            _tc(self.network.bridge, "qdisc", "del", "dev", self.port, "root")
            _tc(self.namespace, "qdisc", "del", "dev", "eth0", "root")


class Network:
    """Hosts on one bridge; :meth:`close` removes all of it (use :func:`network`)."""

    def __init__(self) -> None:
        self.tag = f"zrt{os.getpid()}x{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.processes: list[Process] = []
        self.hosts: dict[str, Host] = {}
        try:
            self.bridge = self._namespace("bridge")
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Network {self.tag}: {', '.join(map(repr, self.hosts.values()))}>"

    def _namespace(self, name: str) -> str:
        namespace = f"{self.tag}-{name}"
        _ip("netns", "add", namespace)
        self.namespaces.append(namespace)  # from here on, close() deletes it
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def host(self, name: str) -> Host:
        """A new host, ``eth0`` up at the next address and joined to the bridge."""
        host = Host(self, name, len(self.hosts) + 1)
        self._namespace(name)
        self.hosts[name] = host
        _ip("-n", self.bridge, "link", "add", host.port, "type", "veth",
            "peer", "name", "eth0", "netns", host.namespace)  # fmt: skip
        _ip("-n", self.bridge, "link", "set", host.port, "master", "br0", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        """Stop every process (SIGKILL, by PID) and delete every namespace (by name)."""
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
        for process in self.processes:
            process.popen.wait(10)
            for stream in (process.popen.stdout, process.popen.stderr):
                if stream is not None:
                    stream.close()
        errors = []
        for namespace in reversed(self.namespaces):
            done = subprocess.run(
                ["ip", "netns", "del", namespace], capture_output=True, text=True
            )
            if done.returncode != 0:
                errors.append(f"{namespace}: {done.stderr.strip()}")
        if errors:
            raise RuntimeError(f"namespaces not deleted: {errors}")


@contextmanager
def network() -> Iterator[Network]:
    """A :class:`Network`, removed on the way out however the block ends."""
    made = Network()
    try:
        yield made
    finally:
        made.close()


def namespaces() -> set[str]:
    """The names of the machine's network namespaces."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
