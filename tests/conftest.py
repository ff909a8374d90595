"""Shared fixtures. The project's tests use zmqrelay's own pytest plugin (loaded through its
``pytest11`` entry point): ``zmqrelay_context`` proves that every test closes its sockets."""

from __future__ import annotations

import pytest

from zmqrelay.testing import LeakCheckingContext


@pytest.fixture
def context(zmqrelay_context: LeakCheckingContext) -> LeakCheckingContext:
    """A fresh zmq context; the test fails if it leaves a socket open."""
    return zmqrelay_context
