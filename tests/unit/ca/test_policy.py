"""The access policy: loading with line-precise errors, evaluation, approvers, and property tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca.certs import ALL_USER_EXTENSIONS
from jit_ssh.ca.errors import AccessDenied, ConfigError
from jit_ssh.ca.policy import AccessQuery, Decision, HostInfo, Policy, Rule

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "policy.toml"
PROD = HostInfo("prod-web-3", {"env": "prod"})
STAGING = HostInfo("staging-api", {"env": "staging"})
DB = HostInfo("db-1", {})


@pytest.fixture(scope="module")
def example() -> Policy:
    return Policy.load(EXAMPLE)


def ask(
    policy: Policy,
    user: str,
    *hosts: HostInfo,
    login: str = "ubuntu",
    hours: float = 1,
    extensions: frozenset[str] = frozenset(),
    break_glass: bool = False,
    groups: frozenset[str] = frozenset(),
) -> Decision:
    query = AccessQuery(user, groups, hosts, login, timedelta(hours=hours), extensions, break_glass)
    return policy.evaluate(query)


def denied_because(decision: Decision, *fragments: str) -> None:
    assert not decision.allowed
    assert decision.max_duration == timedelta(0)
    assert decision.extensions == frozenset()
    assert decision.approvals_required == 0
    text = " | ".join(decision.reasons)
    for fragment in fragments:
        assert fragment in text


# -- the example policy ------------------------------------------------------------------------------


def test_example_loads(example: Policy) -> None:
    assert [rule.name for rule in example.rules] == ["db-port-forwarding", "prod", "staging", "prod-break-glass"]
    assert example.reviewer_groups == {"security", "sre"}
    assert example.groups_of("alice", ["admins"]) == {"admins", "sre"}
    assert example.groups_of("nobody", []) == frozenset()
    assert example.source == str(EXAMPLE)
    assert example.pending_per_user == 10  # the default, which the example documents


def test_prod_needs_one_approval_from_sre_or_security(example: Policy) -> None:
    decision = ask(example, "carol", PROD, login="deploy", hours=4)
    assert decision.allowed
    assert decision.rules == ("prod",)
    assert decision.reasons == (
        "prod-web-3: rule 'prod' (up to 4h, 1 approval(s) from security or sre) lets carol in as deploy",
    )
    assert decision.max_duration == timedelta(hours=4)
    assert decision.approvals_required == 1
    assert decision.approver_groups == {"sre", "security"}
    assert decision.extensions == {"permit-pty"}
    assert not decision.auto_approve
    assert not decision.break_glass


def test_prod_negative_controls(example: Policy) -> None:
    denied_because(ask(example, "carol", PROD, hours=5), "rule 'prod' allows at most 4h, asked for 5h")
    denied_because(ask(example, "carol", PROD, login="root"), "allows logins deploy, ubuntu, not 'root'")
    denied_because(
        ask(example, "erin", PROD), "rules prod, prod-break-glass match but admit none of erin's groups (security)"
    )
    # Named like production but not labelled so: no rule, rather than a guess.
    denied_because(ask(example, "alice", HostInfo("prod-web-9", {})), "prod-web-9: no rule matches this host")
    denied_because(ask(example, "alice", HostInfo("Prod-web-3", {"env": "prod"})), "no rule matches")


def test_staging_is_auto_approved(example: Policy) -> None:
    decision = ask(example, "dave", STAGING, login="deploy", hours=8)
    assert decision.allowed
    assert decision.auto_approve
    assert decision.approvals_required == 0
    assert decision.approver_groups == frozenset()
    assert "staging-api: rule 'staging' (up to 8h, auto-approved) lets dave in as deploy" in decision.reasons
    denied_because(ask(example, "dave", STAGING, hours=9), "allows at most 8h, asked for 9h")


def test_break_glass_for_oncall(example: Policy) -> None:
    decision = ask(example, "dave", PROD, break_glass=True)
    assert decision.allowed
    assert decision.break_glass
    assert not decision.auto_approve
    assert decision.approvals_required == 0
    assert decision.rules == ("prod-break-glass",)
    assert "flagged for review" in decision.reasons[0]
    denied_because(ask(example, "dave", PROD, break_glass=True, hours=2), "allows at most 1h, asked for 2h")
    denied_because(ask(example, "dave", PROD, break_glass=True, login="deploy"), "not 'deploy'")
    # alice is in sre, not oncall: no break-glass for her, only the ordinary rule.
    denied_because(ask(example, "alice", PROD, break_glass=True), "no break-glass rule lets alice in", "prod")
    denied_because(ask(example, "alice", STAGING, break_glass=True), "no break-glass rule lets alice in")


def test_an_ordinary_request_never_meets_a_break_glass_rule() -> None:
    policy = Policy.loads(
        rule_text(
            "bg", 'hosts = ["prod-*"]', 'requesters = ["oncall"]', "break_glass = true", approvals=None, approvers=None
        )
    )
    denied_because(ask(policy, "dave", PROD, groups=frozenset({"oncall"})), "only break-glass rules (bg)")


def test_db_port_forwarding_needs_two_from_security(example: Policy) -> None:
    forwarding = frozenset({"permit-port-forwarding"})
    decision = ask(example, "bob", DB, login="postgres", extensions=forwarding)
    assert decision.allowed
    assert decision.extensions == {"permit-pty", "permit-port-forwarding"}
    assert decision.approvals_required == 2
    assert decision.approver_groups == {"security"}
    # Least privilege: allowed but not asked for is not granted.
    assert ask(example, "bob", DB).extensions == {"permit-pty"}
    denied_because(
        ask(example, "bob", PROD, extensions=forwarding), "rule 'prod' does not allow permit-port-forwarding"
    )
    denied_because(ask(example, "bob", DB, extensions=frozenset({"permit-X11-forwarding"})), "does not allow")
    denied_because(ask(example, "bob", DB, extensions=frozenset({"permit-everything"})), "permit-everything")
    denied_because(ask(example, "carol", DB), "admit none of carol's groups")


def test_several_hosts_combine_strictly(example: Policy) -> None:
    decision = ask(example, "alice", PROD, STAGING, DB)
    assert decision.allowed
    assert decision.rules == ("prod", "staging", "db-port-forwarding")
    assert decision.max_duration == timedelta(hours=2)
    assert decision.approvals_required == 2
    assert decision.approver_groups == {"security"}
    assert not decision.auto_approve
    assert decision.reasons[-1] == "all hosts: up to 2h, approvals: 2 approval(s) from security"
    # One host denied denies all of them, and says which.
    denied_because(ask(example, "alice", PROD, HostInfo("mail-1", {})), "mail-1: no rule matches this host")
    denied_because(ask(example, "alice", PROD, STAGING, hours=6), "prod-web-3: rule 'prod' allows at most 4h")
    # auto-approve only when every host's rule auto-approves
    assert ask(example, "alice", STAGING, HostInfo("staging-db", {})).auto_approve


def test_hosts_whose_approvers_do_not_overlap_are_denied() -> None:
    text = rule_text("a", 'hosts = ["a-*"]', approvers='["sre"]') + rule_text(
        "b", 'hosts = ["b-*"]', approvers='["dba"]'
    )
    policy = Policy.loads(text)
    one, two = HostInfo("a-1", {}), HostInfo("b-1", {})
    assert ask(policy, "alice", one, groups=frozenset({"sre"})).allowed
    denied_because(
        ask(policy, "alice", one, two, groups=frozenset({"sre"})),
        "rules a, b share no approver group; request the hosts separately",
    )


def test_first_matching_rule_decides() -> None:
    narrow = rule_text("narrow", 'hosts = ["prod-db-*"]', max_duration='"30m"')
    broad = rule_text("broad", 'hosts = ["prod-*"]', max_duration='"8h"')
    policy = Policy.loads(narrow + broad)
    denied_because(
        ask(policy, "alice", HostInfo("prod-db-1", {}), hours=1, groups=frozenset({"sre"})),
        "rule 'narrow' allows at most 30m",
    )
    assert ask(policy, "alice", HostInfo("prod-web-1", {}), hours=8, groups=frozenset({"sre"})).allowed
    # ... but a rule that does not admit the requester does not decide.
    other = rule_text("other", 'hosts = ["prod-*"]', 'requesters = ["dev"]')
    policy = Policy.loads(other + broad)
    assert ask(policy, "alice", HostInfo("prod-web-1", {}), hours=8, groups=frozenset({"sre"})).rules == ("broad",)


def test_labels_and_star_requesters() -> None:
    policy = Policy.loads(rule_text("labelled", 'labels = { env = "prod", role = "db" }', 'requesters = ["*"]'))
    host = HostInfo("anything", {"env": "prod", "role": "db"})
    assert ask(policy, "zed", host).allowed
    denied_because(ask(policy, "zed", HostInfo("anything", {"env": "prod"})), "no rule matches")
    denied_because(ask(policy, "zed", HostInfo("anything", {"env": "prod", "role": "web"})), "no rule matches")


def test_malformed_queries_are_denied(example: Policy) -> None:
    denied_because(ask(example, "alice"), "expected one or more hosts, found none")
    denied_because(ask(example, "alice", PROD, hours=0), "expected a positive duration")
    denied_because(ask(example, "alice", PROD, hours=-1), "expected a positive duration")
    denied_because(ask(example, "alice", PROD, login="Ubuntu"), "not 'Ubuntu'")
    denied_because(ask(example, "alice", PROD, login=""), "not ''")


def test_decision_refuses_to_contradict_itself() -> None:
    pty = frozenset({"permit-pty"})
    with pytest.raises(ValueError, match="inconsistent"):
        Decision(True, (), (), timedelta(hours=1), 0, frozenset(), pty, auto_approve=False, break_glass=False)
    with pytest.raises(ValueError, match="inconsistent"):
        Decision(True, (), (), timedelta(hours=1), 1, frozenset(), pty, auto_approve=False, break_glass=False)
    with pytest.raises(ValueError, match="inconsistent"):
        Decision(
            True, (), (), timedelta(hours=1), 0, frozenset(), frozenset({"x"}), auto_approve=True, break_glass=False
        )
    with pytest.raises(ValueError, match="inconsistent"):
        Decision(True, (), (), timedelta(0), 1, frozenset({"sre"}), pty, auto_approve=False, break_glass=False)


def test_rules_and_policies_validate_when_built_directly(example: Policy) -> None:
    prod = example.rules[1]
    with pytest.raises(ValueError, match=r"^approvals: expected none, as auto_approve grants at once, found 1$"):
        Rule(**{**{f: getattr(prod, f) for f in prod.__dataclass_fields__}, "auto_approve": True})
    with pytest.raises(ValueError, match="expected at most 7d, found 8d"):
        Rule(**{**{f: getattr(prod, f) for f in prod.__dataclass_fields__}, "max_duration": timedelta(days=8)})
    with pytest.raises(ConfigError, match="expected rules with unique names"):
        Policy((prod, prod))
    with pytest.raises(ConfigError, match="expected rules with unique names"):
        Policy(())


# -- approvers ---------------------------------------------------------------------------------------


def test_check_approver(example: Policy) -> None:
    decision = ask(example, "carol", PROD)
    example.check_approver(approver="alice", approver_groups=frozenset(), requester="carol", decision=decision)
    example.check_approver(
        approver="zoe", approver_groups=frozenset({"security"}), requester="carol", decision=decision
    )
    with pytest.raises(AccessDenied, match="expected a member of security or sre, found groups dev"):
        example.check_approver(approver="dave", approver_groups=frozenset(), requester="carol", decision=decision)
    with pytest.raises(AccessDenied, match="found groups none"):
        example.check_approver(approver="mallory", approver_groups=frozenset(), requester="carol", decision=decision)


def test_nobody_approves_their_own_request(example: Policy) -> None:
    decision = ask(example, "alice", PROD)
    with pytest.raises(AccessDenied, match="alice cannot approve their own request"):
        example.check_approver(approver="alice", approver_groups=frozenset(), requester="alice", decision=decision)


def test_nothing_to_approve(example: Policy) -> None:
    for decision in (ask(example, "dave", STAGING), ask(example, "dave", PROD, break_glass=True)):
        with pytest.raises(AccessDenied, match="without approval"):
            example.check_approver(approver="bob", approver_groups=frozenset(), requester="dave", decision=decision)
    with pytest.raises(AccessDenied, match="policy denies"):
        example.check_approver(
            approver="bob", approver_groups=frozenset(), requester="dave", decision=ask(example, "dave", DB)
        )


# -- configuration errors name the line --------------------------------------------------------------

BASE = """\
[groups]
sre = ["alice"]

[[rule]]
name = "prod"
hosts = ["prod-*"]
requesters = ["sre"]
logins = ["ubuntu"]
max_duration = "4h"
approvals = 1
approvers = ["sre"]
"""


def edited(**changes: str | None) -> str:
    """BASE with rule keys replaced in place (same line), removed (None), or added at the end."""
    lines, seen = [], set()
    for line in BASE.splitlines():
        key = line.split(" = ")[0]
        if key in changes and line.index("=") > 0:
            seen.add(key)
            if changes[key] is not None:
                lines.append(f"{key} = {changes[key]}")
            continue
        lines.append(line)
    lines += [f"{key} = {value}" for key, value in changes.items() if key not in seen and value is not None]
    return "\n".join(lines) + "\n"


def rule_text(name: str, *lines: str, **keys: str | None) -> str:
    values: dict[str, str | None] = {
        "requesters": '["sre"]',
        "logins": '["ubuntu"]',
        "max_duration": '"4h"',
        "approvals": "1",
        "approvers": '["sre"]',
    }
    values.update(keys)
    body = [f'name = "{name}"', *lines]
    given_keys = {line.split(" = ")[0] for line in lines}
    body += [f"{k} = {v}" for k, v in values.items() if v is not None and k not in given_keys]
    return "[[rule]]\n" + "\n".join(body) + "\n\n"


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        Policy.loads(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_documented_message() -> None:
    assert config_error(edited(max_duration='"forever"')) == (
        "policy.toml line 9 (rule 'prod'): max_duration: expected a duration such as 30m, 4h or 1h30m, found 'forever'"
    )


@pytest.mark.parametrize(
    ("changes", "line", "fragment"),
    [
        ({"max_duration": "240"}, 9, "max_duration: expected a duration such as 4h, found 240"),
        ({"max_duration": '"30d"'}, 9, "max_duration: expected at most 7d, found 30d"),
        ({"max_duration": '"0m"'}, 9, "max_duration: expected a positive duration"),
        ({"max_duration": None}, 4, "max_duration: expected a duration such as 4h, found nothing"),
        ({"approvals": "0"}, 10, "approvals: expected a number of approvals from 1 to 10"),
        ({"approvals": "11"}, 10, "found 11"),
        ({"approvals": "true"}, 10, "approvals: expected a number of approvals from 1 to 10 (or auto_approve"),
        ({"approvals": '"2"'}, 10, "found '2'"),
        ({"approvals": None}, 4, "approvals: expected a number of approvals from 1 to 10"),
        ({"approvers": None}, 4, "approvers: expected the groups that may approve, found []"),
        ({"approvers": '["*"]'}, 11, "approvers: expected group names such as 'sre', found '*'"),
        ({"approvers": '"sre"'}, 11, "approvers: expected a list of group names such as 'sre', found 'sre'"),
        ({"auto_approve": "true"}, 10, "approvals: expected none, as auto_approve grants at once, found 1"),
        ({"approvals": None, "break_glass": "true"}, 10, "approvers: expected none, as break_glass grants at once"),
        (
            {"approvals": None, "approvers": None, "auto_approve": "true", "break_glass": "true"},
            11,
            "break_glass: expected it or auto_approve, not both",
        ),
        ({"auto_approve": '"yes"'}, 12, "auto_approve: expected true or false, found 'yes'"),
        ({"extensions": '["permit-pty", "permit-everything"]'}, 12, "found 'permit-everything'"),
        ({"extensions": '"permit-pty"'}, 12, "extensions: expected a list of extensions among"),
        ({"logins": '["Root"]'}, 8, "logins: expected logins such as 'ubuntu' ([a-z_][a-z0-9_.-]*), found 'Root'"),
        ({"logins": "[]"}, 8, "logins: expected a non-empty list of logins"),
        (
            {"logins": None},
            4,
            "logins: expected a non-empty list of logins such as 'ubuntu' ([a-z_][a-z0-9_.-]*), found nothing",
        ),
        ({"requesters": None}, 4, "requesters: expected a non-empty list of group names"),
        ({"requesters": '["s r e"]'}, 7, "requesters: expected group names such as 'sre' or '*', found 's r e'"),
        ({"requesters": '["sre", 1]'}, 7, "requesters: expected a non-empty list of group names"),
        ({"hosts": None}, 4, "hosts: expected hosts = [...] and/or labels = {...}, found []"),
        ({"hosts": '["prod web"]'}, 6, "hosts: expected host globs such as 'prod-*', found 'prod web'"),
        ({"hosts": '"prod-*"'}, 6, "hosts: expected a list of host globs"),
        ({"labels": "{}"}, 12, 'labels: expected a table such as { env = "prod" }, found {}'),
        ({"labels": "{ env = 1 }"}, 12, "found {'env': 1}"),
        ({"labels": '["env"]'}, 12, "labels: expected a table such as"),
        ({"name": None}, 4, "line 4 (rule #1): name: expected a rule name such as 'prod', found nothing"),
        ({"name": '"bad name!"'}, 5, "(rule 'bad name!'): name: expected a rule name of [A-Za-z0-9_.-]"),
        ({"name": "3"}, 5, "(rule #1): name: expected a rule name such as 'prod', found 3"),
        ({"approver": '["sre"]'}, 12, "approver: unknown key; expected one of approvals, approvers, auto_approve"),
        ({"Logins": '["ubuntu"]'}, 12, "Logins: unknown key"),
    ],
)
def test_rule_errors_name_the_line(changes: dict[str, str | None], line: int, fragment: str) -> None:
    message = config_error(edited(**changes))
    assert message.startswith(f"policy.toml line {line} (rule ")
    assert fragment in message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("policy = 1\n" + BASE, 1, "policy: unknown key; expected groups, limits, review or rule"),
        (BASE + "\n[rules]\nname = 'x'\n", 13, "rules: unknown key"),
        (BASE.replace('hosts = ["prod-*"]', "hosts = [prod-*]"), 6, "expected valid TOML, found an error: Invalid"),
        (BASE + 'approvers = ["sre"]\n', 12, "expected valid TOML, found an error: Cannot overwrite a value"),
        (BASE + "extensions = [\n", 12, "expected valid TOML, found an error"),
        (BASE.replace('sre = ["alice"]', 'sre = "alice"'), 2, "groups.sre: expected a list of names"),
        (
            BASE.replace('sre = ["alice"]', 'sre = ["al ice"]'),
            2,
            "groups.sre: expected names such as 'alice' or 'sre', found 'al ice'",
        ),
        (
            BASE.replace('sre = ["alice"]', '"s re" = []'),
            2,
            "groups: expected a group name such as 'sre', found key 's re'",
        ),
        ("groups = 3\n" + BASE.replace('[groups]\nsre = ["alice"]\n', ""), 1, "groups: expected a table, found 3"),
        ("[groups]\n", 1, "expected at least one [[rule]] table, found nothing"),
        ("rule = []\n", 1, "expected at least one [[rule]] table, found []"),
        ("rule = [1]\n", 1, "(rule #1): expected a [[rule]] table, found 1"),
        (BASE + "\n[review]\ngroups = ['security', 'x y']\n", 14, "review.groups: expected names such as"),
        (BASE + "\n[review]\ngroup = ['security']\n", 14, "review: expected only groups = [...], found key 'group'"),
        (BASE + "\n[limits]\npending_per_user = 0\n", 14, "limits.pending_per_user: expected a number from 1 to 1000"),
        (BASE + "\n[limits]\npending_per_user = 1001\n", 14, "expected a number from 1 to 1000, found 1001"),
        (BASE + "\n[limits]\npending_per_user = true\n", 14, "expected a number from 1 to 1000, found True"),
        (BASE + "\n[limits]\npending_per_user = '5'\n", 14, "expected a number from 1 to 1000, found '5'"),
        (BASE + "\n[limits]\npending = 5\n", 14, "limits: expected only pending_per_user = N, found key 'pending'"),
        ("limits = 5\n" + BASE, 1, "limits: expected a table, found 5"),
        (
            BASE + "\n" + rule_text("staging", 'hosts = ["staging-*"]', max_duration='"8 hours"'),
            18,
            "(rule 'staging'): max_duration",
        ),
        (
            BASE + "\n" + rule_text("prod", 'hosts = ["other-*"]'),
            14,
            "(rule 'prod'): name: expected a unique rule name",
        ),
        (BASE + "\n[rule.labels]\nenv = 1\n", 13, "labels: expected a table such as"),
        (
            BASE + '\n[rule.labels]\nenv = "prod"\n\n[[rule]]\nname = "x"\nhosts = ["*"]\n',
            16,
            "(rule 'x'): max_duration: expected",
        ),
    ],
)
def test_file_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    message = config_error(text)
    assert message.startswith(f"policy.toml line {line}")
    assert fragment in message


def test_valid_variants_load() -> None:
    policy = Policy.loads(BASE + '\n[rule.labels]\nenv = "prod"\n\n[review]\ngroups = []\n')
    assert policy.rules[0].labels == {"env": "prod"}
    assert policy.reviewer_groups == frozenset()
    inline = Policy.loads(
        'rule = [{ name = "a", hosts = ["*"], requesters = ["*"], logins = ["ubuntu"], '
        'max_duration = "1h", auto_approve = true }]'
    )
    assert inline.rules[0].auto_approve
    assert inline.rules[0].approvals == 0
    no_pty = Policy.loads(edited(extensions="[]"))
    decision = ask(no_pty, "alice", HostInfo("prod-1", {}))
    assert decision.allowed
    assert decision.extensions == frozenset()


def test_the_pending_cap_is_set_in_limits() -> None:
    assert Policy.loads(BASE).pending_per_user == 10
    assert Policy.loads(BASE + "\n[limits]\npending_per_user = 3\n").pending_per_user == 3
    assert Policy.loads("[limits]\npending_per_user = 1000\n\n" + BASE).pending_per_user == 1000
    with pytest.raises(ConfigError, match="pending_per_user: expected a number from 1 to 1000, found 0"):
        Policy(Policy.loads(BASE).rules, pending_per_user=0)


def test_load_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing\.toml: expected a readable UTF-8 policy file"):
        Policy.load(missing)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[[rule]]\n")
    with pytest.raises(ConfigError, match=r"binary\.toml: expected a readable UTF-8 policy file"):
        Policy.load(binary)
    broken = tmp_path / "broken.toml"
    broken.write_text(edited(approvals="0"))
    with pytest.raises(ConfigError, match=rf"^{broken} line 10 \(rule 'prod'\): approvals"):
        Policy.load(broken)


# -- properties --------------------------------------------------------------------------------------

GLOBS = ["prod-*", "staging-*", "db-*", "*", "prod-web-?", "db-[12]", "web-1"]
HOSTNAMES = ["prod-web-1", "prod-web-2", "prod-db-1", "staging-api", "db-1", "db-3", "web-1", "bastion"]
GROUPS = ["sre", "dev", "security", "oncall"]
LOGINS = ["ubuntu", "deploy", "postgres"]
EXTENSIONS = sorted(ALL_USER_EXTENSIONS)
label_tables = st.dictionaries(st.sampled_from(["env", "role"]), st.sampled_from(["prod", "staging", "web", "db"]))


@st.composite
def rule_dicts(draw: st.DrawFn, index: int) -> dict[str, object]:
    rule: dict[str, object] = {"name": f"r{index}"}
    hosts = draw(st.none() | st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3, unique=True))
    labels = draw(label_tables)
    if hosts is None and not labels:
        hosts = [draw(st.sampled_from(GLOBS))]
    if hosts is not None:
        rule["hosts"] = hosts
    if labels:
        rule["labels"] = labels
    rule["requesters"] = draw(st.lists(st.sampled_from([*GROUPS, "*"]), min_size=1, max_size=3, unique=True))
    rule["logins"] = ["ubuntu", *draw(st.lists(st.sampled_from(LOGINS[1:]), unique=True))]
    if draw(st.booleans()):
        rule["logins"] = draw(st.lists(st.sampled_from(LOGINS), min_size=1, unique=True))
    rule["max_duration"] = f"{draw(st.integers(1, 600))}m"
    mode = draw(st.sampled_from(["approval", "auto_approve", "break_glass"]))
    if mode == "approval":
        rule["approvals"] = draw(st.integers(1, 10))
        rule["approvers"] = draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True))
    else:
        rule[mode] = True
    if draw(st.booleans()):
        rule["extensions"] = draw(st.lists(st.sampled_from(EXTENSIONS), unique=True))
    return rule


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def to_toml(rules: list[dict[str, object]], members: Mapping[str, list[str]]) -> str:
    lines = ["[groups]", *(f"{group} = {toml_value(users)}" for group, users in members.items()), ""]
    for rule in rules:
        lines += ["[[rule]]", *(f"{key} = {toml_value(value)}" for key, value in rule.items()), ""]
    return "\n".join(lines)


@st.composite
def policies(draw: st.DrawFn) -> tuple[list[dict[str, object]], dict[str, list[str]]]:
    count = draw(st.integers(1, 6))
    rules = [draw(rule_dicts(index)) for index in range(count)]
    members = draw(st.dictionaries(st.sampled_from(GROUPS), st.lists(st.sampled_from(["alice", "bob", "carol"]))))
    return rules, members


# Biased towards requests that some rule allows, so that the properties about allowed decisions bite.
queries = st.builds(
    AccessQuery,
    user=st.sampled_from(["alice", "bob", "carol"]),
    groups=st.frozensets(st.sampled_from(GROUPS), min_size=1),
    hosts=st.lists(st.builds(HostInfo, st.sampled_from(HOSTNAMES), label_tables), min_size=1, max_size=3).map(tuple),
    login=st.sampled_from(["ubuntu", "ubuntu", "deploy", "postgres", "root"]),
    duration=st.integers(1, 360).map(lambda m: timedelta(minutes=m)),
    extensions=st.just(frozenset[str]())
    | st.frozensets(st.sampled_from([*EXTENSIONS, "permit-everything"]), max_size=2),
    break_glass=st.sampled_from([False, False, True]),
)


def selects(rule: Mapping[str, object], host: HostInfo) -> bool:
    globs = rule.get("hosts")
    labels = rule.get("labels", {})
    assert isinstance(labels, dict)
    if isinstance(globs, list) and not any(fnmatchcase(host.name, glob) for glob in globs):
        return False
    return all(host.labels.get(k) == v for k, v in labels.items())


def oracle(
    rules: list[dict[str, object]], groups: set[str], host: HostInfo, break_glass: bool
) -> dict[str, object] | None:
    """An independent reading of "the first rule that matches, admits and has the same break_glass"."""
    for rule in rules:
        requesters = rule["requesters"]
        assert isinstance(requesters, list)
        admits = "*" in requesters or bool(groups & set(requesters))
        if selects(rule, host) and admits and rule.get("break_glass", False) == break_glass:
            return rule
    return None


def str_list(value: object) -> list[str]:
    assert isinstance(value, list)
    return [str(item) for item in value]


def minutes(rule: Mapping[str, object]) -> timedelta:
    return timedelta(minutes=int(str(rule["max_duration"]).removesuffix("m")))


def extensions_of(rule: Mapping[str, object]) -> set[str]:
    value = rule.get("extensions", ["permit-pty"])
    assert isinstance(value, list)
    return set(value)


@settings(max_examples=200, deadline=None)
@given(policies(), queries)
def test_decisions_never_exceed_the_matched_rules(
    drawn: tuple[list[dict[str, object]], dict[str, list[str]]], query: AccessQuery
) -> None:
    rules, members = drawn
    policy = Policy.loads(to_toml(rules, members))
    decision = policy.evaluate(query)
    groups = set(query.groups) | {group for group, users in members.items() if query.user in users}
    matched = [oracle(rules, groups, host, query.break_glass) for host in query.hosts]
    if any(not any(selects(rule, host) for rule in rules) for host in query.hosts):
        assert not decision.allowed
    if not decision.allowed:
        assert decision.reasons
        return
    assert decision.extensions <= ALL_USER_EXTENSIONS
    assert decision.break_glass == query.break_glass
    assert query.duration <= decision.max_duration
    all_auto = all(rule is not None and rule.get("auto_approve") is True for rule in matched)
    for rule in matched:
        assert rule is not None  # every host has its deciding rule
        assert rule["name"] in decision.rules
        assert decision.max_duration <= minutes(rule)
        assert decision.extensions <= extensions_of(rule)
        assert query.login in str_list(rule["logins"])
        approvals = rule.get("approvals", 0)
        assert isinstance(approvals, int)
        if not all_auto:
            assert decision.approvals_required >= approvals
        if approvals:
            assert decision.approver_groups <= set(str_list(rule["approvers"]))
    assert decision.auto_approve == all_auto
    assert (decision.approvals_required == 0) == (all_auto or query.break_glass)
    assert set(decision.rules) == {str(rule["name"]) for rule in matched if rule is not None}


@settings(max_examples=200, deadline=None)
@given(policies(), queries)
def test_every_query_the_rules_allow_is_allowed(
    drawn: tuple[list[dict[str, object]], dict[str, list[str]]], query: AccessQuery
) -> None:
    """The converse: strictness never turns into denying what every host's rule allows."""
    rules, members = drawn
    policy = Policy.loads(to_toml(rules, members))
    groups = set(query.groups) | {group for group, users in members.items() if query.user in users}
    matched = [oracle(rules, groups, host, query.break_glass) for host in query.hosts]
    extra = set(query.extensions) - {"permit-pty"}
    fits = all(
        rule is not None
        and query.login in str_list(rule["logins"])
        and query.duration <= minutes(rule)
        and extra <= extensions_of(rule)
        for rule in matched
    )
    approver_sets = [set(str_list(rule["approvers"])) for rule in matched if rule is not None and "approvers" in rule]
    shared = set.intersection(*approver_sets) if approver_sets else {"-"}
    assert policy.evaluate(query).allowed == (fits and bool(shared))


@settings(max_examples=200, deadline=None)
@given(policies(), queries, st.sampled_from(["alice", "bob", "carol"]), st.frozensets(st.sampled_from(GROUPS)))
def test_approvers_are_never_the_requester_and_always_in_a_group(
    drawn: tuple[list[dict[str, object]], dict[str, list[str]]],
    query: AccessQuery,
    approver: str,
    approver_groups: frozenset[str],
) -> None:
    rules, members = drawn
    policy = Policy.loads(to_toml(rules, members))
    decision = policy.evaluate(query)
    groups = policy.groups_of(approver, approver_groups)
    try:
        policy.check_approver(
            approver=approver, approver_groups=approver_groups, requester=query.user, decision=decision
        )
    except AccessDenied:
        return
    assert decision.allowed
    assert approver != query.user
    assert decision.approvals_required >= 1
    assert groups & decision.approver_groups


KEYS_AND_BAD_VALUES = [
    ("requesters", "[]"),
    ("logins", '["Root"]'),
    ("max_duration", '"forever"'),
    ("extensions", '["permit-everything"]'),
    ("hosts", '["a b"]'),
    ("name", '"no spaces"'),
    ("approvals", "true"),
    ("auto_approve", "1"),
    ("typo_key", "1"),
]


@settings(max_examples=200, deadline=None)
@given(policies(), st.data())
def test_errors_point_at_the_offending_line(
    drawn: tuple[list[dict[str, object]], dict[str, list[str]]], data: st.DataObject
) -> None:
    rules, members = drawn
    lines = to_toml(rules, members).splitlines()
    headers = [number for number, line in enumerate(lines) if line == "[[rule]]"]
    index = data.draw(st.integers(0, len(rules) - 1))
    key, bad = data.draw(st.sampled_from(KEYS_AND_BAD_VALUES))
    start = headers[index]
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    at = next((n for n in range(start, end) if lines[n].startswith(f"{key} = ")), None)
    if at is None:
        at = end
        lines.insert(at, "")  # replaced just below: a new last key of the rule
    lines[at] = f"{key} = {bad}"
    message = config_error("\n".join(lines) + "\n")
    assert message.startswith(f"policy.toml line {at + 1} ")
    assert f": {key}: " in message
