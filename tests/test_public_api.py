"""The public surface, pinned: a change to it is a decision, not an accident."""

from __future__ import annotations

import importlib.resources
import inspect

import zmqrelay
import zmqrelay.errors
import zmqrelay.testing


def test_top_level_names() -> None:
    assert sorted(zmqrelay.__all__) == [
        "AsyncClient",
        "AsyncWorker",
        "BalancerStatistics",
        "BrokenError",
        "Broker",
        "BrokerBusy",
        "BrokerLost",
        "BrokerStatistics",
        "ClientLinkStatistics",
        "ClientStatistics",
        "ClosedError",
        "CurveKeyPair",
        "DeadlineExceeded",
        "EndpointError",
        "Endpoints",
        "Forbidden",
        "FramesHandler",
        "Handler",
        "KeyFileError",
        "LocalProtocolError",
        "NoWorkers",
        "PolicyError",
        "ProtocolError",
        "RemoteError",
        "RemoteProtocolError",
        "RequestRefused",
        "RequestTimeout",
        "RetryPolicy",
        "SecurityStatistics",
        "WorkerDied",
        "WorkerLinkStatistics",
        "WorkerStatistics",
        "ZmqRelayError",
        "is_redelivery",
        "time_left",
    ]


def test_testing_names() -> None:
    assert sorted(zmqrelay.testing.__all__) == [
        "BrokerHarness",
        "Hosted",
        "LeakCheckingContext",
        "SocketLeakError",
        "TRANSPORTS",
        "ThrowAwayKeys",
        "WorkerHandle",
        "relay_harness",
        "running",
    ]


def test_every_public_class_and_function_is_documented() -> None:
    for module in (zmqrelay, zmqrelay.errors, zmqrelay.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert inspect.getdoc(value), f"{module.__name__}.{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in zmqrelay.errors.__all__:
        assert issubclass(getattr(zmqrelay.errors, name), zmqrelay.ZmqRelayError)
    assert issubclass(zmqrelay.RequestTimeout, TimeoutError)
    assert issubclass(zmqrelay.EndpointError, OSError)


def test_the_package_is_typed() -> None:
    assert importlib.resources.files("zmqrelay").joinpath("py.typed").is_file()
