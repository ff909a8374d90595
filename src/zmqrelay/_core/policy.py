"""Who may do what in load-balancing mode: the authorisation policy, read from TOML.

A policy names the CURVE keys (by the names of their certificate files) that may call each
service, and those that may serve each. Names and services are matched as shell-style glob
patterns (``"resize.*"``, ``"ops-*"``)::

    # Clients: key name (or pattern) = the services it may call.
    [clients]
    alice = ["echo", "resize.*"]
    "ops-*" = ["*"]

    # Workers: key name (or pattern) = the services it may serve.
    [workers]
    resizer = ["resize.*"]

A key no entry names may do nothing on its side; a side the policy leaves out is not limited.
The default service (a plain client's, a plain worker's) is named ``""``, which ``"*"``
matches. Reading the policy is pure: the broker reads the file, and hands the text here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from zmqrelay.errors import PolicyError

Side = Literal["clients", "workers"]

_SIDES: tuple[Side, ...] = ("clients", "workers")
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Rule:
    """Keys whose name matches ``keys`` may use the services that match one of ``services``."""

    keys: str
    services: tuple[str, ...]


@dataclass
class Policy:
    """Which keys may call, and which may serve, which services.

    ``None`` for a side means that side is not limited. Decisions are cached by key name and
    service (the cache is bounded: a client naming ever new services cannot grow it).
    """

    clients: tuple[Rule, ...] | None = None
    workers: tuple[Rule, ...] | None = None
    _decided: dict[tuple[Side, str, bytes], bool] = field(default_factory=dict, repr=False)

    def may_call(self, client: str, service: bytes) -> bool:
        """Whether the client key named ``client`` may call ``service``."""
        return self._allows("clients", self.clients, client, service)

    def may_serve(self, worker: str, service: bytes) -> bool:
        """Whether the worker key named ``worker`` may serve ``service``."""
        return self._allows("workers", self.workers, worker, service)

    def _allows(
        self, side: Side, rules: tuple[Rule, ...] | None, name: str, service: bytes
    ) -> bool:
        if rules is None:
            return True
        key = (side, name, service)
        decided = self._decided.get(key)
        if decided is None:
            text = service.decode("utf-8", "replace")
            decided = any(
                fnmatchcase(name, rule.keys)
                and any(fnmatchcase(text, pattern) for pattern in rule.services)
                for rule in rules
            )
            if len(self._decided) >= _CACHE_LIMIT:
                self._decided.clear()
            self._decided[key] = decided
        return decided


def parse(text: str, source: str = "<policy>") -> Policy:
    """Read a policy from TOML ``text``; ``source`` names it in errors.

    Raises:
        PolicyError: the text is not TOML, or not a policy; the message names the line.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - set(_SIDES))
    if unknown:
        raise PolicyError(
            f"{source}, line {_line_of(text, unknown[0], table=True)}: unknown table or key "
            f"{unknown[0]!r} (a policy has [clients] and [workers])"
        )
    sides: dict[Side, tuple[Rule, ...] | None] = {}
    for side in _SIDES:
        table = document.get(side)
        if table is None:
            sides[side] = None
            continue
        if not isinstance(table, dict):
            raise PolicyError(
                f"{source}, line {_line_of(text, side)}: {side} must be a table ([{side}])"
            )
        rules = []
        for name, services in table.items():
            if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
                raise PolicyError(
                    f"{source}, line {_line_of(text, name)}: [{side}] {name!r} must be a list "
                    f'of service names or patterns, like ["echo", "resize.*"]'
                )
            rules.append(Rule(name, tuple(services)))
        sides[side] = tuple(rules)
    return Policy(clients=sides["clients"], workers=sides["workers"])


def _line_of(text: str, key: str, *, table: bool = False) -> int:
    """The line where ``key`` is set (or its table opens), counting from 1; else 1."""
    quoted = rf'(?:{re.escape(key)}|"{re.escape(key)}"|\'{re.escape(key)}\')'
    pattern = rf"^\s*\[\s*{quoted}\s*\]" if table else rf"^\s*{quoted}\s*="
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(pattern, line) or (table and re.match(rf"^\s*{quoted}\s*=", line)):
            return number
    return 1
