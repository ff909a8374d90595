"""Authorisation: the policy file, and a secured balancer enforcing it, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_core_balancer import MAJORTOMO, take
from zmqrelay._core import tag
from zmqrelay._core.balancer import Balancer
from zmqrelay._core.policy import Policy, parse
from zmqrelay.errors import PolicyError

POLICY = """
# who may call what
[clients]
alice = ["echo", "resize.*"]
"ops-*" = ["*"]

[workers]
resizer = ["resize.*"]
"""


def test_names_and_services_match_as_globs() -> None:
    policy = parse(POLICY)
    assert policy.may_call("alice", b"echo")
    assert policy.may_call("alice", b"resize.png")
    assert not policy.may_call("alice", b"admin")
    assert policy.may_call("ops-1", b"admin")
    assert policy.may_call("ops-1", b"")  # "*" matches the default service too
    assert not policy.may_call("mallory", b"echo")
    assert policy.may_serve("resizer", b"resize.jpg")
    assert not policy.may_serve("resizer", b"echo")
    assert not policy.may_serve("alice", b"resize.jpg")  # a client key is not a worker key


def test_a_side_the_policy_leaves_out_is_not_limited() -> None:
    policy = parse('[clients]\nalice = ["echo"]\n')
    assert policy.may_serve("anyone", b"anything")
    assert not policy.may_call("bob", b"echo")
    assert Policy().may_call("anyone", b"anything")


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ('[clients]\nalice = = ["echo"]\n', 2, "not valid TOML"),
        ('[clients]\nalice = ["echo"]\n\n[admins]\nroot = ["*"]\n', 4, "unknown table"),
        ('[clients]\nalice = ["echo"]\nbob = "echo"\n', 3, "must be a list"),
        ('[workers]\n"w-*" = [1, 2]\n', 2, "must be a list"),
        ('clients = ["echo"]\n', 1, "must be a table"),
    ],
)
def test_an_error_names_the_source_and_the_line(text: str, line: int, says: str) -> None:
    with pytest.raises(PolicyError, match=says) as caught:
        parse(text, "policy.toml")
    assert f"line {line}" in str(caught.value)
    assert str(caught.value).startswith("policy.toml")


@given(st.binary(max_size=30))
def test_ever_new_service_names_do_not_grow_the_cache_without_bound(service: bytes) -> None:
    policy = parse(POLICY)
    for number in range(12_000):
        policy.may_call("alice", service + b"%d" % number)
    assert len(policy._decided) <= 10_000


def secured(policy: str | None = POLICY) -> Balancer:
    balancer = Balancer(secured=True)
    balancer.policy = parse(policy) if policy is not None else None
    return balancer


def mdp_request(service: bytes, body: bytes = b"hi") -> list[bytes]:
    return [b"C", b"", b"MDPC02", b"\x02", service, body]


def test_a_forbidden_request_is_refused_as_forbidden_and_others_are_served() -> None:
    balancer = secured()
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"resize.png"], 0.0, "resizer")
    take(balancer)
    balancer.from_client([b"C", b"", b"plain"], 0.0, "alice")  # the default service
    balancer.from_client(mdp_request(b"echo"), 0.0, "mallory")
    tagged = tag.encode(5)
    balancer.from_client([b"C", tagged, b"", b"x"], 0.0, None)  # a key no longer allowed
    clients, workers = take(balancer)
    assert workers == []
    assert clients[0][-1].startswith(b"zmqrelay-error: Forbidden: ")
    assert b"forbidden" in clients[1][-1]
    assert tag.decode(clients[2][1]) == tag.Tag(5, tag.Status.FORBIDDEN)
    balancer.from_client(mdp_request(b"resize.png"), 0.0, "alice")
    _, (request,) = take(balancer)
    assert request[0] == b"W"
    assert balancer.statistics().forbidden_requests == 3


def test_a_worker_may_register_only_for_what_it_may_serve() -> None:
    balancer = secured(
        POLICY.replace('resizer = ["resize.*"]', 'resizer = ["resize.*"]\nw = ["echo"]')
    )
    balancer.from_worker([b"R", *MAJORTOMO, b"\x01", b"echo"], 0.0, "resizer")
    balancer.from_worker([b"X", *MAJORTOMO, b"\x01", b"echo"], 0.0, None)
    assert take(balancer) == ([], [[b"R", *MAJORTOMO, b"\x06"], [b"X", *MAJORTOMO, b"\x06"]])
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"echo"], 0.0, "w")
    assert balancer.statistics().scheduler.workers == 1
    # Its key revoked (it now comes with no name): it is told DISCONNECT and forgotten.
    balancer.from_worker([b"W", *MAJORTOMO, b"\x05"], 0.1, None)
    assert take(balancer) == ([], [[b"W", *MAJORTOMO, b"\x06"]])
    stats = balancer.statistics()
    assert (stats.scheduler.workers, stats.forbidden_workers) == (0, 3)


def test_service_discovery_hides_services_the_client_may_not_call() -> None:
    balancer = secured()
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"admin"], 0.0, "anyone")  # [workers]
    take(balancer)  # ... allows no "anyone": it was told DISCONNECT
    balancer = secured('[clients]\nalice = ["echo"]\n"ops-*" = ["*"]\n')
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"admin"], 0.0, "w")
    take(balancer)
    balancer.from_client(mdp_request(b"mmi.service", b"admin"), 0.0, "alice")
    balancer.from_client(mdp_request(b"mmi.service", b"admin"), 0.0, "ops-2")
    clients, _ = take(balancer)
    assert [reply[-1] for reply in clients] == [b"404", b"200"]


def test_a_secured_broker_without_a_policy_takes_any_allowed_key() -> None:
    balancer = secured(None)
    balancer.from_worker([b"W", *MAJORTOMO, b"\x01", b"echo"], 0.0, "KEY")
    balancer.from_client(mdp_request(b"echo"), 0.0, "OTHER")
    _, workers = take(balancer)
    assert workers[-1][0] == b"W"


def test_the_policy_in_the_docs_reads_as_it_says() -> None:
    page = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    text = page.split("```toml\n", 1)[1].split("```", 1)[0]
    policy = parse(text, "docs/security.md")
    assert policy.may_call("billing", b"invoice")
    assert policy.may_call("billing", b"resize.png")
    assert not policy.may_call("billing", b"admin")
    assert policy.may_call("ops-1", b"admin")
    assert policy.may_serve("resizer-1", b"resize.png")
    assert not policy.may_serve("resizer-1", b"invoice")
    assert policy.may_serve("invoicer", b"invoice")
