"""Endpoint strings: turning what a socket bound into what a peer can connect to."""

from __future__ import annotations

_WILDCARDS = {
    "tcp://0.0.0.0:": "tcp://127.0.0.1:",
    "tcp://*:": "tcp://127.0.0.1:",
    "tcp://[::]:": "tcp://[::1]:",
}


def connectable(bound: str) -> str:
    """The address a local peer connects to, given an endpoint a socket reports as bound.

    A wildcard bind (``tcp://0.0.0.0:5559``) becomes the loopback address with the same port;
    anything else (``inproc://``, ``ipc://``, a specific interface) is returned unchanged.

    >>> connectable("tcp://0.0.0.0:5559")
    'tcp://127.0.0.1:5559'
    """
    for wildcard, loopback in _WILDCARDS.items():
        if bound.startswith(wildcard):
            return loopback + bound[len(wildcard) :]
    return bound
