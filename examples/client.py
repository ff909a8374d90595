"""A client of the broker: sends ten b"Hello" requests, one after another, and prints each reply.

With the broker and a worker running (see ``examples/broker.py``)::

    python examples/client.py

``--connect`` picks another frontend than ``tcp://localhost:5559``, ``--requests`` another
number of requests, ``--timeout`` how long to wait for each reply. A request sent before any
worker is connected waits in the broker until one is; a reply that does not come in time
ends the program with exit status 1 (in relay mode a request whose worker died is never
answered, and the timeout is what ends it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from zmqrelay import AsyncClient, RemoteError, RequestTimeout


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='A client that sends b"Hello" requests and prints the replies.'
    )
    parser.add_argument(
        "--connect",
        default="tcp://localhost:5559",
        help="the broker's frontend endpoint (%(default)s)",
    )
    parser.add_argument(
        "--requests", type=int, default=10, help="how many requests to send (%(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each reply (%(default)s)"
    )
    return parser.parse_args()


async def run(endpoint: str, requests: int, reply_timeout: float) -> int:
    async with AsyncClient(endpoint, timeout=reply_timeout) as client:
        for number in range(1, requests + 1):
            try:
                reply = await client.request(b"Hello")
            except RequestTimeout:
                print(f"request {number}: no reply within {reply_timeout} s", file=sys.stderr)
                return 1
            except RemoteError as exc:
                print(f"request {number}: the worker failed: {exc}", file=sys.stderr)
                return 1
            print(f"reply {number}: {reply.decode('utf-8', 'replace')}", flush=True)
    return 0


def main() -> None:
    args = parse_args()
    sys.exit(asyncio.run(run(args.connect, args.requests, args.timeout)))


if __name__ == "__main__":
    main()
