"""The pytest plugin, tested with real sub-runs of small test files (pytester)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import anyio.to_thread
import pytest

import zmqrelay
from zmqrelay.testing import BrokerHarness

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _sub_runs_import_this_zmqrelay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-run runs in a folder of its own, where a relative PYTHONPATH (``src``) would miss
    this zmqrelay and load another installed one, plugin included."""
    here = str(Path(zmqrelay.__file__).resolve().parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    )


USES_THE_FIXTURES = """
    import pytest

    async def echo(request: bytes) -> bytes:
        return request

    {mark}
    async def test_round_trip(relay_broker, relay_worker, relay_client):
        await relay_worker(echo, concurrency=2)
        assert await relay_client.request(b"ping") == b"ping"
        assert relay_broker.statistics().reply_frames == 4  # one reply, four frames

    {mark}
    async def test_second_round_trip_gets_a_fresh_broker(relay_broker, relay_worker, relay_client):
        await relay_worker(echo)
        assert await relay_client.request(b"pong") == b"pong"
        assert relay_broker.statistics().reply_frames == 4  # one reply, four frames
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", *args)


def ini(pytester: pytest.Pytester, **options: str) -> None:
    lines = "\n".join(f"{key} = {value}" for key, value in options.items())
    pytester.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\n{lines}\n")


@pytest.mark.parametrize(
    ("mode", "mark"),
    [
        ("strict", "@pytest.mark.asyncio"),
        ("auto", ""),
        ("strict", '@pytest.mark.asyncio(loop_scope="module")'),
        ("auto", '@pytest.mark.asyncio(loop_scope="module")'),
    ],
)
def test_fixtures_work_in_every_mode_and_loop_scope(
    pytester: pytest.Pytester, mode: str, mark: str
) -> None:
    ini(pytester, asyncio_mode=mode)
    pytester.makepyfile(textwrap.dedent(USES_THE_FIXTURES.format(mark=mark)))
    run(pytester).assert_outcomes(passed=2)


def test_a_leaked_socket_fails_the_test_and_is_named(pytester: pytest.Pytester) -> None:
    ini(pytester, asyncio_mode="strict")
    pytester.makepyfile(
        """
        import pytest, zmq

        @pytest.mark.asyncio
        async def test_forgets_to_close(zmqrelay_context):
            sock = zmqrelay_context.socket(zmq.DEALER)
            sock.connect("inproc://somewhere")

        @pytest.mark.asyncio
        async def test_closes(zmqrelay_context):
            zmqrelay_context.socket(zmq.DEALER).close()
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_to_close*",
            "*1 zmq socket(s) left open: DEALER socket last bound/connected at "
            "inproc://somewhere, opened at *test_a_leaked_socket_fails_the_test_and_is_named.py:5 "
            "in test_forgets_to_close*",
        ]
    )


TRANSPORT_REPORT = """
    import pytest

    @pytest.mark.asyncio
    {mark}
    async def test_transport(relay_broker):
        print("TRANSPORT", relay_broker.endpoints.frontend.split(":")[0])
"""


@pytest.mark.parametrize(
    ("mark", "ini_value", "option", "expected"),
    [
        ("", "", "", "inproc"),
        ("", "", "tcp", "tcp"),
        ("", "ipc", "tcp", "ipc"),
        ('@pytest.mark.zmqrelay(transport="tcp")', "ipc", "inproc", "tcp"),
    ],
)
def test_transport_precedence_marker_then_ini_then_option(
    pytester: pytest.Pytester, mark: str, ini_value: str, option: str, expected: str
) -> None:
    ini(
        pytester, asyncio_mode="strict", **({"zmqrelay_transport": ini_value} if ini_value else {})
    )
    pytester.makepyfile(textwrap.dedent(TRANSPORT_REPORT.format(mark=mark)))
    result = run(pytester, "-s", *(["--zmqrelay-transport", option] if option else []))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*TRANSPORT {expected}*"])


@pytest.mark.asyncio
@pytest.mark.zmqrelay(transport="tcp")
async def test_fixtures_can_use_an_external_broker(
    relay_broker: BrokerHarness, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outer test's broker stands for an integration environment's broker."""
    ini(pytester, asyncio_mode="strict")
    pytester.makepyfile(
        """
        import pytest

        async def shout(request: bytes) -> bytes:
            return request.upper()

        @pytest.mark.asyncio
        async def test_against_the_external_broker(relay_broker, relay_worker, relay_client):
            assert relay_broker.external
            await relay_worker(shout)
            assert await relay_client.request(b"hi") == b"HI"
        """
    )
    frontend, backend = relay_broker.endpoints
    with monkeypatch.context() as env:
        env.setenv("ZMQRELAY_TEST_FRONTEND", frontend)
        env.setenv("ZMQRELAY_TEST_BACKEND", backend)
        by_env = await _run_in_thread(pytester)
    by_env.assert_outcomes(passed=1)
    by_option = await _run_in_thread(
        pytester, "--zmqrelay-frontend", frontend, "--zmqrelay-backend", backend
    )
    by_option.assert_outcomes(passed=1)
    stats = relay_broker.statistics()
    assert stats.mode == "relay"
    assert stats.reply_frames == 8  # two replies of four frames


async def _run_in_thread(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # The sub-run talks to this test's broker, so this loop must keep running meanwhile.
    return await anyio.to_thread.run_sync(lambda: run(pytester, *args))


MARKED_FOR_SOME_BROKER = """
    import pytest

    async def echo(request: bytes) -> bytes:
        return request

    @pytest.mark.asyncio
    @pytest.mark.zmqrelay(transport="ipc", frontend="ipc:///nowhere/f")
    async def test_where_is_moot(relay_worker, relay_client):
        await relay_worker(echo)
        assert await relay_client.request(b"any", timeout=2) == b"any"

    @pytest.mark.asyncio
    @pytest.mark.zmqrelay(mode="load-balancing")
    async def test_load_balancing(relay_worker, relay_client):
        await relay_worker(echo, service="echo")
        assert await relay_client.request("echo", b"lb", timeout=2) == b"lb"

    @pytest.mark.asyncio
    @pytest.mark.zmqrelay(mode="relay")
    async def test_relay(relay_worker, relay_client):
        await relay_worker(echo)
        assert await relay_client.request(b"relay", timeout=2) == b"relay"

    @pytest.mark.asyncio
    @pytest.mark.zmqrelay(drain_timeout=0.5, high_water_mark=100)
    async def test_tuned(relay_client):
        pass
"""
MAY_NOT = "the external broker at tcp://127.0.0.1:* may not have it (the marker configures "
MAY_NOT_ALL = MAY_NOT.replace("have it", "have them")
IS_IN = "the external broker at tcp://127.0.0.1:* is in"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("declared", "passed", "skipped"),
    [
        pytest.param(
            None,
            ["test_where_is_moot"],
            [
                f"the zmqrelay marker asks for a broker with mode='load-balancing': {MAY_NOT}"
                "in-process brokers only; give the external broker's mode with --zmqrelay-mode "
                "or ZMQRELAY_TEST_MODE)",
                f"the zmqrelay marker asks for a broker with mode='relay': {MAY_NOT}*",
                "the zmqrelay marker asks for a broker with drain_timeout=0.5, "
                f"high_water_mark=100: {MAY_NOT_ALL}in-process brokers only)",
            ],
            id="relay-unknown",
            marks=pytest.mark.zmqrelay(transport="tcp"),
        ),
        pytest.param(
            "relay",
            ["test_where_is_moot", "test_relay"],
            [
                f"*mode='load-balancing': {IS_IN} relay mode (--zmqrelay-mode)",
                f"*drain_timeout=0.5, high_water_mark=100: {MAY_NOT_ALL}*",
            ],
            id="relay-declared",
            marks=pytest.mark.zmqrelay(transport="tcp"),
        ),
        pytest.param(
            "load-balancing",
            ["test_where_is_moot", "test_load_balancing"],
            [
                f"*mode='relay': {IS_IN} load-balancing mode (--zmqrelay-mode)",
                f"*drain_timeout=0.5, high_water_mark=100: {MAY_NOT_ALL}*",
            ],
            id="load-balancing-declared",
            marks=pytest.mark.zmqrelay(transport="tcp", mode="load-balancing"),
        ),
    ],
)
async def test_an_external_broker_skips_tests_marked_for_a_broker_it_may_not_be(
    relay_broker: BrokerHarness,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    declared: str | None,
    passed: list[str],
    skipped: list[str],
) -> None:
    """Not a silent timeout each: the reason says what the test asked for."""
    ini(pytester, asyncio_mode="strict")
    pytester.makepyfile(textwrap.dedent(MARKED_FOR_SOME_BROKER))
    frontend, backend = relay_broker.endpoints
    monkeypatch.setenv("ZMQRELAY_TEST_FRONTEND", frontend)
    monkeypatch.setenv("ZMQRELAY_TEST_BACKEND", backend)
    if declared == "load-balancing":
        monkeypatch.setenv("ZMQRELAY_TEST_MODE", declared)
    option = ["--zmqrelay-mode", declared] if declared == "relay" else []
    result = await _run_in_thread(pytester, "-rs", "-v", *option)
    result.assert_outcomes(passed=len(passed), skipped=len(skipped))
    result.stdout.fnmatch_lines_random([f"*::{name} PASSED*" for name in passed])
    result.stdout.fnmatch_lines_random([f"SKIPPED [[]1[]] *.py:*: {line}" for line in skipped])


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (
            ["--zmqrelay-mode", "relay"],
            "*--zmqrelay-mode (or ZMQRELAY_TEST_MODE) is the mode of an*",
        ),
        (
            ["--zmqrelay-frontend", "tcp://127.0.0.1:1"],
            "*needs both --zmqrelay-frontend and --zmqrelay-backend*",
        ),
    ],
    ids=["mode alone", "half a broker"],
)
def test_an_incomplete_external_broker_is_a_usage_error(
    pytester: pytest.Pytester, options: list[str], error: str
) -> None:
    ini(pytester, asyncio_mode="strict")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_it(relay_broker):
            pass
        """
    )
    result = run(pytester, *options)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([error])


def test_beside_anyios_plugin(pytester: pytest.Pytester) -> None:
    """anyio-marked tests use relay_harness() directly; the fixtures serve asyncio-marked ones."""
    ini(pytester, asyncio_mode="strict")
    pytester.makepyfile(
        """
        import pytest
        from zmqrelay.testing import relay_harness

        async def echo(request: bytes) -> bytes:
            return request

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_anyio_style(zmqrelay_context):
            async with relay_harness(context=zmqrelay_context) as harness:
                await harness.start_worker(echo)
                client = await harness.connect_client()
                assert await client.request(b"a") == b"a"

        @pytest.mark.asyncio
        async def test_fixture_style(relay_worker, relay_client):
            await relay_worker(echo)
            assert await relay_client.request(b"b") == b"b"
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_anyio_tests_in_asyncio_auto_mode_are_pointed_to_relay_harness(
    pytester: pytest.Pytester,
) -> None:
    """Both plugins would run the test: fixtures in one loop, the test in another."""
    ini(pytester, asyncio_mode="auto")
    pytester.makepyfile(
        """
        import pytest
        from zmqrelay.testing import relay_harness

        async def echo(request: bytes) -> bytes:
            return request

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_with_the_fixtures(relay_worker, relay_client):
            await relay_worker(echo)
            assert await relay_client.request(b"a", timeout=2) == b"a"

        @pytest.mark.anyio
        async def test_with_the_harness(zmqrelay_context):
            async with relay_harness(context=zmqrelay_context) as harness:
                await harness.start_worker(echo)
                client = await harness.connect_client()
                assert await client.request(b"b", timeout=2) == b"b"
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_with_the_fixtures*",
            "*test_with_the_fixtures is run by both pytest-asyncio and anyio's pytest plugin*"
            "use zmqrelay.testing.relay_harness(context=zmqrelay_context)*",
        ]
    )
    result.stdout.no_fnmatch_line("*different loop*")


def test_a_curve_marker_runs_the_broker_with_throw_away_keys(pytester: pytest.Pytester) -> None:
    """The configured inproc gives way to tcp; a marked ipc stays ipc; the factory likewise."""
    ini(pytester, asyncio_mode="strict", zmqrelay_transport="inproc")
    pytester.makepyfile(
        """
        import pytest
        from zmqrelay import RequestTimeout

        async def echo(request: bytes) -> bytes:
            return request

        @pytest.mark.asyncio
        @pytest.mark.zmqrelay(curve=True, mode="load-balancing")
        async def test_sealed(relay_broker, relay_worker, relay_client):
            assert relay_broker.endpoints.frontend.startswith("tcp://")
            assert relay_broker.broker.statistics().security.clients_refused == 0
            await relay_worker(echo, service="echo")
            assert await relay_client.request("echo", b"sealed") == b"sealed"
            stranger = await relay_broker.connect_client(
                curve_keys=relay_broker.curve.stranger("mallory"), timeout=0.3
            )
            with pytest.raises(RequestTimeout):
                await stranger.request("echo", b"let me in")

        @pytest.mark.asyncio
        @pytest.mark.zmqrelay(curve=True, transport="ipc")
        async def test_sealed_ipc(relay_broker, relay_worker, relay_client):
            assert relay_broker.endpoints.frontend.startswith("ipc://")
            await relay_worker(echo)
            assert await relay_client.request(b"ipc") == b"ipc"

        @pytest.mark.asyncio
        async def test_factory(relay_broker, relay_broker_factory):
            assert relay_broker.curve is None
            sealed = await relay_broker_factory(curve=True)
            assert sealed.endpoints.frontend.startswith("tcp://")
            await sealed.start_worker(echo)
            client = await sealed.connect_client()
            assert await client.request(b"factory") == b"factory"
        """
    )
    run(pytester).assert_outcomes(passed=3)


def test_a_curve_marker_skips_with_an_external_broker(pytester: pytest.Pytester) -> None:
    ini(pytester, asyncio_mode="strict")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.zmqrelay(curve=True)
        async def test_sealed(relay_broker):
            pass
        """
    )
    result = run(
        pytester,
        "-rs",
        "--zmqrelay-frontend=tcp://127.0.0.1:5555",
        "--zmqrelay-backend=tcp://127.0.0.1:5556",
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*asks for a broker with curve=True*"])
