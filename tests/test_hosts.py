"""Brokers, workers and clients on several hosts: network namespaces joined by a bridge.

Each test builds its hosts with ``netns.py`` (every namespace and process removed afterwards),
runs the processes of a topology in them, then kills a broker, cuts a host's link and brings
it back. Every request is counted: each one a client sent ended in a reply to it or in a typed
error, none was answered with another's reply, none waited past its timeout. How long the
clients took to notice and to be served again is printed. Without root or ``ip`` the tests
skip, saying why.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import zmqrelay.errors
from netns import Cut, Host, Network, Process, namespaces, network, unavailable

TIMEOUT = 1.0
"""The clients' request timeout, in seconds."""
START = 30.0
"""Seconds a process may take to start on a loaded machine."""

TYPED = {
    name
    for name, value in inspect.getmembers(zmqrelay.errors, inspect.isclass)
    if issubclass(value, zmqrelay.errors.ZmqRelayError)
}


@pytest.fixture(scope="module")
def hosts_available() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no hosts on this machine: {reason}")


@pytest.fixture
def net(hosts_available: None) -> Iterator[Network]:
    with network() as made:
        yield made


def _figures(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Print what a scenario measured, past pytest's capture."""
    with capsys.disabled():
        print(f"\n{text}", file=sys.stderr)


def _counted(report: dict[str, Any], longest: float = TIMEOUT) -> dict[str, int]:
    """Check that a client accounted for every request; its outcomes by kind.

    ``longest``: the time a request may take before it ends, the client's timeout unless it
    retries.
    """
    outcomes: dict[str, int] = report["outcomes"]
    assert report["sent"] == report["finished"] == sum(outcomes.values()), report["name"]
    assert "misdelivered" not in outcomes, outcomes
    assert set(outcomes) - {"ok"} <= TYPED, outcomes
    assert report["longest"] < longest + 1.0, report["name"]  # none hung past its timeout
    return outcomes


def _at(process: Process, state: str, after: float = 0.0) -> float:
    """The time on the first ``served``, ``failing``, ``steady``, ``taking N`` or ``link N
    STATE`` line after ``after``."""
    count = 1
    while True:
        when = float(process.wait_for(rf"^{state} (\S+)$", START, count=count)[1])
        if when > after:
            return when
        count += 1


def _client(host: Host, name: str, *endpoints: str, extra: tuple[str, ...] = ()) -> Process:
    options = [option for endpoint in endpoints for option in ("--endpoint", endpoint)]
    return host.peer(name, "client", *options, "--timeout", str(TIMEOUT), *extra)


def _worker(
    host: Host, name: str, *endpoints: str, kind: str = "sockets", extra: tuple[str, ...] = ()
) -> Process:
    options = [option for endpoint in endpoints for option in ("--endpoint", endpoint)]
    return host.peer(name, "worker", *options, "--kind", kind, *extra)


def _spread(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3f} s" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}-{high:.3f} s"


def _failures_between(report: dict[str, Any], start: float, end: float) -> int:
    return sum(
        1 for _, done, outcome in report["timeline"] if start <= done < end and outcome != "ok"
    )


@pytest.mark.timeout(60)
def test_hosts_reach_each_other_until_cut_and_leave_nothing_behind(
    hosts_available: None,
) -> None:
    listen = (
        "import socket, sys\n"
        "server = socket.create_server(('0.0.0.0', 7000))\n"
        "print('listening', flush=True)\n"
        "while True:\n"
        "    server.accept()[0].close()\n"
    )
    connect = "import socket, sys; socket.create_connection((sys.argv[1], 7000), timeout=0.5)"
    with network() as net:
        server_host, client_host = net.host("server"), net.host("client")
        server = server_host.python("listener", "-c", listen)
        server.wait_for("listening", START)

        def reaches() -> bool:
            done = client_host.run(sys.executable, "-c", connect, server_host.address)
            return done.returncode == 0

        assert reaches()
        cuts: tuple[Cut, ...] = ("down", "drop")
        for how in cuts:
            server_host.cut(how)
            assert not reaches(), how
            server_host.restore(how)
            assert reaches(), how
        made, pids = set(net.namespaces), [process.pid for process in net.processes]
        assert made <= namespaces()
    assert not made & namespaces()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(90)
def test_relay_brokers_share_workers_through_a_broker_kill_and_a_cut_link(
    net: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two relay brokers, two worker hosts whose workers serve both, a client on each broker.

    A worker has one DEALER per broker: one DEALER connected to both would send half its
    replies to the broker that did not send the request (DEALER sends round-robin).
    """
    b1, b2, w1, w2, c = (net.host(name) for name in ("b1", "b2", "w1", "w2", "c"))
    brokers = {host: host.broker(f"broker-{host.name}") for host in (b1, b2)}
    backends = (b1.endpoint(5560), b2.endpoint(5560))
    workers = [_worker(host, f"worker-{host.name}", *backends) for host in (w1, w2)]
    first = _client(c, "client-b1", b1.endpoint(5559))
    second = _client(c, "client-b2", b2.endpoint(5559))
    for process in (*workers, first, second):
        process.wait_for("ready", START)
    _at(first, "served")
    _at(second, "served")
    for worker in workers:  # both workers serve both brokers before anything breaks
        worker.wait_for("^taking 0 ", START)
        worker.wait_for("^taking 1 ", START)

    killed = time.monotonic()
    brokers[b1].kill()
    noticed_kill = _at(first, "failing", killed) - killed
    restarted = time.monotonic()
    brokers[b1] = b1.broker("broker-b1-again")
    back_after_restart = _at(first, "steady", restarted) - restarted

    cut = time.monotonic()
    b1.cut()
    noticed_cut = _at(first, "failing", cut) - cut
    restored = time.monotonic()
    b1.restore()
    back_after_restore = _at(first, "steady", restored) - restored

    reports = [process.finish(START) for process in (first, second)]
    served = [worker.finish(START) for worker in workers]
    outcomes = [_counted(report) for report in reports]
    assert set(outcomes[1]) == {"ok"}  # the other broker's client never noticed a thing
    for counts in served:  # the pool served both brokers
        assert len([n for n in counts["by_socket"].values() if n]) == 2, counts
    _figures(
        capsys,
        f"relay, 2 brokers: kill noticed by b1's client after {noticed_kill:.2f} s, served "
        f"{back_after_restart:.2f} s after the restart; cut noticed after {noticed_cut:.2f} s, "
        f"served {back_after_restore:.2f} s after the link came back; b1's client: "
        f"{dict(outcomes[0])}, b2's: {dict(outcomes[1])}",
    )


@pytest.mark.timeout(90)
def test_embedded_brokers_share_workers_through_an_app_kill_and_a_cut_worker(
    net: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each application host runs a Broker and its own client; workers connect to all."""
    a1, a2, w1, w2 = (net.host(name) for name in ("a1", "a2", "w1", "w2"))
    apps = [
        _client(
            host,
            f"app-{host.name}",
            host.endpoint(5559),
            extra=("--embed", host.endpoint(5559), host.endpoint(5560)),
        )
        for host in (a1, a2)
    ]
    backends = (a1.endpoint(5560), a2.endpoint(5560))
    workers = [_worker(host, f"worker-{host.name}", *backends) for host in (w1, w2)]
    for process in (*workers, *apps):
        process.wait_for("ready", START)
    for app in apps:
        _at(app, "served")
    for worker in workers:  # both workers serve both applications before anything breaks
        worker.wait_for("^taking 0 ", START)
        worker.wait_for("^taking 1 ", START)

    killed = time.monotonic()
    apps[0].kill()  # the other application and the workers carry on
    cut = time.monotonic()
    w1.cut()  # relay mode knows nothing of workers: what it sends to w1 is lost until back
    noticed_cut = _at(apps[1], "failing", cut) - cut
    restored = time.monotonic()
    w1.restore()
    back = _at(apps[1], "steady", restored) - restored

    report = apps[1].finish(START)
    for worker in workers:
        worker.finish(START)
    outcomes = _counted(report)
    assert _failures_between(report, killed, cut) == 0  # the other app's death cost it nothing
    _figures(
        capsys,
        f"embedded relay brokers: a cut worker host noticed after {noticed_cut:.2f} s, served "
        f"without errors {back:.2f} s after it came back; the surviving app: {dict(outcomes)}",
    )


CLIENT_HEARTBEATS = ("--heartbeat-interval", "0.05", "--heartbeat-timeout", "0.3")
"""The clients' heartbeats, as ``tests/test_multi_client.py`` measured them."""
WORKER_HEARTBEAT = "0.5"
"""Seconds between heartbeats of load-balancing brokers and workers (3 intervals: gone)."""
HELD_CUT = 2.0
"""Seconds a cut lasts at least: past the workers' and the brokers' liveness (1.5 s)."""
RETRY_LONGEST = 3 * TIMEOUT + 0.1 + 0.2 + 0.4
"""The longest a request retried by the default ``RetryPolicy`` may take: 3 attempts and
the backoffs between them (with their jitter)."""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["relay", "load-balancing"])
def test_clients_given_both_brokers_fail_over_through_a_kill_and_a_cut_link(
    net: Network, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """Two broker hosts before a shared pool; clients given both frontends.

    Every worker is one ``AsyncWorker`` given both backends: it has a socket per broker, and
    in load-balancing mode registers with each.
    Two clients on one host are each given both frontends, one with the default
    ``RetryPolicy``, one without. Broker b1 is killed under load and restarted, then its host
    is cut off (long enough for everybody to judge everybody else gone) and brought back.
    """
    b1, b2, w1, w2, c = (net.host(name) for name in ("b1", "b2", "w1", "w2", "c"))
    balancing = mode == "load-balancing"
    options = ("--mode", mode, "--heartbeat-interval", WORKER_HEARTBEAT) if balancing else ()
    brokers = {host: host.broker(f"broker-{host.name}", *options) for host in (b1, b2)}
    frontends = (b1.endpoint(5559), b2.endpoint(5559))
    backends = (b1.endpoint(5560), b2.endpoint(5560))
    workers = [
        _worker(host, f"worker-{host.name}", *backends, kind="async", extra=("--mode", mode))
        for host in (w1, w2)
    ]
    retrying = _client(c, "client-retry", *frontends, extra=(*CLIENT_HEARTBEATS, "--retry"))
    plain = _client(c, "client", *frontends, extra=CLIENT_HEARTBEATS)
    clients = (retrying, plain)
    for process in (*workers, *clients):
        process.wait_for("ready", START)
    for client in clients:
        _at(client, "served")
        _at(client, "link 0 up")
        _at(client, "link 1 up")
    for worker in workers:  # both workers serve both brokers before anything breaks
        _at(worker, "taking 0")
        _at(worker, "taking 1")

    killed = time.monotonic()
    brokers[b1].kill()
    dropped_killed = [_at(client, "link 0 down", killed) - killed for client in clients]
    restarted = time.monotonic()
    brokers[b1] = b1.broker("broker-b1-again", *options)
    serving = time.monotonic()
    taken_back = [_at(client, "link 0 up", restarted) - serving for client in clients]
    rejoined = [_at(worker, "taking 0", restarted) - serving for worker in workers]

    cut = time.monotonic()
    b1.cut()
    dropped_cut = [_at(client, "link 0 down", cut) - cut for client in clients]
    time.sleep(max(0.0, cut + HELD_CUT - time.monotonic()))  # a cut, held: nothing to wait on
    restored = time.monotonic()
    b1.restore()
    taken_back_cut = [_at(client, "link 0 up", restored) - restored for client in clients]
    rejoined_cut = [_at(worker, "taking 0", restored) - restored for worker in workers]

    reports = [client.finish(START) for client in clients]
    registrations = [worker.finish(START)["links"][0]["registrations"] for worker in workers]
    if balancing:  # with b1's first life, its second, and after the cut
        assert min(registrations) >= 3, registrations
    retried, unretried = _counted(reports[0], RETRY_LONGEST), _counted(reports[1])
    for report in reports:  # the lost broker held requests of each client, ended at once
        assert report["links"][0]["requests_lost"] > 0, report["links"]
    assert "BrokerLost" not in retried, retried  # the other broker answered them
    assert unretried.get("BrokerLost", 0) > 0, unretried
    _figures(
        capsys,
        f"{mode}, clients given 2 brokers: b1 killed: out of use after "
        f"{_spread(dropped_killed)}, taken back {_spread(taken_back)} after the restarted "
        f"broker served, workers taking its requests {_spread(rejoined)} after; b1 cut: out "
        f"of use after {_spread(dropped_cut)}, taken back {_spread(taken_back_cut)} after the "
        f"link came back ({HELD_CUT:.0f} s later), workers taking its requests "
        f"{_spread(rejoined_cut)} after (READY sent to b1: {registrations}); with retries: "
        f"{dict(retried)} (lost with b1: {reports[0]['links'][0]['requests_lost']}), "
        f"without: {dict(unretried)}",
    )
