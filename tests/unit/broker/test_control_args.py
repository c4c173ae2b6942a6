"""Strict parsing of control-command arguments: the exact types, no unknown keys, bounded sizes, and one
clear ``InputError`` for anything else, whatever bytes arrive on stdin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.broker.control import _SPECS, MAX_ARGUMENTS, VERBS, error_reply, parse_arguments
from jit_ssh.ca import AccessDenied, InputError

VALID: dict[str, dict[str, Any]] = {
    "whoami": {},
    "request": {
        "hosts": ["prod-web-3"],
        "selector": {"env": "prod"},
        "login": "ubuntu",
        "duration": "30m",
        "reason": "disk full",
        "ticket": "INC-1",
        "start": "2030-01-01T00:00:00+00:00",
        "extensions": ["permit-pty"],
        "break_glass": False,
    },
    "status": {"id": 1},
    "requests": {"pending": True, "mine": False, "all": True},
    "approve": {"id": 7, "comment": "ok"},
    "deny": {"id": 7, "reason": "no"},
    "cancel": {"id": 7},
    "revoke": {"id": 7, "reason": "done"},
    "cert": {"id": 7, "public_key": "ssh-ed25519 AAAA"},
}
#: One value of each JSON type the specs use, for the verbs that VALID does not spell out.
SAMPLE: dict[type, Any] = {int: 1, str: "x", bool: True, list: ["x"], dict: {"k": "v"}}
#: The request-workflow verbs have realistic arguments; every other verb gets SAMPLE values from its spec.
for _verb, _spec in _SPECS.items():
    VALID.setdefault(_verb, {key: SAMPLE[kind] for key, (kind, _) in _spec.items()})
REQUIRED: dict[str, set[str]] = {v: {k for k, (_, required) in spec.items() if required} for v, spec in _SPECS.items()}
#: A value of the wrong JSON type for each Python type in the specs.
WRONG = {int: ["1", 1.0, True, None, [1]], str: [1, None, ["x"], {"x": 1}, False], bool: [1, 0, "true", None],
         list: ["x", {"x": 1}, 1], dict: [[], "x", 1]}  # fmt: skip


def parse(verb: str, value: Any) -> dict[str, Any]:
    return parse_arguments(verb, json.dumps(value).encode())


def refused(verb: str, raw: bytes, match: str) -> str:
    with pytest.raises(InputError, match=match) as caught:
        parse_arguments(verb, raw)
    message = caught.value.message
    assert "\n" not in message
    assert len(message) <= 300
    return message


def test_the_workflow_verbs_are_there() -> None:
    assert {"whoami", "request", "status", "requests", "approve", "deny", "cancel", "revoke", "cert"} <= VERBS
    assert set(VALID) == VERBS
    assert REQUIRED["request"] == {"login", "duration", "reason"}
    assert REQUIRED["cert"] == {"id", "public_key"}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_valid_arguments_pass_unchanged(verb: str) -> None:
    assert parse(verb, VALID[verb]) == VALID[verb]
    minimal = {k: v for k, v in VALID[verb].items() if k in REQUIRED[verb]}
    assert parse(verb, minimal) == minimal


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_each_required_argument_is_required(verb: str) -> None:
    for key in REQUIRED[verb]:
        args = {k: v for k, v in VALID[verb].items() if k != key}
        refused(verb, json.dumps(args).encode(), f"{verb}: missing argument '{key}'")
    if not REQUIRED[verb]:
        assert parse_arguments(verb, b"") == {}
        assert parse_arguments(verb, b" \n\t ") == {}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_unknown_arguments_are_refused_naming_the_known_ones(verb: str) -> None:
    message = refused(verb, json.dumps({**VALID[verb], "force": True}).encode(), f"{verb}: unknown argument 'force'")
    for key in VALID[verb]:
        assert key in message
    if not VALID[verb]:
        assert message.endswith("expected none")
    refused(verb, json.dumps({"k" * 1000: 1}).encode(), "unknown argument 'kkkkkkkk")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_argument_needs_its_exact_type(verb: str) -> None:
    for key, (kind, _) in _SPECS[verb].items():
        for wrong in WRONG[kind]:
            args = {**VALID[verb], key: wrong}
            refused(
                verb,
                json.dumps(args).encode(),
                f"{verb}: {key} must be a {kind.__name__}, found {type(wrong).__name__}",
            )


def test_unknown_verbs_are_refused_listing_the_known_ones() -> None:
    for verb in ("", "rm", "APPROVE", "approve ", "sh -c id", "x" * 500, "approve\x00"):
        message = refused(verb, b"{}", "unknown command")
        assert f"expected one of {', '.join(sorted(VERBS))}" in message
        assert len(message) < 200


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"{", "arguments are not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'{"id": 1,}', "arguments are not valid JSON"),
        (b"{} {}", "arguments are not valid JSON: Extra data"),
        (b"{'id': 1}", "arguments are not valid JSON"),
        (b"\xef\xbb\xbf{}", "arguments are not valid JSON"),  # a UTF-8 byte order mark
        (b"[" * 100_000, "bytes; at most 65536"),
        (b"[" * 60_000, "arguments are not valid JSON: nested too deeply or a number too long"),
        (b'{"id": ' + b"1" * 5000 + b"}", "arguments are not valid JSON: nested too deeply or a number too long"),
        (b'{"id": NaN}', "status: id must be a int, found float"),
        (b'{"id": 1e400}', "status: id must be a int, found float"),
        (b"[]", "arguments must be one JSON object"),
        (b"null", "arguments must be one JSON object"),
        (b"7", "arguments must be one JSON object"),
        (b'"{}"', "arguments must be one JSON object"),
        (b"\xff", "arguments are not UTF-8 text"),
        (b'{"id": 1, "x": "\xc3"}', "arguments are not UTF-8 text"),
        (b"\xed\xa0\x80", "arguments are not UTF-8 text"),  # an encoded surrogate is not UTF-8
        (b" " * (MAX_ARGUMENTS + 1), f"arguments are {MAX_ARGUMENTS + 1} bytes; at most {MAX_ARGUMENTS}"),
    ],
)
def test_malformed_stdin_is_one_clear_error(raw: bytes, match: str) -> None:
    refused("status", raw, match)


@pytest.mark.parametrize(
    ("verb", "raw"),
    [
        ("session", b'{"id": "\\ud800"}'),
        ("request", b'{"hosts": ["prod-web-3", "x\\udfff"], "login": "u", "duration": "1h", "reason": "r"}'),
        ("request", b'{"selector": {"\\udc80": "prod"}, "login": "u", "duration": "1h", "reason": "r"}'),
        ("sessions", b'{"grep": "a\\ud83d"}'),  # half of a pair
        ("status", b'{"\\ud800": 1}'),
    ],
)
def test_a_lone_surrogate_anywhere_is_refused(verb: str, raw: bytes) -> None:
    """JSON can spell a string that is not text (a lone UTF-16 surrogate); SQLite, RE2 and file names refuse
    it with their own exceptions, which reached the control plane as internal errors (found by the fuzz
    test of the control verbs)."""
    refused(verb, raw, "arguments are not valid text: a string holds a lone surrogate")


def test_a_surrogate_pair_is_one_character() -> None:
    assert parse_arguments("session", b'{"id": "\\ud83d\\ude00"}') == {"id": "\U0001f600"}


def test_the_size_bound_is_inclusive() -> None:
    padding = MAX_ARGUMENTS - len(b'{"id": 1}')
    assert parse_arguments("status", b'{"id": 1}' + b" " * padding) == {"id": 1}


def test_the_last_of_duplicate_keys_counts_and_is_still_checked() -> None:
    assert parse_arguments("status", b'{"id": "x", "id": 2}') == {"id": 2}
    refused("status", b'{"id": 2, "id": "x"}', "id must be a int")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(verb=st.sampled_from(sorted(VERBS)), raw=st.binary(max_size=300))
def test_any_bytes_give_arguments_or_one_input_error(verb: str, raw: bytes) -> None:
    error: InputError | None = None
    try:
        args = parse_arguments(verb, raw)
    except InputError as exc:
        error = exc
    else:
        assert isinstance(args, dict)
    if error is not None:
        assert "\n" not in error.message
        assert error.exit_code == 2


@settings(max_examples=300, deadline=None)
@given(verb=st.sampled_from(sorted(VERBS)), value=st.dictionaries(st.sampled_from(["id", "hosts", "login", "duration",
       "reason", "public_key", "pending", "comment", "selector", "break_glass", "zzz"]), JSON, max_size=6))  # fmt: skip
def test_accepted_arguments_always_match_the_spec(verb: str, value: dict[str, Any]) -> None:
    spec = _SPECS[verb]
    try:
        args = parse(verb, value)
    except InputError:
        return
    assert set(args) <= set(spec)
    assert {k for k, (_, required) in spec.items() if required} <= set(args)
    for key, val in args.items():
        assert type(val) is spec[key][0]


def test_error_reply_carries_the_exit_code() -> None:
    assert error_reply(AccessDenied("no\nway")) == {
        "ok": False,
        "error": {"kind": "AccessDenied", "message": "no way", "exit_code": 3},
    }
    assert error_reply(InputError("bad"))["error"]["exit_code"] == 2
