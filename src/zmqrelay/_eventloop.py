"""Which asyncio event loop the ``zmqrelay`` command and the bench's peers run on.

With the ``uvloop`` extra installed they run on uvloop, unless :data:`EVENT_LOOP_ENV` says
``asyncio``; without it, on asyncio's own loop, and nothing imports uvloop. The library itself
never chooses: an application opts in with ``anyio.run(main, backend_options={"use_uvloop":
True})``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple

import anyio

logger = logging.getLogger("zmqrelay.eventloop")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

EVENT_LOOP_ENV = "ZMQRELAY_EVENT_LOOP"
"""``asyncio`` or ``uvloop``: the loop to run on; unset, uvloop when it is installed."""


def backend_options() -> dict[str, Any]:
    """The asyncio backend options for anyio that choose the loop (see :data:`EVENT_LOOP_ENV`).

    Raises:
        ValueError: :data:`EVENT_LOOP_ENV` names another loop, or uvloop when it is missing.
    """
    choice = os.environ.get(EVENT_LOOP_ENV, "")
    if choice not in ("", "asyncio", "uvloop"):
        raise ValueError(f"{EVENT_LOOP_ENV}={choice!r}: expected asyncio or uvloop")
    if choice == "asyncio":
        return {}
    # find_spec only: the loop's module is imported by anyio as the loop starts, not here.
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise ValueError(f"{EVENT_LOOP_ENV}=uvloop: uvloop is not installed (zmqrelay[uvloop])")
    return {"use_uvloop": True} if installed else {}


def run(
    function: Callable[[*Ts], Awaitable[T]], *args: *Ts, options: dict[str, Any] | None = None
) -> T:
    """``anyio.run(function, *args)`` on the loop of ``options``, :func:`backend_options`'s."""
    if options is None:
        options = backend_options()
    return anyio.run(_logging_loop, function, *args, backend_options=options)


async def _logging_loop(function: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    loop = type(asyncio.get_running_loop())
    logger.debug("event loop: %s.%s", loop.__module__, loop.__qualname__)
    return await function(*args)
