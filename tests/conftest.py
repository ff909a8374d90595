"""Shared fixtures. The project's tests use zmqrelay's own pytest plugin (loaded through its
``pytest11`` entry point): ``zmqrelay_context`` proves that every test closes its sockets."""

from __future__ import annotations

import pytest
from hypothesis import settings

from zmqrelay.testing import LeakCheckingContext

# No deadline per example: the suite runs on shared machines, where one example of a pure
# function took 415 ms under load (58 ms again). Speed is the bench's to measure, never a test's.
settings.register_profile("zmqrelay", deadline=None)
settings.load_profile("zmqrelay")


@pytest.fixture
def context(zmqrelay_context: LeakCheckingContext) -> LeakCheckingContext:
    """A fresh zmq context; the test fails if it leaves a socket open."""
    return zmqrelay_context
