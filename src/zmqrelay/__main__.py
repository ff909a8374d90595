"""``python -m zmqrelay``: the same as the ``zmqrelay`` command."""

from zmqrelay.cli import main

main()
