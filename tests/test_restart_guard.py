"""No reply may reach a client other than the one that asked, even across a broker restart.

libzmq numbers a ROUTER's peers from an unseeded ``rand()``: every process hands out the same
routing ids in the same order. The broker seeds it per process (``seed_routing_ids``); these
tests prove it still works against the libzmq we run on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import zmq

from peers import broker_process, free_port

PROBE = """
import sys, zmq
from zmqrelay._aio.sockets import seed_routing_ids
if sys.argv[1] == "seed":
    assert seed_routing_ids()
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER); router.bind("inproc://r")
dealer = ctx.socket(zmq.DEALER); dealer.connect("inproc://r")
dealer.send(b"x")
print(router.recv_multipart()[0].hex())
router.close(0); dealer.close(0); ctx.term()
"""


def first_routing_id(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_seeded_processes_hand_out_different_routing_ids() -> None:
    assert first_routing_id("seed") != first_routing_id("seed")


def test_unseeded_processes_repeat_each_other() -> None:
    """Why the guard exists: without it, every process gives its first peer the same id."""
    assert first_routing_id("plain") == first_routing_id("plain")


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.kill(process.pid, signum)
    process.wait(timeout=20)
    if process.stderr is not None:
        process.stderr.close()


@pytest.mark.timeout(60)
def test_a_late_reply_never_reaches_the_client_of_a_restarted_broker() -> None:
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    worker = context.socket(zmq.DEALER)
    worker.linger = 0
    worker.rcvtimeo = worker.sndtimeo = 10_000
    first = broker_process(frontend, backend)
    try:
        worker.connect(backend)
        alice = context.socket(zmq.REQ)
        alice.linger = 0
        alice.connect(frontend)
        alice.send(b"alice's question")
        stale = worker.recv_multipart()  # [alice's id at the first broker, b"", question]
    finally:
        stop(first, signal.SIGKILL)
    second = broker_process(frontend, backend)
    try:
        bob = context.socket(zmq.REQ)
        bob.linger = 0
        bob.rcvtimeo = 10_000
        bob.connect(frontend)
        bob.send(b"bob's question")
        fresh = worker.recv_multipart()
        # The worker answers alice late, then bob. Without the guard both ids are 006b8b4567.
        worker.send_multipart([*stale[:-1], b"the answer for alice"])
        worker.send_multipart([*fresh[:-1], b"the answer for bob"])
        assert bob.recv() == b"the answer for bob"
        assert re.fullmatch(rb"\x00.{4}", stale[0], re.DOTALL)
        assert stale[0] != fresh[0]
    finally:
        stop(second)
        context.destroy(linger=0)  # closes every socket opened here, on failure too
