"""bounded_details: an audit event's details never exceed MAX_DETAIL, and are never cut as a whole: the
small fields (a peer address, a reason) stay whole beside a huge one, whatever characters it holds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca.audit import MAX_DETAIL, bounded_details

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=1500),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=10), inner, max_size=8),
    max_leaves=20,
)


def test_small_details_are_unchanged() -> None:
    details = {"peer": "192.0.2.1:5022", "serial": 7, "reason": "not approved"}
    assert json.loads(bounded_details(details)) == details


def test_a_huge_key_id_leaves_the_peer_and_reason_whole() -> None:
    details = {"key_id": "K" * 6000, "peer": "192.0.2.1:5022", "reason": "certificate 'KKK…' is self-signed",
               "serial": 2**63}  # fmt: skip
    text = bounded_details(details)
    assert len(text) <= MAX_DETAIL
    out = json.loads(text)
    assert {k: out[k] for k in ("peer", "reason", "serial")} == {k: details[k] for k in ("peer", "reason", "serial")}
    assert out["key_id"].startswith("KKKK")
    assert out["key_id"].endswith("\u2026")
    assert out["cut"] == ["key_id"]


def test_escapes_and_several_large_fields_share_the_room() -> None:
    details = {"a": "\x01" * 5000, "b": '\u00e9"\\' * 3000, "c": ["x" * 2000] * 5, "peer": "::1:22"}
    out = json.loads(text := bounded_details(details))
    assert len(text) <= MAX_DETAIL
    assert out["peer"] == "::1:22"
    assert out["cut"] == ["a", "b", "c"]
    assert all(len(json.dumps(out[k])) > 500 for k in "abc")  # each gets a fair share, not a sliver


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=80), _json, max_size=60))
def test_any_details_fit_and_keep_their_small_fields(details: dict[str, Any]) -> None:
    text = bounded_details(details)
    assert len(text) <= MAX_DETAIL
    out = json.loads(text)
    if len(json.dumps(details, sort_keys=True, separators=(",", ":"))) <= MAX_DETAIL:
        assert out == details
    elif len(details) <= 32:
        for key, value in details.items():
            if len(json.dumps(value, separators=(",", ":"))) <= 55 and key.isascii() and key.isidentifier():
                assert out[key[:32]] == value
