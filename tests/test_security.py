"""CURVE and authorisation over real sockets: who gets in, who is served, what is counted.

Every attack here must get no request through and must not stop the allowed peers from being
served: unknown keys, a client key on the backend, plain-text peers, handshakes that never
complete, garbage, forbidden services, keys revoked while connected, unreadable key files and
policies.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import zmq
import zmq.asyncio

from peers import eventually
from zmqrelay import (
    AsyncClient,
    AsyncWorker,
    Broker,
    CurveKeyPair,
    Forbidden,
    KeyFileError,
    PolicyError,
    RequestTimeout,
    SecurityStatistics,
)
from zmqrelay._aio.broker import Engine
from zmqrelay._aio.service import Mode
from zmqrelay.testing import LeakCheckingContext

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

KINDS = [("relay", "libzmq"), ("relay", "python"), ("load-balancing", "python")]


@dataclass
class Keys:
    """A broker's key pair, clients alice and bob, worker w1, and mallory, whom nobody knows."""

    root: Path

    def __post_init__(self) -> None:
        for folder, name in [
            ("broker", "broker"),
            ("clients", "alice"),
            ("clients", "bob"),
            ("workers", "w1"),
            ("others", "mallory"),
        ]:
            CurveKeyPair.create(self.root / folder, name)

    def pair(self, folder: str, name: str) -> CurveKeyPair:
        return CurveKeyPair.load(self.root / folder / f"{name}.key_secret")

    @property
    def server(self) -> Path:
        return self.root / "broker" / "broker.key"

    def broker(
        self, context: zmq.asyncio.Context, mode: Mode, engine: Engine, **options: object
    ) -> Broker:
        return Broker(
            frontend="tcp://127.0.0.1:0",
            backend="tcp://127.0.0.1:0",
            context=context,
            mode=mode,
            engine=engine,
            drain_timeout=0,
            curve_secret_key=self.root / "broker" / "broker.key_secret",
            client_keys=self.root / "clients",
            worker_keys=self.root / "workers",
            **options,  # type: ignore[arg-type]
        )

    def client(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        name: str = "alice",
        folder: str = "clients",
        timeout: float = 5.0,
    ) -> AsyncClient:
        return AsyncClient(
            endpoint,
            context=context,
            timeout=timeout,
            curve_keys=self.pair(folder, name),
            curve_server_key=self.server,
        )

    def worker(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        mode: Mode,
        name: str = "w1",
        folder: str = "workers",
        service: str | None = None,
    ) -> AsyncWorker:
        async def shout(request: bytes) -> bytes:
            return request.upper()

        return AsyncWorker(
            endpoint,
            shout,
            context=context,
            mode=mode,
            service=service,
            heartbeat_interval=0.1 if mode == "load-balancing" else 2.5,
            curve_keys=self.pair(folder, name),
            curve_server_key=self.server,
        )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def security(broker: Broker) -> SecurityStatistics:
    stats = broker.statistics().security
    assert stats is not None
    return stats


@pytest.mark.parametrize(("mode", "engine"), KINDS)
async def test_allowed_peers_are_served_and_strangers_are_not(
    context: LeakCheckingContext, keys: Keys, mode: Mode, engine: Engine
) -> None:
    async with (
        keys.broker(context, mode, engine) as broker,
        keys.worker(context, broker.endpoints.backend, mode),
        keys.client(context, broker.endpoints.frontend) as alice,
        # A key the broker does not know, on either side; a worker key used by a client, and
        # a client key used by a worker.
        keys.client(
            context, broker.endpoints.frontend, "mallory", "others", timeout=0.5
        ) as mallory,
        keys.client(
            context, broker.endpoints.frontend, "w1", "workers", timeout=0.5
        ) as worker_key,
        keys.worker(context, broker.endpoints.backend, mode, "mallory", "others"),
        keys.worker(context, broker.endpoints.backend, mode, "bob", "clients"),
    ):
        await eventually(lambda: security(broker).workers_refused >= 2)
        for stranger in (mallory, worker_key):
            with pytest.raises(RequestTimeout):
                await stranger.request(b"let me in")
        await eventually(lambda: security(broker).clients_refused >= 2)
        # The impostor workers never got a request: every one reaches w1.
        for number in range(20):
            assert await alice.request(b"hi %d" % number) == b"HI %d" % number
    stats = security(broker)
    print(f"\n{mode}/{engine}: {stats}")
    assert stats.clients_refused >= 2
    assert stats.workers_refused >= 2


@pytest.mark.parametrize(("mode", "engine"), KINDS)
async def test_plain_text_and_garbage_get_nothing_through(
    context: LeakCheckingContext, keys: Keys, mode: Mode, engine: Engine
) -> None:
    async with (
        keys.broker(context, mode, engine, handshake_timeout=0.5) as broker,
        keys.worker(context, broker.endpoints.backend, mode),
        keys.client(context, broker.endpoints.frontend) as alice,
    ):
        plain = context.socket(zmq.DEALER)
        plain.linger = 0
        plain.connect(broker.endpoints.frontend)
        host, port = broker.endpoints.frontend.removeprefix("tcp://").split(":")
        silent = socket.create_connection((host, int(port)))  # says nothing at all
        noisy = socket.create_connection((host, int(port)))
        noisy.sendall(b"\xff" + bytes(8) + b"\x7f" + b"GET / HTTP/1.1\r\n\r\n" * 10)
        try:
            # Its handshake fails, so libzmq may have no pipe left to queue the request on:
            # a blocking send would wait for ever.
            with contextlib.suppress(zmq.Again):
                await plain.send_multipart([b"", b"plain text"], flags=zmq.NOBLOCK)
            # Each fails its handshake: the plain one, the garbage, the silent one in time.
            await eventually(lambda: security(broker).handshakes_failed >= 3, timeout=10)
            assert await alice.request(b"still served") == b"STILL SERVED"
            assert not await plain.poll(100)
        finally:
            plain.close()
            silent.close()
            noisy.close()


async def test_a_plain_pyzmq_req_client_and_rep_worker_with_curve_work_through_it(
    context: LeakCheckingContext, keys: Keys
) -> None:
    def curve(sock: zmq.asyncio.Socket, pair: CurveKeyPair) -> None:
        sock.curve_serverkey = CurveKeyPair.load(keys.server).public
        sock.curve_publickey, sock.curve_secretkey = pair.public, pair.secret

    async with keys.broker(context, "relay", "libzmq") as broker:
        rep = context.socket(zmq.REP)
        req = context.socket(zmq.REQ)
        try:
            curve(rep, keys.pair("workers", "w1"))
            curve(req, keys.pair("clients", "bob"))
            rep.connect(broker.endpoints.backend)
            req.connect(broker.endpoints.frontend)
            with anyio.fail_after(10):
                await req.send(b"ping")
                assert await rep.recv() == b"ping"
                await rep.send(b"pong")
                assert await req.recv() == b"pong"
        finally:
            rep.close(linger=0)
            req.close(linger=0)


async def test_its_client_and_worker_work_through_any_curve_broker(
    context: LeakCheckingContext, keys: Keys
) -> None:
    """libzmq's own proxy, with CURVE and no ZAP handler, as another broker would be."""
    proxy_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    frontend, backend = proxy_context.socket(zmq.ROUTER), proxy_context.socket(zmq.DEALER)
    secret = keys.pair("broker", "broker").secret
    for sock in (frontend, backend):
        sock.curve_server, sock.curve_secretkey, sock.linger = True, secret, 0
    front = frontend.bind_to_random_port("tcp://127.0.0.1")
    back = backend.bind_to_random_port("tcp://127.0.0.1")
    steering, steered = proxy_context.socket(zmq.PAIR), proxy_context.socket(zmq.PAIR)
    steering.bind("inproc://steer")
    steered.connect("inproc://steer")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                anyio.to_thread.run_sync, zmq.proxy_steerable, frontend, backend, None, steered
            )
            async with (
                keys.worker(context, f"tcp://127.0.0.1:{back}", "relay"),
                keys.client(context, f"tcp://127.0.0.1:{front}") as client,
            ):
                assert await client.request(b"through") == b"THROUGH"
            steering.send(b"TERMINATE")
    finally:
        proxy_context.destroy(linger=0)


POLICY = """
[clients]
alice = ["echo", "mmi.*"]
bob = ["*"]

[workers]
w1 = ["echo"]
"""


async def test_the_policy_decides_who_calls_and_who_serves_what(
    context: LeakCheckingContext, keys: Keys
) -> None:
    (keys.root / "policy.toml").write_text(POLICY)
    CurveKeyPair.create(keys.root / "workers", "w2")  # a worker key the policy gives nothing
    broker = keys.broker(
        context, "load-balancing", "python", authorization=keys.root / "policy.toml",
        heartbeat_interval=0.1, queue_timeout=1,
    )  # fmt: skip
    async with broker:
        w1 = keys.worker(
            context,
            broker.endpoints.backend,
            "load-balancing",
            service="echo",
        )
        w2 = keys.worker(
            context,
            broker.endpoints.backend,
            "load-balancing",
            "w2",
            service="admin",
        )
        async with (
            w1,
            w2,
            keys.client(context, broker.endpoints.frontend) as alice,
            keys.client(context, broker.endpoints.frontend, "bob") as bob,
        ):
            await eventually(lambda: broker.statistics().forbidden_workers >= 1)  # type: ignore[union-attr]
            assert await alice.request("echo", b"hi") == b"HI"
            with pytest.raises(Forbidden, match="service 'admin'"):
                await alice.request("admin", b"rm -rf")
            assert await alice.request("mmi.service", b"admin") == b"404"  # hidden from alice
            # bob may call admin, but no worker may serve it: w2 was told to go.
            assert await bob.request("mmi.service", b"admin") == b"404"
            assert await bob.request("mmi.service", b"echo") == b"200"
        stats = broker.statistics()
        assert stats.mode == "load-balancing"
        assert stats.forbidden_requests == 1
        assert stats.forbidden_workers >= 1
        assert stats.scheduler.delivered >= 1


async def test_a_revoked_key_is_refused_and_the_others_go_on(
    context: LeakCheckingContext, keys: Keys
) -> None:
    broker = keys.broker(context, "load-balancing", "python")
    async with (
        broker,
        keys.worker(context, broker.endpoints.backend, "load-balancing"),
        keys.client(context, broker.endpoints.frontend) as alice,
        keys.client(context, broker.endpoints.frontend, "bob") as bob,
    ):
        assert await bob.request(b"before") == b"BEFORE"
        (keys.root / "clients" / "bob.key").unlink()
        broker.reload_keys()
        # Connected, but no longer allowed: its next request is refused, at once.
        with pytest.raises(Forbidden):
            await bob.request(b"after")
        assert await alice.request(b"after") == b"AFTER"
        # And a new connection with that key is refused at its handshake.
        async with keys.client(context, broker.endpoints.frontend, "bob", timeout=0.5) as again:
            with pytest.raises(RequestTimeout):
                await again.request(b"again")
        assert security(broker).clients_refused >= 1
        assert broker.statistics().forbidden_requests == 1  # type: ignore[union-attr]


async def test_a_reload_that_cannot_read_its_keys_keeps_the_old_ones(
    context: LeakCheckingContext, keys: Keys
) -> None:
    (keys.root / "policy.toml").write_text(POLICY)
    broker = keys.broker(
        context, "load-balancing", "python", authorization=keys.root / "policy.toml"
    )
    async with (
        broker,
        keys.worker(context, broker.endpoints.backend, "load-balancing", service="echo"),
        keys.client(context, broker.endpoints.frontend) as alice,
    ):
        (keys.root / "clients" / "broken.key").write_text("public-key = not a key\n")
        with pytest.raises(KeyFileError, match=r"broken\.key"):
            broker.reload_keys()
        (keys.root / "clients" / "broken.key").unlink()
        (keys.root / "policy.toml").write_text("[clients]\nalice = echo\n")
        with pytest.raises(PolicyError, match="line 2"):
            broker.reload_keys()
        assert await alice.request("echo", b"still") == b"STILL"


async def test_unreadable_keys_and_policies_are_refused_at_start(
    tmp_path: Path, keys: Keys
) -> None:
    (keys.root / "clients" / "broken.key").write_text("nothing here\n")
    with pytest.raises(KeyFileError, match=r"broken\.key"):
        keys.broker(zmq.asyncio.Context.instance(), "relay", "libzmq")
    (keys.root / "clients" / "broken.key").unlink()
    with pytest.raises(KeyFileError, match="public key only"):
        Broker(frontend="inproc://f", backend="inproc://b", curve_secret_key=keys.server)
    (tmp_path / "policy.toml").write_text('[clients]\nalice = ["echo"]\n[admins]\n')
    with pytest.raises(PolicyError, match=r"policy\.toml, line 3"):
        keys.broker(
            zmq.asyncio.Context.instance(), "load-balancing", "python",
            authorization=tmp_path / "policy.toml",
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs mode='load-balancing'"):
        keys.broker(
            zmq.asyncio.Context.instance(), "relay", "libzmq",
            authorization=tmp_path / "policy.toml",
        )  # fmt: skip
    with pytest.raises(ValueError, match="need curve_secret_key"):
        Broker(frontend="inproc://f", backend="inproc://b", client_keys=tmp_path)
    with pytest.raises(ValueError, match="both curve_keys and curve_server_key"):
        AsyncClient("inproc://f", curve_keys=keys.pair("clients", "alice"))
