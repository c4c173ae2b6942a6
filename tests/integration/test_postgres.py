"""The store and the request workflow on a real PostgreSQL server, with the same code as on SQLite.

A throwaway cluster is started once per run (initdb into a temporary directory, a free loopback port,
trust authentication) and each test gets a database of its own. ``scripts/setup`` installs the
``postgresql`` Debian package when ``JIT_SSH_WITH_TEST_TOOLS=1``; without the server binaries these
tests are skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from jit_ssh.ca import InputError, KeySigner
from jit_ssh.ca.audit import append_event, verify_chain
from jit_ssh.ca.store import AuditEvent, Counter, IssuedCertificate, Store, User
from jit_ssh.ca.workflow import Authority, RequestState
from sqlmodel import col, select

from tests.integration.test_listings import check_a_flood_hides_nothing
from tests.integration.test_store_migration import as_version_1, as_version_2, check_upgraded
from tests.integration.test_workflow import KEYS, Clock, make_authority

psycopg = pytest.importorskip(
    "psycopg", reason="the PostgreSQL driver is the 'postgres' extra: pip install -e '.[dev]'"
)

THREADS = 8
PER_THREAD = 5


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    port: int
    user: str

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = "jit_" + uuid.uuid4().hex[:12]
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' account to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
        user = "postgres"
    else:
        prefix = []
        user = pwd.getpwuid(os.getuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="jit-ssh-pg-"))
    data = root / "data"
    if as_root:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    started = False
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
        )
        started = True
        yield Cluster(port=port, user=user)
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database()


def test_the_store_creates_its_schema_and_keeps_data_across_reopening(pg_url: str) -> None:
    store = Store(pg_url)
    assert not store.is_sqlite
    with store.transaction() as session:
        session.add(User(name="alice", groups_json='["sre"]', created_at=1_800_000_000.25))
        append_event(store, session, actor="admin", action="user.added", subject="user:alice", moment=1.5)
        assert store.next_serial(session) == 1
    store.dispose()

    again = Store(pg_url)  # the schema is there: reopening checks its version and changes nothing
    with again.transaction() as session:
        user = session.get(User, "alice")
        assert user is not None
        assert user.groups == ["sre"]
        assert user.created_at == 1_800_000_000.25  # floats come back exactly (double precision)
        assert again.next_serial(session) == 2
    count, problem = verify_chain(again)
    assert (count, problem) == (1, None)
    again.dispose()


def test_the_workflow_runs_on_postgres(pg_url: str, user_ca: KeySigner) -> None:
    clock = Clock()
    authority = make_authority(pg_url, user_ca, clock)
    view = authority.create_request(
        requester="alice", hosts=["prod-web-3"], login="ubuntu", duration=timedelta(hours=1), reason="rotate logs"
    )
    assert view.state is RequestState.PENDING
    assert authority.approve(view.id, approver="bob").state is RequestState.APPROVED
    serials = [authority.issue_certificate(view.id, user="alice", public_key=key)[0].serial for key in KEYS]
    assert serials == [1, 2]
    revoked, revoked_serials = authority.revoke(view.id, actor="bob", reason="done")
    assert revoked.state is RequestState.REVOKED
    assert sorted(revoked_serials) == serials
    assert sorted(authority.revoked_serials(ca_role="user")) == serials
    with authority.store.transaction() as session:
        actions = list(session.exec(select(AuditEvent.action).order_by(col(AuditEvent.seq))))
        assert all(row.revoked for row in session.exec(select(IssuedCertificate)))
    assert actions[-4:] == ["request.approved", "certificate.issued", "certificate.issued", "request.revoked"]
    count, problem = verify_chain(authority.store)
    assert problem is None, problem
    assert count == len(actions)
    authority.store.dispose()


def test_several_authorities_issue_at_once_without_repeating_a_serial(pg_url: str, user_ca: KeySigner) -> None:
    setup = make_authority(pg_url, user_ca, Clock())
    rid = setup.create_request(
        requester="alice", hosts=["prod-web-3"], login="ubuntu", duration=timedelta(hours=1), reason="load test"
    ).id
    setup.approve(rid, approver="bob")
    setup.store.dispose()

    barrier = threading.Barrier(THREADS)
    serials: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        # Each thread is a broker of its own: its own Store, engine and connections on the same database.
        authority = Authority(Store(pg_url), setup.policy, user_ca=user_ca, clock=Clock())
        try:
            barrier.wait()
            for _ in range(PER_THREAD):
                cert, _view = authority.issue_certificate(rid, user="alice", public_key=KEYS[0])
                with lock:
                    serials.append(cert.serial)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            with lock:
                errors.append(exc)
        finally:
            authority.store.dispose()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(serials) == list(range(1, THREADS * PER_THREAD + 1))

    store = Store(pg_url)
    with store.transaction() as session:
        stored = sorted(session.exec(select(IssuedCertificate.serial)))
        counter = session.get(Counter, "serial")
    assert stored == sorted(serials)
    assert counter is not None
    assert counter.value == THREADS * PER_THREAD
    count, problem = verify_chain(store)
    assert problem is None, problem
    assert count >= THREADS * PER_THREAD
    store.dispose()


def test_a_counter_first_used_by_several_stores_at_once_is_created_once(pg_url: str) -> None:
    Store(pg_url).dispose()  # the schema, created before the race
    barrier = threading.Barrier(THREADS)
    values: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        store = Store(pg_url)
        try:
            barrier.wait()
            with store.transaction() as session:
                counter = store.lock_counter(session, "fresh")
                counter.value += 1
                session.add(counter)
                with lock:
                    values.append(counter.value)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            with lock:
                errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(values) == list(range(1, THREADS + 1))


def test_integers_are_64_bits_as_on_sqlite(pg_url: str, user_ca: KeySigner) -> None:
    authority = make_authority(pg_url, user_ca, Clock())
    # Past PostgreSQL's 32-bit INTEGER: an unknown id, not a database error.
    with pytest.raises(InputError, match="no request 1099511627776"):
        authority.approve(2**40, approver="bob")
    with authority.store.transaction() as session:
        counter = authority.store.lock_counter(session, "serial")
        counter.value = 2**62
        session.add(counter)
    with authority.store.transaction() as session:
        assert authority.store.next_serial(session) == 2**62 + 1
    authority.store.dispose()


def test_a_version_1_database_is_upgraded_keeping_its_data(pg_url: str) -> None:
    as_version_1(pg_url)
    check_upgraded(pg_url)
    check_upgraded(pg_url)


def test_a_version_2_database_is_upgraded_keeping_its_certificates(pg_url: str) -> None:
    as_version_2(pg_url)
    check_upgraded(pg_url)
    check_upgraded(pg_url)


def test_listings_filter_in_the_database_on_postgres(pg_url: str, user_ca: KeySigner) -> None:
    authority = make_authority(pg_url, user_ca, Clock())
    check_a_flood_hides_nothing(authority)  # the same SQL filters (JSON text matched with LIKE) on PostgreSQL
    authority.store.dispose()
