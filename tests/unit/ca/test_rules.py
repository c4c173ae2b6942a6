"""The rules beside the policy: host identities, reviewers, and the principals a host's sshd accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jit_ssh.ca.errors import AccessDenied
from jit_ssh.ca.policy import HostInfo, Policy
from jit_ssh.ca.rules import HOST_GROUP, check_host_identity, check_reviewer, host_principals

#: The example policy: alice is in sre, erin in security (both reviewer groups), carol in dev.
POLICY = Policy.load(Path(__file__).resolve().parents[3] / "configs" / "policy.toml")
NOBODY_REVIEWS = Policy(rules=POLICY.rules)
VERBS = ("request", "status", "requests", "approve", "deny", "cancel", "revoke", "cert", "sessions", "session")


# -- host identities -------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_a_host_identity_is_refused_every_verb_but_the_krl(verb: str) -> None:
    with pytest.raises(AccessDenied) as caught:
        check_host_identity("host-web-3", ["other", HOST_GROUP], verb)
    assert caught.value.message == "host-web-3 is a host identity: it may only fetch the KRL"
    check_host_identity("alice", ["sre"], verb)  # a person with the same verb is not refused here


@pytest.mark.parametrize("verb", ["krl", "whoami"])
def test_a_host_identity_may_fetch_the_krl_and_ask_who_it_is(verb: str) -> None:
    check_host_identity("host-web-3", [HOST_GROUP], verb)
    with pytest.raises(AccessDenied):  # negative control: the same identity, any other verb
        check_host_identity("host-web-3", [HOST_GROUP], "request")


# -- reviewers -----------------------------------------------------------------------------------------
def test_reviewers_are_the_policys_reviewer_groups_by_store_or_policy_membership() -> None:
    check_reviewer(POLICY, "alice", [])  # sre through the policy's [groups]
    check_reviewer(POLICY, "zoe", ["security"])  # security through the store
    with pytest.raises(AccessDenied) as caught:
        check_reviewer(POLICY, "carol", ["dev"])
    assert caught.value.message == "carol is not a reviewer (reviewers: security, sre)"


def test_without_reviewer_groups_nobody_reviews() -> None:
    with pytest.raises(AccessDenied, match=r"alice is not a reviewer \(reviewers: nobody\)"):
        check_reviewer(NOBODY_REVIEWS, "alice", ["sre", "security"])
    check_reviewer(POLICY, "alice", ["sre"])  # the same user where the policy names reviewers


def test_a_host_identity_is_no_reviewer() -> None:
    with pytest.raises(AccessDenied, match="is not a reviewer"):
        check_reviewer(POLICY, "host-web-3", [HOST_GROUP])


# -- what a host's sshd accepts --------------------------------------------------------------------------
def test_each_login_the_policy_allows_on_a_host_lists_exactly_login_at_host() -> None:
    assert host_principals(POLICY, HostInfo("prod-web-3", {"env": "prod"})) == {
        "deploy": ("deploy@prod-web-3",),
        "ubuntu": ("ubuntu@prod-web-3",),
    }
    assert host_principals(POLICY, HostInfo("db-1")) == {"postgres": ("postgres@db-1",), "ubuntu": ("ubuntu@db-1",)}
    # Negative controls: a prod host without its label matches no rule, nor does a host no rule names.
    assert host_principals(POLICY, HostInfo("prod-web-3", {"env": "staging"})) == {}
    assert host_principals(POLICY, HostInfo("stage-1", {"env": "prod"})) == {}


@given(
    name=st.sampled_from(["db-1", "prod-web-3", "prod-db-2", "staging-api", "stage-1", "db-prod-9"]),
    env=st.sampled_from(["prod", "staging", ""]),
)
def test_no_principal_names_another_host_or_a_login_no_rule_allows_there(name: str, env: str) -> None:
    host = HostInfo(name, {"env": env} if env else {})
    files = host_principals(POLICY, host)
    allowed = {login for rule in POLICY.rules if rule.selects(host) for login in rule.logins}
    assert set(files) == allowed
    assert list(files) == sorted(files)
    for login, principals in files.items():
        assert principals == (f"{login}@{name}",)
