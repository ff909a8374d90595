"""The one translation of ``zmq.ZMQError`` into zmqrelay's errors."""

from __future__ import annotations

import errno

import pytest
import zmq

from zmqrelay import BrokenError, ClosedError, EndpointError
from zmqrelay._aio.zmqerrors import UNUSABLE, broken, translated, unbroken


def test_a_terminated_context_is_named_as_such() -> None:
    error = broken(zmq.ZMQError(zmq.ETERM), "the worker's socket")
    assert str(error) == "the worker's socket failed: its zmq.Context was terminated"


def test_other_failures_carry_libzmqs_reason() -> None:
    error = broken(zmq.ZMQError(errno.ENOTSOCK), "the client's socket")
    assert str(error).startswith("the client's socket failed: ")
    assert "socket" in str(error).removeprefix("the client's socket failed: ").lower()


def test_broken_is_not_closed_but_both_mean_unusable() -> None:
    assert not issubclass(BrokenError, ClosedError)
    assert not issubclass(ClosedError, BrokenError)
    assert set(UNUSABLE) == {BrokenError, ClosedError}


def test_unbroken_keeps_the_zmq_error_as_the_cause() -> None:
    with pytest.raises(BrokenError) as caught, unbroken("the broker's socket"):
        raise zmq.ZMQError(zmq.ETERM)
    assert isinstance(caught.value.__cause__, zmq.ZMQError)


def test_binding_errors_keep_their_errno() -> None:
    with pytest.raises(EndpointError) as caught, translated("bind", "tcp://x"):
        raise zmq.ZMQError(errno.EADDRINUSE)
    assert caught.value.errno == errno.EADDRINUSE
    assert "cannot bind 'tcp://x'" in str(caught.value)
    assert isinstance(caught.value, OSError)
