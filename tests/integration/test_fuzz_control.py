"""Every control verb against hostile arguments, through the broker's own dispatch on a real store.

A real :class:`Broker` (its CA, policy, SQLite store and recordings; not listening) answers as each
enrolled user: requesters, approvers, reviewers, a host identity. For every verb in the control plane's
specs, hypothesis sends argument objects of the right shape with hostile values (huge and empty strings,
control characters, lone surrogates, right-to-left marks, numbers at the edges of every integer type,
floats where integers go, nested structures, extra keys, missing ones), as JSON or as bytes that are not:

* ``dispatch`` never raises and its reply is strict JSON (no NaN, nothing but JSON types);
* the exit status is 0, or the error's: 2 (input) or 3 (refused), with a one-line message; never the
  "internal error" of an exception the verb did not expect;
* the streaming verbs (``export``, ``watch``, ``krl``), which the server runs outside ``dispatch``, raise
  nothing but the one error family, from argument parsing through reading the recording.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jit_ssh.broker.config import BrokerConfig
from jit_ssh.broker.control import _SPECS, HOST_GROUP, STREAM_VERBS, VERBS, dispatch, parse_arguments
from jit_ssh.broker.recording.asciicast import AsciicastWriter
from jit_ssh.broker.recording.format import follow_frames
from jit_ssh.broker.recording.recorder import Recorder
from jit_ssh.broker.server import Broker
from jit_ssh.ca import AccessDenied, JitSshError
from jit_ssh.ca.inventory import add_user
from jit_ssh.ca.store import RecordedSession

from tests.integration.broker_fixture import create_site

ED25519_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
#: alice and bob review (sre); carol requests only; dave approves db and has break-glass; host-7 is a host.
USERS = ["alice", "bob", "carol", "dave", "host-7"]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Bastion:
    broker: Broker
    requests: list[int]  # pending, approved
    sessions: list[str]  # ended, running


@pytest.fixture(scope="module")
def bastion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bastion]:
    site = create_site(tmp_path_factory.mktemp("fuzz-control"))
    policy = site.root / "policy.toml"
    policy.write_text(policy.read_text() + '\n[review]\ngroups = ["sre"]\n')
    broker = Broker(BrokerConfig.load(site.config), passphrase=None)
    try:
        add_user(broker.store, "host-7", keys=[], groups=[HOST_GROUP])
        authority = broker.authority
        base: dict[str, Any] = {"hosts": ["prod-web-3"], "login": "ubuntu", "duration": timedelta(minutes=30)}
        pending = authority.create_request(requester="alice", reason="fuzz pending", **base).id
        approved = authority.create_request(requester="alice", reason="fuzz approved", **base).id
        authority.approve(approved, approver="bob")
        sessions = [_recorded_session(broker, approved, f"fuzz-{n}", ended=n == 0) for n in range(2)]
        yield Bastion(broker, [pending, approved], sessions)
    finally:
        broker.review_pool.shutdown(wait=True)
        broker._io_pool.shutdown(wait=True)
        broker.store.dispose()


def _recorded_session(broker: Broker, request_id: int, session_id: str, *, ended: bool) -> str:
    """A session row with a real recording: typed commands, output, a file operation."""
    path = broker.config.recordings_dir / f"{session_id}.cast"
    recorder = Recorder.open(path, {"version": 2, "width": 80, "height": 24, "jit_ssh": {"session": session_id}})
    recorder.data("o", b"$ ")
    recorder.data("i", b"cat /etc/shadow\r")
    recorder.data("o", b"cat /etc/shadow\r\n\x1b]52;c;aGk=\x07root:*:1::\r\n$ ")
    recorder.meta({"sftp": {"op": "read", "path": "/etc/shadow", "outcome": "ok"}})
    size, digest = recorder.close()
    now = time.time()
    with broker.store.transaction() as session:
        session.add(
            RecordedSession(
                id=session_id, request_id=request_id, user="alice", host="prod-web-3", login="ubuntu", kind="shell",
                pty=True, client_serial=10**6, client_key_id="fuzz", started_at=now - 60,
                ended_at=now if ended else None, recording_path=str(path), recording_size=size if ended else None,
                recording_sha256=digest if ended else None, broker_id=broker.broker_id,
            )
        )  # fmt: skip
    return session_id


# -- hostile values ------------------------------------------------------------------------------------

NAMED = ["", " ", "\x00", "a\nb", "\x1b[2J\x1b]52;c;aGk=\x07", "\u202eevil", "x" * 5000, "x" * 70_000, "é" * 300,
         "../../etc/passwd", "prod-web-3", "prod-*", "ubuntu", "root", "30m", "0m", "-5m", "1h30m", "9999999999d",
         "400d", "2h", "1e400", "NaN", "Infinity", "2030-01-01T00:00:00+00:00", "0001-01-01T00:00:00+14:00",
         "9999-12-31T23:59:59-14:00", "2030-01-01T00:00:00", "(a+)+$", "[", "a{1000}{1000}", "\\", "*", "(?P<x>",
         ED25519_LINE, "ssh-ed25519 AAAA", "ssh-rsa " + "A" * 16_000, "fuzz-0", "fuzz-1", "no-such-session",
         "permit-pty", "permit-port-forwarding", "export", "replay", "watch"]  # fmt: skip
STRINGS = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Cf", "Zl", "Zp", "Co", "Cn"]), max_size=10),
    st.sampled_from(NAMED),
)
INTEGERS = st.one_of(
    st.integers(-5, 5),
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**4000]),
)
JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats() | STRINGS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(STRINGS, children, max_size=4),
    max_leaves=8,
)
RIGHT_TYPE: dict[type, st.SearchStrategy[Any]] = {
    str: STRINGS,
    int: INTEGERS,
    bool: st.booleans(),
    list: st.lists(st.one_of(STRINGS, STRINGS, JSON), max_size=40),
    dict: st.dictionaries(STRINGS, st.one_of(STRINGS, STRINGS, JSON), max_size=6),
}


SOON = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
#: Values that pass each argument's checks, so that a hostile value elsewhere reaches the verb's depths.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "hosts": st.sampled_from([["prod-web-3"], ["staging-1"], ["db-1"], ["prod-web-3", "prod-web-4"]]),
    "selector": st.sampled_from([{"env": "prod"}, {}]),
    "login": st.sampled_from(["ubuntu", "deploy", "postgres"]),
    "duration": st.sampled_from(["30m", "1h", "4h"]),
    "reason": st.just("fuzzing the control plane"),
    "ticket": st.just("INC-7"),
    "start": st.just(SOON),
    "extensions": st.sampled_from([["permit-pty"], ["permit-port-forwarding"], []]),
    "comment": st.just("ok"),
    "public_key": st.just(ED25519_LINE),
    "user": st.sampled_from(["alice", "bob"]),
    "host": st.just("prod-web-3"),
    "since": st.sampled_from(["2h", "2020-01-01"]),
    "grep": st.sampled_from(["shadow", "cat", "(a+)+$"]),
    "grep_output": st.sampled_from(["root", "aGk"]),
    "limit": st.integers(1, 500),
    "purpose": st.sampled_from(["export", "replay"]),
}


@st.composite
def arguments(draw: st.DrawFn, verb: str, known: list[int], sessions: list[str]) -> bytes:
    """Arguments for ``verb``: a plausible value for each key but one or two hostile ones (of the key's
    type, mostly), a key missing or one unknown now and then, as JSON or as bytes that are not."""
    spec = _SPECS[verb]
    hostile = draw(st.sets(st.sampled_from(sorted(spec)), max_size=2)) if spec else set()
    args: dict[str, Any] = {}
    for key, (kind, required) in spec.items():
        if not (required or key in hostile or draw(st.booleans())):
            continue
        if key in hostile:
            args[key] = draw(st.one_of(RIGHT_TYPE[kind], RIGHT_TYPE[kind], JSON))
        elif key in ("id", "request"):
            args[key] = draw(st.sampled_from(sessions) if kind is str else st.sampled_from(known))
        else:
            args[key] = draw(PLAUSIBLE.get(key, RIGHT_TYPE[kind]))
    once_in = st.sampled_from([False] * 9 + [True])  # hypothesis favours small integers; this is 1 in 10
    if args and draw(once_in):
        del args[draw(st.sampled_from(sorted(args)))]
    if draw(once_in):
        args[draw(STRINGS)] = draw(JSON)
    if draw(st.sampled_from([False] * 19 + [True])):
        return draw(st.binary(max_size=200))
    raw = json.dumps(args, ensure_ascii=draw(st.booleans()))
    return raw.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that are not UTF-8


def _check_error(message: str, code: int, what: object) -> None:
    assert code in (2, 3), (what, code, message)
    assert "internal error in" not in message, what
    assert message
    assert "\n" not in message
    assert len(message) <= 2000, (what, len(message))


# -- every verb ------------------------------------------------------------------------------------------


async def _stream(broker: Broker, user: str, verb: str, raw: bytes) -> int:
    """What ControlSession._stream does with a streaming verb, up to the bytes it would send."""
    args = parse_arguments(verb, raw)
    if verb == "krl":
        return len(await asyncio.to_thread(broker.current_krl))
    path, live = await broker.open_stream(user, verb, args)
    writer, sent = AsciicastWriter(), 0
    follow = verb == "watch" or bool(args.get("follow"))
    async for header, frame in follow_frames(path, live=live if follow else lambda: False, poll=0.01):
        sent += len(writer.header(header) if frame is None else writer.frame(frame))
    return sent + len(writer.finish())


@pytest.mark.parametrize("verb", sorted(VERBS))
@FUZZ
@given(data=st.data(), user=st.sampled_from(USERS))
def test_every_verb_answers_hostile_arguments_in_one_line(
    bastion: Bastion, verb: str, data: st.DataObject, user: str
) -> None:
    raw = data.draw(arguments(verb, bastion.requests, bastion.sessions), label="stdin")
    what = (verb, user, raw[:300])
    if verb in STREAM_VERBS:  # the server streams these itself: only the error family may come out
        try:
            sent = asyncio.run(_stream(bastion.broker, user, verb, raw))
        except JitSshError as exc:
            _check_error(exc.message, exc.exit_code, what)
        else:
            assert sent > 0
        return
    reply, code = dispatch(bastion.broker.control_context(user), verb, raw)
    text = json.dumps(reply, allow_nan=False)  # strict JSON: the server sends it to the client as is
    if code == 0:
        assert reply["ok"] is True, text[:500]
        return
    assert reply["ok"] is False
    assert reply["error"]["exit_code"] == code
    _check_error(reply["error"]["message"], code, what)


@pytest.mark.parametrize(
    ("verb", "args", "message"),
    [
        ("sessions", {"request": 2**63}, "request: expected a request id (a positive number)"),
        ("sessions", {"request": -1}, "request: expected a request id (a positive number)"),
        ("sessions", {"limit": 2**63}, "limit must be from 1 to 10000"),
        ("status", {"id": 2**64}, "expected a request id (a positive number)"),
    ],
)
def test_numbers_past_the_database_columns_are_refused(
    bastion: Bastion, verb: str, args: dict[str, Any], message: str
) -> None:
    """SQLite takes 64-bit integers: a request filter of 2**63 left it as OverflowError, an internal error."""
    reply, code = dispatch(bastion.broker.control_context("alice"), verb, json.dumps(args).encode())
    assert (code, reply["error"]["message"][: len(message)]) == (2, message)


def test_every_verb_is_fuzzed() -> None:
    assert set(_SPECS) == VERBS
    assert STREAM_VERBS <= VERBS


def test_a_host_identity_in_a_reviewer_group_still_reads_no_recording(bastion: Bastion) -> None:
    """A host's key is on the host, readable by whoever is root there: it opens nothing but the KRL, even when
    an admin also puts it in a reviewer group (store groups ``jit-hosts`` and ``sre``)."""
    broker = bastion.broker
    add_user(broker.store, "host-8", keys=[], groups=[HOST_GROUP, "sre"])
    ended = bastion.sessions[0]
    for verb, args in (
        ("export", {"id": ended}),
        ("watch", {"id": ended}),
        ("export", {"id": ended, "purpose": "replay"}),
    ):
        with pytest.raises(AccessDenied, match="host-8 is a host identity: it may only fetch the KRL"):
            asyncio.run(broker.open_stream("host-8", verb, args))
    for verb in ("sessions", "session", "verify"):
        raw = json.dumps({"id": ended} if verb == "session" else {}).encode()
        reply, code = dispatch(broker.control_context("host-8"), verb, raw)
        assert code == 3, (verb, reply)
        assert "host identity" in reply["error"]["message"], (verb, reply)
    # The control: a reviewer who is not a host reads the same recording.
    asyncio.run(broker.open_stream("bob", "export", {"id": ended}))
