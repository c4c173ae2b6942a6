"""The store: who may have what, as sqlmodel tables, on SQLite (WAL) or PostgreSQL by URL.

Every call must stay correct when several brokers share one database, so each write runs in one
transaction that takes its locks up front: ``BEGIN IMMEDIATE`` on SQLite (one writer at a time, the
others wait on ``busy_timeout``) and ``SELECT ... FOR UPDATE`` on the counter rows on PostgreSQL.
Times are stored as UTC epoch seconds (floats), which mean the same on both databases.

Schema versions are kept in ``schema_meta``; :data:`MIGRATIONS` upgrades an older database in one
transaction and a newer one is refused, so an upgrade never loses data. (Alembic would bring an
environment and revision files for what is, so far, a short list of forward-only DDL steps.)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, UniqueConstraint, event, inspect, make_url
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from .errors import StoreError
from .files import tighten

__all__ = [
    "SCHEMA_VERSION",
    "AccessRequest",
    "Approval",
    "AuditEvent",
    "BrokerProcess",
    "Counter",
    "Host",
    "IssuedCertificate",
    "RecordedSession",
    "SessionCommand",
    "Store",
    "User",
    "UserKey",
    "dumps",
    "loads",
]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(value: str) -> Any:
    return json.loads(value)


class User(SQLModel, table=True):
    __tablename__ = "users"
    name: str = Field(primary_key=True, max_length=64)
    groups_json: str = "[]"
    disabled: bool = False
    created_at: float

    @property
    def groups(self) -> list[str]:
        groups: list[str] = loads(self.groups_json)
        return groups


class UserKey(SQLModel, table=True):
    __tablename__ = "user_keys"
    fingerprint: str = Field(primary_key=True, max_length=64)
    user: str = Field(foreign_key="users.name", index=True, max_length=64)
    public_key: str
    added_at: float


class Host(SQLModel, table=True):
    __tablename__ = "hosts"
    name: str = Field(primary_key=True, max_length=253)
    address: str = Field(max_length=253)
    port: int = 22
    labels_json: str = "{}"
    #: A pinned host public key; None means the host is verified by its host certificate.
    host_key: str | None = None
    created_at: float

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = loads(self.labels_json)
        return labels


class AccessRequest(SQLModel, table=True):
    __tablename__ = "requests"
    id: int | None = Field(default=None, primary_key=True)
    requester: str = Field(index=True, max_length=64)
    hosts_json: str
    login: str = Field(max_length=32)
    duration_s: int
    reason: str
    ticket: str | None = None
    state: str = Field(index=True, max_length=16)
    break_glass: bool = False
    auto_approved: bool = False
    review_required: bool = False
    # The policy decision at request time: what an approval must satisfy and what the grant allows.
    rules_json: str = "[]"
    approvals_required: int = 1
    approver_groups_json: str = "[]"
    extensions_json: str = "[]"
    max_duration_s: int
    requested_start: float | None = None
    created_at: float
    decided_at: float | None = None
    decided_by: str | None = None
    decision_note: str | None = None
    starts_at: float | None = None
    expires_at: float | None = None

    @property
    def hosts(self) -> list[str]:
        hosts: list[str] = loads(self.hosts_json)
        return hosts


class Approval(SQLModel, table=True):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver"),)
    id: int | None = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="requests.id", index=True)
    approver: str = Field(max_length=64)
    comment: str | None = None
    created_at: float


class IssuedCertificate(SQLModel, table=True):
    """A certificate the system signed (ca/issuer.py writes one row for each, with its audit event)."""

    __tablename__ = "certificates"
    serial: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    #: The request it was issued under: None for host certificates and the broker's own, which answer none.
    request_id: int | None = Field(default=None, foreign_key="requests.id", index=True)
    ca_role: str = Field(max_length=16)
    #: Whom it was signed for: the user (their certificate, or the broker's onward one for their session),
    #: the host's name, or ``broker``.
    subject: str = Field(default="", max_length=253, sa_column_kwargs={"server_default": ""})
    key_id: str
    key_fingerprint: str = Field(max_length=64)
    principals_json: str
    valid_after: int
    valid_before: int = Field(index=True)
    revoked: bool = False
    session_id: str | None = None
    created_at: float


class RecordedSession(SQLModel, table=True):
    """One session channel through the broker and its recording."""

    __tablename__ = "sessions"
    id: str = Field(primary_key=True, max_length=64)
    request_id: int = Field(foreign_key="requests.id", index=True)
    user: str = Field(index=True, max_length=64)
    host: str = Field(index=True, max_length=253)
    login: str = Field(max_length=32)
    #: shell, exec or sftp; with a terminal or not.
    kind: str = Field(max_length=16)
    pty: bool = False
    command: str | None = None
    client_serial: int
    client_key_id: str
    onward_serial: int | None = None
    peer: str | None = None
    started_at: float = Field(index=True)
    ended_at: float | None = None
    end_reason: str | None = None
    #: The recording's reference in its RecordingStore (broker/recording/store.py), opaque outside it; the
    #: local store's is the file's absolute path, as rows have always held it (hence the column's name).
    recording_path: str
    recording_size: int | None = None
    recording_sha256: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    exit_status: int | None = None
    exit_signal: str | None = None
    #: Filled when the session closes (broker/review.py): commands, file transfers, output index.
    commands_count: int = 0
    index_json: str | None = None
    #: Legal hold: prune refuses the session while set.
    hold: bool = False
    pruned_at: float | None = None
    #: What review must look at (JSON list of reasons: out-of-band servers, an index over its budget, ...).
    flags_json: str | None = None
    #: Why the recording could not be indexed or read (a loud error: listed, audited, fails verify).
    index_error: str | None = None
    #: The broker that recorded the session (it closes its own sessions cut by a crash when it restarts).
    broker_id: str | None = Field(default=None, index=True, max_length=64)
    #: Size and SHA-256 of the recording's first bytes, written while it runs: after a crash, the bytes on
    #: disk up to here must still be these.
    checkpoint_size: int | None = None
    checkpoint_sha256: str | None = Field(default=None, max_length=64)


class BrokerProcess(SQLModel, table=True):
    """A broker sharing the store, and when it was last seen alive (its heartbeat)."""

    __tablename__ = "brokers"
    id: str = Field(primary_key=True, max_length=64)
    host: str = Field(max_length=253)
    pid: int
    started_at: float
    seen_at: float


class SessionCommand(SQLModel, table=True):
    """A command run in a session: the exec command, or a line typed at a shell prompt."""

    __tablename__ = "session_commands"
    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", index=True, max_length=64)
    time: float
    command: str
    source: str = Field(max_length=16)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    time: float
    actor: str
    action: str = Field(index=True)
    subject: str
    details_json: str
    prev_hash: str
    hash: str


class Counter(SQLModel, table=True):
    """Named monotonic counters (certificate serials, the audit chain's head)."""

    __tablename__ = "counters"
    name: str = Field(primary_key=True, max_length=32)
    value: int = 0
    text_value: str | None = None


class SchemaMeta(SQLModel, table=True):
    __tablename__ = "schema_meta"
    key: str = Field(primary_key=True, max_length=32)
    value: str


# SQLite's INTEGER holds 64 bits, PostgreSQL's 32: ids, serials, epoch seconds (past 2038) and byte counts
# need 64 on both, so every int column is BIGINT (BIGSERIAL for the ids) there. SQLite's DDL is unchanged,
# so an INTEGER PRIMARY KEY stays the rowid.
for _table in SQLModel.metadata.tables.values():
    for _column in _table.columns:
        if type(_column.type) is Integer:
            _column.type = BigInteger().with_variant(Integer(), "sqlite")

SCHEMA_VERSION = 3


def _add_columns(session: Session, table: str, columns: dict[str, str]) -> None:
    for name, ddl in columns.items():
        session.connection().exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")


def _to_version_2(session: Session) -> None:
    """Review flags, index errors, the recording broker and digest checkpoints; the brokers' heartbeats."""
    _add_columns(
        session,
        "sessions",
        {
            "flags_json": "VARCHAR", "index_error": "VARCHAR", "broker_id": "VARCHAR(64)",
            "checkpoint_size": "BIGINT", "checkpoint_sha256": "VARCHAR(64)",
        },
    )  # fmt: skip
    session.connection().exec_driver_sql("CREATE INDEX ix_sessions_broker_id ON sessions (broker_id)")
    SQLModel.metadata.tables["brokers"].create(session.connection())


def _to_version_3(session: Session) -> None:
    """Certificates without a request (hosts', the broker's own) and the subject each was signed for."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        # SQLite cannot drop a NOT NULL: the table is rebuilt (nothing refers to it by foreign key).
        for index in ("ix_certificates_request_id", "ix_certificates_valid_before"):
            connection.exec_driver_sql(f"DROP INDEX {index}")
        connection.exec_driver_sql("ALTER TABLE certificates RENAME TO certificates_v2")
        SQLModel.metadata.tables["certificates"].create(connection)
        connection.exec_driver_sql(
            "INSERT INTO certificates (serial, request_id, ca_role, key_id, key_fingerprint, principals_json, "
            "valid_after, valid_before, revoked, session_id, created_at) "
            "SELECT serial, request_id, ca_role, key_id, key_fingerprint, principals_json, "
            "valid_after, valid_before, revoked, session_id, created_at FROM certificates_v2"
        )
        connection.exec_driver_sql("DROP TABLE certificates_v2")
    else:
        connection.exec_driver_sql("ALTER TABLE certificates ALTER COLUMN request_id DROP NOT NULL")
        _add_columns(session, "certificates", {"subject": "VARCHAR(253) DEFAULT '' NOT NULL"})
    # Every certificate so far was a user's or an onward one for their session: the requester's.
    connection.exec_driver_sql(
        "UPDATE certificates SET subject = COALESCE("
        "(SELECT requester FROM requests WHERE requests.id = certificates.request_id), '')"
    )


#: Steps from version N-1 to N, each run in the upgrade's one transaction. Version 1 is the base.
MIGRATIONS: dict[int, Callable[[Session], None]] = {2: _to_version_2, 3: _to_version_3}


class Store:
    """A database of jit-ssh's state. ``url`` is an SQLAlchemy URL or a path to an SQLite file."""

    def __init__(self, url: str | Path) -> None:
        self.url = _as_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self._local_writer: AbstractContextManager[Any] = threading.RLock() if self.is_sqlite else nullcontext()
        try:
            self._private_sqlite_file()
            self.engine = self._make_engine()
            self._read_engine = self._make_read_engine()
            self._upgrade()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database {self._shown_url()}: {_reason(exc)}") from exc

    def _shown_url(self) -> str:
        # Never print a password from a PostgreSQL URL.
        head, sep, tail = self.url.partition("@")
        return self.url if not sep else head.split("://")[0] + "://...@" + tail

    def _private_sqlite_file(self) -> None:
        """Create an SQLite database file 0600 (SQLite would make it 0644), or tighten an existing one.

        SQLite gives its -wal, -shm and -journal files the database file's mode, so they follow.
        """
        name = make_url(self.url).database if self.is_sqlite else None
        if not name or name == ":memory:" or name.startswith("file:"):
            return
        path = Path(name)
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    tighten(path.with_name(path.name + suffix))
            else:
                try:
                    os.fchmod(fd, 0o600)  # a umask such as 0277 would have taken the owner's bits too
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot open the database {self._shown_url()}: {exc.strerror}") from exc

    def _make_engine(self) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_pre_ping=True)
        engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" below start transactions, as BEGIN IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # Take the write lock at the start: two brokers can then never both read the same
            # counter value, and nobody meets SQLITE_BUSY half-way through a transaction.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _make_read_engine(self) -> Engine:
        """SQLite: an engine whose transactions are plain reads, not BEGIN IMMEDIATE (PostgreSQL: the same)."""
        if not self.is_sqlite:
            return self.engine
        engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # each statement on its own: a WAL reader never waits
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine

    def _upgrade(self) -> None:
        with self.transaction() as session:
            tables = set(inspect(session.connection()).get_table_names())
            if "schema_meta" not in tables:
                if tables - {"schema_meta"}:
                    raise StoreError(f"database {self._shown_url()} has tables but no jit-ssh schema version")
                SQLModel.metadata.create_all(session.connection())
                session.add(SchemaMeta(key="version", value=str(SCHEMA_VERSION)))
                return
            row = session.get(SchemaMeta, "version")
            version = int(row.value) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {version} is newer than this jit-ssh understands "
                    f"({SCHEMA_VERSION}); upgrade jit-ssh instead"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](session)
            if row is not None and version != SCHEMA_VERSION:
                row.value = str(SCHEMA_VERSION)
                session.add(row)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: committed if the block succeeds, rolled back if it raises."""
        # SQLite: threads of this process queue on a lock that hands over at once; only other
        # processes meet SQLite's busy handler, which polls with sleeps of up to 100 ms.
        with self._local_writer:
            session = Session(self.engine, expire_on_commit=False)
            try:
                with session.begin():
                    yield session
            except IntegrityError as exc:
                raise StoreError(f"the database refused a conflicting change: {_reason(exc)}") from exc
            except OperationalError as exc:
                raise StoreError(f"database error: {_reason(exc)}") from exc
            finally:
                session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Reads that never queue behind a write (the enforcer's polls): on SQLite in WAL mode a reader sees
        the last commit and waits for nobody; it must not write."""
        session = Session(self._read_engine, expire_on_commit=False)
        try:
            yield session
        except OperationalError as exc:
            raise StoreError(f"database error: {_reason(exc)}") from exc
        finally:
            session.close()

    def lock_counter(self, session: Session, name: str) -> Counter:
        """The counter row ``name``, locked for this transaction (created at 0 if missing)."""
        statement = select(Counter).where(Counter.name == name)
        if not self.is_sqlite:
            statement = statement.with_for_update()
        row = session.exec(statement).first()
        if row is None:
            if self.is_sqlite:  # BEGIN IMMEDIATE: nobody else can be creating it
                row = Counter(name=name, value=0)
                session.add(row)
                session.flush()
                return row
            # FOR UPDATE locks no row that is not there yet: two transactions can both get here, and a
            # plain INSERT would fail the second on the primary key. ON CONFLICT DO NOTHING makes it wait
            # for the first to commit instead; then both lock the one row.
            session.connection().execute(
                pg_insert(Counter).values(name=name, value=0).on_conflict_do_nothing(index_elements=["name"])
            )
            row = session.exec(statement).one()
        return row

    def next_serial(self, session: Session) -> int:
        """A certificate serial never handed out before, by this or any other broker."""
        counter = self.lock_counter(session, "serial")
        counter.value += 1
        session.add(counter)
        return counter.value

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()


def _as_url(url: str | Path) -> str:
    text_url = str(url)
    if "://" in text_url:
        return text_url
    return f"sqlite:///{Path(text_url).resolve()}"


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return " ".join(str(orig if orig is not None else exc).split())[:300]
