"""The audit chain: any edit, deletion or reordering of an event, made with raw SQL behind jit-ssh's back,
makes ``jit-ssh audit verify`` fail and name the event; an intact chain passes.

Every event of a real history (users and hosts enrolled, requests approved, refused and issued) is
tampered with in every way, in a copy of the database each time: through the library's ``verify_chain``
for all of them, and through the ``jit-ssh audit verify`` command for the first, a middle and the last.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from jit_ssh.ca import CADirectory, CARole, JitSshError
from jit_ssh.ca.audit import GENESIS, verify_chain
from jit_ssh.ca.policy import Policy
from jit_ssh.ca.store import Store, dumps
from jit_ssh.ca.workflow import Authority

from tests.integration.broker_fixture import BrokerSite, create_site

Tamper = Callable[[sqlite3.Connection, int], None]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[BrokerSite, int]:
    """A site whose audit log holds a varied history; returns it and its number of events."""
    site = create_site(tmp_path_factory.mktemp("audit"))
    ca = CADirectory(site.ca_dir)
    store = Store(site.db_path)
    try:
        authority = Authority(
            store,
            Policy.loads((site.root / "policy.toml").read_text()),
            user_ca=ca.signer(CARole.USER, passphrase=None),
        )
        key = ca.public_key(CARole.ACCESS)  # any key will do as the subject here
        prod = authority.create_request(
            requester="alice", hosts=["prod-web-3"], login="ubuntu", duration=timedelta(minutes=30), reason="deploy"
        )
        with pytest.raises(JitSshError):
            authority.approve(prod.id, approver="alice")
        authority.approve(prod.id, approver="bob", comment="ok")
        authority.issue_certificate(prod.id, user="alice", public_key=key)
        db = authority.create_request(
            requester="carol", hosts=["db-1"], login="postgres", duration=timedelta(hours=1), reason="vacuum"
        )
        authority.approve(db.id, approver="dave")
        authority.deny(db.id, approver="erin", reason="not today")
        authority.revoke(prod.id, actor="bob", reason="done")
    finally:
        store.dispose()
    count, problem = verify_chain_at(site.db_path)
    assert problem is None
    assert count >= 15
    return site, count


def verify_chain_at(path: Path) -> tuple[int, object]:
    store = Store(path)
    try:
        count, problem = verify_chain(store)
    finally:
        store.dispose()
    return count, problem


def tampered_copy(site: BrokerSite, tmp_path: Path, tamper: Tamper, seq: int) -> BrokerSite:
    """A copy of the site's database (and a broker.toml for it) with ``tamper`` applied to event ``seq``."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700, parents=True)
    target = data / "jit-ssh.db"
    with sqlite3.connect(site.db_path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    source.close()
    copy.close()
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("BEGIN")
        tamper(conn, seq)
        conn.execute("COMMIT")
    finally:
        conn.close()
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\ndata_dir = "{data}"\n')
    return BrokerSite(root=tmp_path, ca_dir=site.ca_dir, config=config, db_path=target, known_hosts=site.known_hosts)


def _set(column: str, value: Callable[[object], object]) -> Tamper:
    def tamper(conn: sqlite3.Connection, seq: int) -> None:
        (old,) = conn.execute(f"SELECT {column} FROM audit_events WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
        conn.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (value(old), seq))  # noqa: S608

    return tamper


def _delete(conn: sqlite3.Connection, seq: int) -> None:
    conn.execute("DELETE FROM audit_events WHERE seq = ?", (seq,))


def _swap_with_neighbour(conn: sqlite3.Connection, seq: int) -> None:
    """Exchange the places of this event and the next (the previous one, for the last event)."""
    (last,) = conn.execute("SELECT max(seq) FROM audit_events").fetchone()
    other = seq + 1 if seq < last else seq - 1
    conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", (seq,))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (seq, other))
    conn.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", (other,))


def _rehash(conn: sqlite3.Connection, seq: int) -> None:
    """An edit by someone who knows the hash function: the event's own hash is made consistent again."""
    row = conn.execute(
        "SELECT time, actor, action, subject, details_json, prev_hash FROM audit_events WHERE seq = ?", (seq,)
    ).fetchone()
    moment, actor, action, subject, details, prev = row
    actor = "mallory"
    body = dumps([seq, repr(moment), actor, action, subject, details, prev])
    digest = hashlib.sha256(body.encode()).hexdigest()
    conn.execute("UPDATE audit_events SET actor = ?, hash = ? WHERE seq = ?", (actor, digest, seq))


TAMPERS: dict[str, Tamper] = {
    "edit-actor": _set("actor", lambda old: "mallory"),
    "edit-action": _set("action", lambda old: str(old).replace("refused", "ok") + "x"),
    "edit-subject": _set("subject", lambda old: str(old) + "9"),
    "edit-details": _set("details_json", lambda old: json.dumps({**json.loads(str(old)), "note": "nothing to see"})),
    "edit-details-whitespace": _set("details_json", lambda old: str(old) + " "),
    "edit-time": _set("time", lambda old: float(str(old)) - 3600),
    "edit-time-tiny": _set("time", lambda old: float(str(old)) + 1e-6),
    "edit-prev-hash": _set("prev_hash", lambda old: GENESIS if old != GENESIS else "f" * 64),
    "edit-hash": _set("hash", lambda old: "0" * 63 + "1"),
    "rehash": _rehash,
    "delete": _delete,
    "reorder": _swap_with_neighbour,
}


def named(kind: str, seq: int, last: int) -> set[int]:
    """The events a correct report may name for ``kind`` applied to ``seq``."""
    if kind == "reorder":
        return {seq, seq + 1} if seq < last else {seq - 1, seq}
    if kind == "rehash":
        return {seq, seq + 1}  # its successor no longer links to it (or, for the last, the head disagrees)
    return {seq}


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_every_event_tampered_any_way_breaks_the_chain(
    history: tuple[BrokerSite, int], tmp_path: Path, kind: str
) -> None:
    site, count = history
    for seq in range(1, count + 1):
        copy = tampered_copy(site, tmp_path / f"{kind}-{seq}", TAMPERS[kind], seq)
        _, problem = verify_chain_at(copy.db_path)
        assert problem is not None, f"{kind} of event {seq} went unnoticed"
        message = problem.message  # type: ignore[attr-defined]
        wanted = named(kind, seq, count)
        assert problem.seq in wanted, (kind, seq, problem)  # type: ignore[attr-defined]
        assert any(f"event {n}" in message for n in wanted), (kind, seq, message)


@pytest.mark.parametrize("kind", ["edit-actor", "edit-details", "edit-time", "rehash", "delete", "reorder"])
def test_audit_verify_command_fails_naming_the_event(
    history: tuple[BrokerSite, int], tmp_path: Path, kind: str
) -> None:
    site, count = history
    for seq in sorted({1, count // 2, count}):
        copy = tampered_copy(site, tmp_path / str(seq), TAMPERS[kind], seq)
        done = copy.admin("audit", "verify")
        assert done.returncode == 1, (kind, seq, done.stdout, done.stderr)
        line = done.stderr.strip()
        assert "\n" not in line
        assert "Traceback" not in done.stderr
        assert line.startswith("error: audit chain broken at event ")
        shown = int(line.removeprefix("error: audit chain broken at event ").split(":")[0])
        assert shown in named(kind, seq, count), (kind, seq, line)
        if seq == count:
            as_json = copy.admin("audit", "verify", "--json")
            assert as_json.returncode == 1
            report = json.loads(as_json.stdout)
            assert report["ok"] is False
            assert report["seq"] == shown


def test_deleting_the_tail_or_appending_a_forged_event_is_noticed(
    history: tuple[BrokerSite, int], tmp_path: Path
) -> None:
    site, count = history

    def truncate(conn: sqlite3.Connection, seq: int) -> None:
        conn.execute("DELETE FROM audit_events WHERE seq >= ?", (seq,))

    def append(conn: sqlite3.Connection, seq: int) -> None:
        (prev,) = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (seq,)).fetchone()
        conn.execute(
            "INSERT INTO audit_events (seq, time, actor, action, subject, details_json, prev_hash, hash) "
            "VALUES (?, 0, 'admin', 'user.added', 'user:mallory', '{}', ?, ?)",
            (seq + 1, prev, "ab" * 32),
        )

    for name, tamper, seq, event in (
        ("truncate", truncate, count - 2, count - 2),
        ("append", append, count, count + 1),
    ):
        copy = tampered_copy(site, tmp_path / name, tamper, seq)
        done = copy.admin("audit", "verify")
        assert done.returncode == 1, name
        assert f"audit chain broken at event {event}" in done.stderr, (name, done.stderr)


def test_an_intact_chain_passes_and_exports(history: tuple[BrokerSite, int], tmp_path: Path) -> None:
    site, count = history
    copy = tampered_copy(site, tmp_path / "intact", lambda conn, seq: None, 1)
    done = copy.admin("audit", "verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Audit chain intact: {count} events"
    report = json.loads(copy.admin("audit", "verify", "--json").stdout)
    assert report == {"events": count, "ok": True, "problem": None, "seq": None}
    exported = copy.admin("audit", "export")
    assert exported.returncode == 0
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, count + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(events))
    assert events[0]["prev_hash"] == GENESIS
    actions = [e["action"] for e in events]
    for action in ("user.added", "host.added", "request.created", "request.approve.refused", "request.approval",
                   "request.approved", "certificate.issued", "request.denied", "request.revoked"):  # fmt: skip
        assert action in actions
