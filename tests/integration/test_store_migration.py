"""An older database is upgraded in place, keeping its data (SQLite here; PostgreSQL in test_postgres.py)."""

from __future__ import annotations

from pathlib import Path

from jit_ssh.ca.store import SCHEMA_VERSION, AccessRequest, IssuedCertificate, Store, User
from sqlalchemy import Connection, inspect, text
from sqlmodel import Session, col, select

_V2_SESSION_COLUMNS = ("flags_json", "index_error", "broker_id", "checkpoint_size", "checkpoint_sha256")
#: The certificates table as versions 1 and 2 created it (on SQLite; PostgreSQL's types are BIGINT).
_V2_CERTIFICATES = """CREATE TABLE certificates (
    serial INTEGER NOT NULL, request_id INTEGER NOT NULL, ca_role VARCHAR(16) NOT NULL, key_id VARCHAR NOT NULL,
    key_fingerprint VARCHAR(64) NOT NULL, principals_json VARCHAR NOT NULL, valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL, revoked BOOLEAN NOT NULL, session_id VARCHAR, created_at FLOAT NOT NULL,
    PRIMARY KEY (serial), FOREIGN KEY(request_id) REFERENCES requests (id))"""


def _with_old_data(session: Session) -> None:
    """One user, a request of theirs and its two certificates (theirs and the broker's onward one), in the
    certificates table as versions 1 and 2 had it: every row with a request, no subject."""
    session.add(User(name="alice", groups_json='["sre"]', created_at=1.0))
    session.add(
        AccessRequest(
            id=7, requester="alice", hosts_json='["prod-web-3"]', login="ubuntu", duration_s=60, reason="old",
            state="expired", max_duration_s=60, created_at=1.0,
        )
    )  # fmt: skip
    session.flush()
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("DROP TABLE certificates")
        connection.exec_driver_sql(_V2_CERTIFICATES)
        connection.exec_driver_sql("CREATE INDEX ix_certificates_request_id ON certificates (request_id)")
        connection.exec_driver_sql("CREATE INDEX ix_certificates_valid_before ON certificates (valid_before)")
    else:
        connection.exec_driver_sql("ALTER TABLE certificates DROP COLUMN subject")
        connection.exec_driver_sql("ALTER TABLE certificates ALTER COLUMN request_id SET NOT NULL")
    for serial, role in ((1, "user"), (2, "access")):
        connection.execute(
            text(
                "INSERT INTO certificates (serial, request_id, ca_role, key_id, key_fingerprint, principals_json, "
                "valid_after, valid_before, revoked, session_id, created_at) VALUES (:serial, 7, :role, :key_id, "
                "'SHA256:x', :principals, 1, 61, FALSE, NULL, 1.0)"
            ),
            {"serial": serial, "role": role, "key_id": f"jit-ssh {serial}", "principals": '["ubuntu@prod-web-3"]'},
        )


def _certificates_are_version_3(connection: Connection, session: Session) -> None:
    columns = {c["name"]: c for c in inspect(connection).get_columns("certificates")}
    assert columns["request_id"]["nullable"]
    assert "subject" in columns
    indexes = {i["name"] for i in inspect(connection).get_indexes("certificates")}
    assert {"ix_certificates_request_id", "ix_certificates_valid_before"} <= indexes
    rows = session.exec(select(IssuedCertificate).order_by(col(IssuedCertificate.serial))).all()
    assert [(r.serial, r.request_id, r.ca_role, r.subject) for r in rows] == [
        (1, 7, "user", "alice"), (2, 7, "access", "alice"),
    ]  # fmt: skip
    assert rows[0].principals_json == '["ubuntu@prod-web-3"]'


def as_version_2(url: str) -> None:
    """Turn a new database into what version 2 created, with a user, a request and its certificates."""
    store = Store(url)
    try:
        with store.transaction() as session:
            _with_old_data(session)
            session.connection().exec_driver_sql("UPDATE schema_meta SET value = '2' WHERE key = 'version'")
    finally:
        store.dispose()


def as_version_1(url: str) -> None:
    """Turn a new database into what version 1 created, with a user, a request and its certificates."""
    store = Store(url)
    try:
        with store.transaction() as session:
            _with_old_data(session)
            connection = session.connection()
            connection.exec_driver_sql("DROP INDEX ix_sessions_broker_id")
            for column in _V2_SESSION_COLUMNS:
                connection.exec_driver_sql(f"ALTER TABLE sessions DROP COLUMN {column}")
            connection.exec_driver_sql("DROP TABLE brokers")
            connection.exec_driver_sql("UPDATE schema_meta SET value = '1' WHERE key = 'version'")
    finally:
        store.dispose()


def check_upgraded(url: str) -> None:
    store = Store(url)
    try:
        with store.transaction() as session:
            connection = session.connection()
            columns = {c["name"] for c in inspect(connection).get_columns("sessions")}
            assert set(_V2_SESSION_COLUMNS) <= columns
            assert "brokers" in inspect(connection).get_table_names()
            version = connection.exec_driver_sql("SELECT value FROM schema_meta WHERE key = 'version'").scalar()
            assert version == str(SCHEMA_VERSION)
            user = session.get(User, "alice")
            assert user is not None
            assert user.groups == ["sre"]
            _certificates_are_version_3(connection, session)
    finally:
        store.dispose()


def test_a_version_1_database_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    as_version_1(url)
    check_upgraded(url)
    check_upgraded(url)  # a second opening changes nothing


def test_a_version_2_database_is_upgraded_keeping_its_certificates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    as_version_2(url)
    check_upgraded(url)
    check_upgraded(url)
    store = Store(url)
    try:  # a certificate with no request, which version 2 refused, is now kept
        with store.transaction() as session:
            session.add(
                IssuedCertificate(
                    serial=3, request_id=None, ca_role="host", subject="prod-web-3", key_id="jit-ssh host prod-web-3",
                    key_fingerprint="SHA256:y", principals_json='["prod-web-3"]', valid_after=1, valid_before=2,
                    created_at=1.0,
                )
            )  # fmt: skip
        with store.read() as session:
            row = session.get(IssuedCertificate, 3)
            assert row is not None
            assert (row.request_id, row.subject) == (None, "prod-web-3")
    finally:
        store.dispose()
