"""What ``sessions prune`` deletes when session rows name recordings oddly, on a real SQLite store.

Rows live in a database others may write (several brokers, an admin's SQLite shell): a row's reference is
data. The recording store refuses one that leads outside the recordings directory; these tests attack from
inside it. Prune must delete a session's own recording and nothing else (not another session's, least of all
one under a legal hold), and every recording it deletes is in a ``sessions.pruned`` audit event: a row whose
recording cannot be deleted is kept, and does not cost the others their audit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from jit_ssh.broker.recording.recorder import Recorder
from jit_ssh.broker.recording.store import LocalRecordingStore
from jit_ssh.broker.review import prune_sessions
from jit_ssh.ca.audit import iter_events
from jit_ssh.ca.store import AccessRequest, RecordedSession, Store, dumps

DAY = 86400
HEADER = {"version": 2, "width": 80, "height": 24, "jit_ssh": {"session": "prune"}}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Store, LocalRecordingStore, int]]:
    store = Store(f"sqlite:///{tmp_path / 'jit-ssh.db'}")
    recordings = LocalRecordingStore(tmp_path / "recordings")
    now = time.time()
    with store.transaction() as session:
        request = AccessRequest(
            requester="alice", hosts_json=dumps(["prod-web-3"]), login="ubuntu", duration_s=3600, reason="prune",
            state="expired", max_duration_s=3600, created_at=now - 30 * DAY,
        )  # fmt: skip
        session.add(request)
        session.flush()
        assert request.id is not None
        request_id = request.id
    try:
        yield store, recordings, request_id
    finally:
        store.dispose()


def _session(
    store: Store, recordings: LocalRecordingStore, request_id: int, session_id: str, *, age_days: float,
    reference: str | None = None, hold: bool = False,
) -> Path:  # fmt: skip
    """A session row (ended ``age_days`` ago) and, unless ``reference`` names something else, its recording."""
    new = recordings.create(session_id)
    new.path.parent.mkdir(parents=True, exist_ok=True)
    recorder = Recorder.open(new.path, HEADER)
    recorder.data("o", f"output of {session_id}\r\n".encode())
    size, digest = recorder.close()
    ended = time.time() - age_days * DAY
    with store.transaction() as session:
        session.add(
            RecordedSession(
                id=session_id, request_id=request_id, user="alice", host="prod-web-3", login="ubuntu", kind="shell",
                client_serial=1, client_key_id="k", started_at=ended - 60, ended_at=ended,
                recording_path=new.reference if reference is None else reference, recording_size=size,
                recording_sha256=digest, hold=hold,
            )
        )  # fmt: skip
    return new.path


def _pruned_events(store: Store) -> list[dict[str, object]]:
    return [e for e in iter_events(store) if e["action"] == "sessions.pruned"]


def test_a_row_naming_another_sessions_recording_does_not_delete_it(
    site: tuple[Store, LocalRecordingStore, int],
) -> None:
    """An old row whose reference names a held session's recording (the absolute path every row holds, inside
    the directory): prune would delete the held recording, and the held row would then name nothing."""
    store, recordings, request_id = site
    held = _session(store, recordings, request_id, "20261101T000000-aaaaaaaa-1", age_days=1, hold=True)
    _session(store, recordings, request_id, "20260101T000000-bbbbbbbb-1", age_days=300, reference=str(held))
    chosen, refused = prune_sessions(store, recordings=recordings, older_than=timedelta(days=90), apply=True)
    assert held.exists(), "prune deleted a held session's recording named by another row"
    assert chosen == []
    assert [session_id for session_id, _ in refused] == ["20260101T000000-bbbbbbbb-1"]
    # Negative control: the same old session naming its own recording is pruned.
    own = _session(store, recordings, request_id, "20260101T000000-cccccccc-1", age_days=300)
    chosen, _ = prune_sessions(store, recordings=recordings, older_than=timedelta(days=90), apply=True)
    assert chosen == ["20260101T000000-cccccccc-1"]
    assert not own.exists()
    assert held.exists()


def test_a_symbolic_link_inside_the_directory_is_not_a_way_to_another_recording(
    site: tuple[Store, LocalRecordingStore, int],
) -> None:
    """Before the recording store, prune unlinked the path a row named (a link: the link); now the store resolves
    the reference and prune deleted the file the link leads to, another session's recording under a hold."""
    store, recordings, request_id = site
    held = _session(store, recordings, request_id, "20261101T000000-aaaaaaaa-1", age_days=1, hold=True)
    old = _session(store, recordings, request_id, "20260101T000000-bbbbbbbb-1", age_days=300)
    old.unlink()
    old.symlink_to(held)
    prune_sessions(store, recordings=recordings, older_than=timedelta(days=90), apply=True)
    assert held.exists(), "prune deleted the target of a link: a held session's recording"


def test_a_recording_that_cannot_be_deleted_costs_no_other_session_its_audit(
    site: tuple[Store, LocalRecordingStore, int],
) -> None:
    """A reference to a directory inside the recordings directory (or any recording unlink fails on): prune used to
    raise half way, after deleting the recordings before it, so their rows stayed unpruned and no
    ``sessions.pruned`` event was written; verify then reports recordings missing that nobody audited deleting."""
    store, recordings, request_id = site
    first = _session(store, recordings, request_id, "20260101T000000-aaaaaaaa-1", age_days=300)
    directory = first.parent
    _session(store, recordings, request_id, "20260101T000000-bbbbbbbb-1", age_days=300, reference=str(directory))
    chosen, refused = prune_sessions(store, recordings=recordings, older_than=timedelta(days=90), apply=True)
    assert chosen == ["20260101T000000-aaaaaaaa-1"]
    assert [session_id for session_id, _ in refused] == ["20260101T000000-bbbbbbbb-1"]
    assert not first.exists()
    assert directory.is_dir()
    assert [e["details"] for e in _pruned_events(store)] == [{"count": 1, "older_than_s": 90 * DAY}]
    with store.transaction() as session:
        row = session.get(RecordedSession, "20260101T000000-aaaaaaaa-1")
        assert row is not None
        assert row.pruned_at is not None


class _Stuck(LocalRecordingStore):
    """A store whose one recording cannot be deleted (a file system that says no: EPERM, EROFS, EIO)."""

    def __init__(self, root: Path, stuck: str) -> None:
        super().__init__(root)
        self.stuck = stuck

    def delete(self, reference: str) -> None:
        if reference == self.stuck:
            raise PermissionError(1, "Operation not permitted", reference)
        super().delete(reference)


def test_a_delete_that_fails_keeps_that_session_and_prunes_and_audits_the_others(
    site: tuple[Store, LocalRecordingStore, int],
) -> None:
    store, recordings, request_id = site
    paths = [_session(store, recordings, request_id, f"20260101T000000-0000000{n}-1", age_days=300) for n in range(3)]
    stuck = _Stuck(recordings.root, str(paths[1]))
    chosen, refused = prune_sessions(store, recordings=stuck, older_than=timedelta(days=90), apply=True)
    assert sorted(chosen) == ["20260101T000000-00000000-1", "20260101T000000-00000002-1"]
    assert refused == [("20260101T000000-00000001-1", "cannot delete its recording: Operation not permitted")]
    assert [p.exists() for p in paths] == [False, True, False]
    assert [e["details"] for e in _pruned_events(store)] == [{"count": 2, "older_than_s": 90 * DAY}]
    with store.transaction() as session:
        row = session.get(RecordedSession, "20260101T000000-00000001-1")
        assert row is not None
        assert row.pruned_at is None  # still a session with its recording, pruned by a later run
