"""An older database is upgraded in place, keeping its data (SQLite here; PostgreSQL in test_postgres.py)."""

from __future__ import annotations

from pathlib import Path

from jit_ssh.ca.store import SCHEMA_VERSION, Store, User
from sqlalchemy import inspect

_V2_SESSION_COLUMNS = ("flags_json", "index_error", "broker_id", "checkpoint_size", "checkpoint_sha256")


def as_version_1(url: str) -> None:
    """Turn a new database into what version 1 created, with one user in it."""
    store = Store(url)
    try:
        with store.transaction() as session:
            session.add(User(name="alice", groups_json='["sre"]', created_at=1.0))
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
    finally:
        store.dispose()


def test_a_version_1_database_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    as_version_1(url)
    check_upgraded(url)
    check_upgraded(url)  # a second opening changes nothing
