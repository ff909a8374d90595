"""The pure protocol core: frames in, frames out, with no sockets, tasks or clocks.

Nothing below this package imports ``zmq`` or ``anyio`` or reads the time; an import-linter
contract in ``pyproject.toml`` keeps it that way.
"""
