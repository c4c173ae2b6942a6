"""Refused keys are audited, but clients that never authenticated cannot flood the audit log."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jit_ssh.broker.config import BrokerConfig
from jit_ssh.broker.server import _AUTH_AUDIT_BURST, Broker
from jit_ssh.ca import CADirectory, PublicKey
from jit_ssh.ca.audit import iter_events, verify_chain
from jit_ssh.cli.openssh import generate_ssh_key
from jit_ssh.cli.stack import DEFAULT_POLICY


def _broker(tmp_path: Path) -> Broker:
    CADirectory.create(tmp_path / "ca", passphrase=None, insecure_no_passphrase=True)
    (tmp_path / "policy.toml").write_text(DEFAULT_POLICY.replace("{login}", "ubuntu"), encoding="utf-8")
    config = BrokerConfig.from_mapping(
        {"broker": {"data_dir": "data", "ca_dir": "ca", "policy": "policy.toml", "listen": "127.0.0.1:0"}},
        path=tmp_path / "broker.toml",
    )
    return Broker(config, passphrase=None)


def test_refused_keys_are_audited_up_to_the_limit_and_the_rest_counted(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    stranger: PublicKey = generate_ssh_key(tmp_path / "stranger")
    extra = 25

    async def attempts() -> None:
        for _ in range(_AUTH_AUDIT_BURST + extra):
            assert await broker.authenticate("mallory", stranger, "127.0.0.1:1") is None
        broker._auth_window[0] -= 61  # the minute is over: the next refusal reports what was held back
        assert await broker.authenticate("mallory", stranger, "127.0.0.1:1") is None

    try:
        asyncio.run(attempts())
        events = list(iter_events(broker.store))
        refused = [e for e in events if e["action"] == "auth.refused"]
        suppressed = [e for e in events if e["action"] == "auth.refused.suppressed"]
        assert len(refused) == _AUTH_AUDIT_BURST + 1
        assert all(e["details"]["reason"] for e in refused)
        assert [e["details"]["count"] for e in suppressed] == [extra]
        assert verify_chain(broker.store)[1] is None
    finally:
        broker.store.dispose()
