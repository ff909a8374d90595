"""One pool of workers serving several brokers: every mode, and a broker killed and restarted
under load. Each test counts every request: sent = replies + typed errors, none misdelivered."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Literal

import anyio
import pytest

from peers import balancer_statistics, eventually
from zmqrelay import AsyncClient, AsyncWorker, Broker, RequestRefused, RequestTimeout
from zmqrelay.testing import Hosted, LeakCheckingContext, running

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

HEARTBEAT = 0.1
LIVENESS = 3


def broker(context: LeakCheckingContext, *, frontend: str, backend: str, **options: Any) -> Broker:
    return Broker(frontend=frontend, backend=backend, context=context, drain_timeout=0, **options)


def lb_options() -> dict[str, Any]:
    return {"mode": "load-balancing", "heartbeat_interval": HEARTBEAT, "liveness": LIVENESS}


class Pool:
    """A handler that tags each reply with the broker's name and records how many ran at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.inside = self.most = 0

    async def __call__(self, request: bytes) -> bytes:
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await anyio.sleep(self.delay)
        finally:
            self.inside -= 1
        return b"re: " + request


class Load:
    """A client asking steadily; every request ends in exactly one counted outcome."""

    def __init__(self, client: AsyncClient, name: str, service: str | None = None) -> None:
        self.client = client
        self.name = name
        self.service = service
        self.outcomes: Counter[str] = Counter()
        self.sent = 0
        self.stop = anyio.Event()

    async def ask(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            body = b"%s %d" % (self.name.encode(), self.sent)
            try:
                if self.service is None:
                    reply = await self.client.request(body, timeout=1)
                else:
                    reply = await self.client.request(self.service, body, timeout=1)
            except (RequestRefused, RequestTimeout) as exc:
                self.outcomes[type(exc).__name__] += 1
            else:
                assert reply == b"re: " + body, "a reply reached the wrong request"
                self.outcomes["reply"] += 1

    async def run(self, tasks: int) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(self.ask)

    @property
    def ended(self) -> int:
        return sum(self.outcomes.values())


@pytest.mark.parametrize("mode", ["relay", "load-balancing"])
async def test_one_worker_pool_serves_two_brokers(
    context: LeakCheckingContext, mode: Literal["relay", "load-balancing"]
) -> None:
    options = lb_options() if mode == "load-balancing" else {}
    first = broker(context, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", **options)
    second = broker(
        context, frontend="ipc://@zmqrelay-multi-f", backend="ipc://@zmqrelay-multi-b", **options
    )
    pool = Pool(delay=0.01)
    async with running(first), running(second):
        backends = [first.endpoints.backend, second.endpoints.backend]
        worker = AsyncWorker(
            backends,
            pool,
            concurrency=4,
            context=context,
            mode=mode,
            heartbeat_interval=HEARTBEAT,
            liveness=LIVENESS,
        )
        async with (
            running(worker),
            running(AsyncClient(first.endpoints.frontend, context=context)) as one,
            running(AsyncClient(second.endpoints.frontend, context=context)) as two,
        ):
            loads = [Load(one, "one"), Load(two, "two")]
            async with anyio.create_task_group() as tg:
                for load in loads:
                    tg.start_soon(load.run, 8)
                await eventually(lambda: all(load.outcomes["reply"] >= 50 for load in loads))
                for load in loads:
                    load.stop.set()
    stats = worker.statistics()
    print(f"\n{mode}: {[dict(load.outcomes) for load in loads]}, {stats}")
    for load in loads:
        assert load.outcomes == {"reply": load.sent}
    assert [link.endpoint for link in stats.links] == backends
    assert [link.requests_received for link in stats.links] == [load.sent for load in loads]
    assert stats.requests_received == stats.replies_sent == sum(load.sent for load in loads)
    assert stats.requests_dropped == 0
    assert pool.most == 4, "one pool of `concurrency` handlers serves both brokers"
    if mode == "load-balancing":
        assert [link.registrations for link in stats.links] == [1, 1]


@pytest.mark.parametrize("protocol", ["zmqrelay", "mdp-0.2"])
async def test_a_broker_killed_and_restarted_under_load_costs_only_its_own_requests(
    context: LeakCheckingContext, protocol: Literal["zmqrelay", "mdp-0.2"]
) -> None:
    service = None if protocol == "zmqrelay" else "echo"
    options = lb_options()
    stable = broker(context, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", **options)
    crashing = Hosted(
        broker(context, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", **options)
    )
    await crashing.start()
    endpoints = crashing.service.endpoints
    pool = Pool(delay=0.005)
    concurrency = 4 if protocol == "zmqrelay" else 1
    try:
        async with running(stable):
            workers = [
                AsyncWorker(
                    [stable.endpoints.backend, endpoints.backend],
                    pool,
                    concurrency=concurrency,
                    context=context,
                    mode="load-balancing",
                    service=service,
                    protocol=protocol,
                    heartbeat_interval=HEARTBEAT,
                    liveness=LIVENESS,
                )
                for _ in range(2)
            ]
            async with (
                running(workers[0]),
                running(workers[1]),
                running(AsyncClient(stable.endpoints.frontend, context=context)) as calm,
                running(AsyncClient(endpoints.frontend, context=context)) as hit,
            ):
                spared, struck = Load(calm, "calm", service), Load(hit, "hit", service)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(spared.run, 4)
                    tg.start_soon(struck.run, 4)
                    await eventually(lambda: struck.outcomes["reply"] >= 50)
                    await crashing.stop(graceful=False)  # as a crash: nothing said
                    crashing = Hosted(
                        broker(
                            context,
                            frontend=endpoints.frontend,
                            backend=endpoints.backend,
                            **options,
                        )
                    )
                    restarted = await crashing.start()
                    started = time.monotonic()
                    await eventually(
                        lambda: balancer_statistics(restarted).scheduler.workers == 2,
                        timeout=10,
                    )
                    back_after = time.monotonic() - started
                    served_before = struck.outcomes["reply"]
                    await eventually(lambda: struck.outcomes["reply"] >= served_before + 50)
                    spared.stop.set()
                    struck.stop.set()
    finally:
        await crashing.stop(graceful=False)
    print(
        f"\n{protocol}: workers back {back_after:.3f} s after the restart; "
        f"spared {dict(spared.outcomes)}, struck {dict(struck.outcomes)}, "
        f"dropped by the workers {[w.statistics().requests_dropped for w in workers]}"
    )
    assert spared.outcomes == {"reply": spared.sent}, "the other broker's clients saw no error"
    assert struck.ended == struck.sent
    assert set(struck.outcomes) <= {"reply", "RequestTimeout", "NoWorkers"}
    # Its clients lose at most what was in flight when it died (4 tasks, one request each)
    # and what they sent to it while it was down.
    assert struck.sent - struck.outcomes["reply"] <= 4 + 4
    # The workers take up the restarted broker within its liveness (plus a reconnection).
    assert back_after < HEARTBEAT * LIVENESS + 0.5
    for worker in workers:
        stable_link, restarted_link = worker.statistics().links
        assert stable_link.registrations == 1
        assert restarted_link.registrations >= 2


async def test_relay_workers_keep_serving_the_broker_left_when_one_dies(
    context: LeakCheckingContext,
) -> None:
    stable = broker(context, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*")
    dying = Hosted(broker(context, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*"))
    await dying.start()
    pool = Pool(delay=0.002)
    try:
        async with running(stable):
            worker = AsyncWorker(
                [stable.endpoints.backend, dying.service.endpoints.backend],
                pool,
                concurrency=4,
                context=context,
            )
            async with (
                running(worker),
                running(AsyncClient(stable.endpoints.frontend, context=context)) as calm,
                running(AsyncClient(dying.service.endpoints.frontend, context=context)) as hit,
            ):
                spared, struck = Load(calm, "calm"), Load(hit, "hit")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(spared.run, 4)
                    tg.start_soon(struck.run, 4)
                    await eventually(lambda: struck.outcomes["reply"] >= 50)
                    await dying.stop(graceful=False)
                    served_before = spared.outcomes["reply"]
                    await eventually(lambda: spared.outcomes["reply"] >= served_before + 200)
                    spared.stop.set()
                    struck.stop.set()
    finally:
        await dying.stop(graceful=False)
    assert spared.outcomes == {"reply": spared.sent}
    assert struck.ended == struck.sent
    assert set(struck.outcomes) <= {"reply", "RequestTimeout"}
