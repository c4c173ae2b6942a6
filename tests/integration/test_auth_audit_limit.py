"""Refused keys are audited, but clients that never authenticated cannot flood the audit log: one source
gets its share of the refusal limit, all sources together the whole of it, and what is held back is
counted in a summary once the minute is over (the limiter's clock is injected: no minute is waited for)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jit_ssh.broker.refusals import SUMMARY_ACTION, RefusalLimiter
from jit_ssh.broker.server import REFUSAL_BURST, REFUSAL_PER_SOURCE
from jit_ssh.ca import PublicKey
from jit_ssh.ca.audit import iter_events, verify_chain
from jit_ssh.cli.openssh import generate_ssh_key

from tests.integration.broker_fixture import in_process_broker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refused_keys_are_audited_up_to_the_limit_and_the_rest_counted(tmp_path: Path) -> None:
    broker = in_process_broker(tmp_path)
    clock = Clock()
    broker.refusals.limiter = RefusalLimiter(burst=REFUSAL_BURST, per_source=REFUSAL_PER_SOURCE, clock=clock)
    stranger: PublicKey = generate_ssh_key(tmp_path / "stranger")
    extra = 25
    peers = [f"198.51.100.{i}:4{i:04d}" for i in range(REFUSAL_BURST)]

    async def attempts() -> None:
        for _ in range(REFUSAL_PER_SOURCE + extra):  # one noisy source
            assert await broker.authenticate("mallory", stranger, "203.0.113.5:2222") is None
        for peer in peers:  # many sources: the rest of the minute's budget, then counted
            assert await broker.authenticate("mallory", stranger, peer) is None
        clock.now += 60  # the minute is over: the next refusal reports what was held back
        assert await broker.authenticate("mallory", stranger, "203.0.113.5:2223") is None

    try:
        asyncio.run(attempts())
        events = list(iter_events(broker.store))
        refused = [e for e in events if e["action"] == "auth.refused"]
        suppressed = [e for e in events if e["action"] == SUMMARY_ACTION]
        assert len(refused) == REFUSAL_BURST + 1
        assert all(e["details"]["reason"] and e["details"]["peer"] for e in refused)
        assert sum(e["details"]["peer"].startswith("203.0.113.5:") for e in refused) == REFUSAL_PER_SOURCE + 1
        held_from_many = REFUSAL_PER_SOURCE  # the many sources had REFUSAL_BURST - REFUSAL_PER_SOURCE left
        assert [e["details"]["count"] for e in suppressed] == [extra + held_from_many]
        assert suppressed[0]["details"]["actions"] == {"auth.refused": extra + held_from_many}
        assert suppressed[0]["details"]["sources"]["203.0.113.5"] == extra
        assert verify_chain(broker.store)[1] is None
    finally:
        broker.store.dispose()
