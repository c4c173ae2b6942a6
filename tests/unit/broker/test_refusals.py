"""RefusalLimiter: a bounded number of refusal events per window, per source as well as overall, and an
exact count of what was held back, reported once the window is over (its clock is injected here)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jit_ssh.broker.refusals import SUMMARY_ACTION, RefusalLimiter, clip, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_source_gets_its_share_and_the_rest_is_counted() -> None:
    clock = Clock()
    limiter = RefusalLimiter(burst=10, per_source=4, clock=clock)
    results = [limiter.admit("session.refused", "203.0.113.9") for _ in range(50)]
    assert [admitted for admitted, _ in results] == [True] * 4 + [False] * 46
    assert all(summary is None for _, summary in results)
    # Another source is still heard while the first is held back.
    assert limiter.admit("auth.refused", "198.51.100.7") == (True, None)
    assert limiter.summary() is None  # the window is not over
    clock.now += 60
    assert limiter.summary() == {
        "count": 46, "window_seconds": 60.0, "actions": {"session.refused": 46},
        "sources": {"203.0.113.9": 46}, "other_sources": 0,
    }  # fmt: skip
    assert limiter.summary() is None  # reported once
    assert limiter.admit("session.refused", "203.0.113.9") == (True, None)  # a new window


def test_the_overall_burst_bounds_many_sources() -> None:
    clock = Clock()
    limiter = RefusalLimiter(burst=10, per_source=2, clock=clock)
    admitted = [limiter.admit("auth.refused", f"10.0.{i // 256}.{i % 256}")[0] for i in range(300)]
    assert sum(admitted) == 10
    clock.now += 61
    ok, summary = limiter.admit("session.failed", "10.9.9.9")  # the next refusal carries the summary
    assert ok
    assert summary is not None
    assert summary["count"] == 290
    assert summary["actions"] == {"auth.refused": 290}
    assert len(summary["sources"]) == 10
    assert summary["other_sources"] == 290 - 10


def test_a_forced_summary_reports_a_window_not_yet_over() -> None:
    limiter = RefusalLimiter(burst=1, per_source=1, clock=Clock())
    assert limiter.summary(force=True) is None
    limiter.admit("review.refused", "user:carol")
    limiter.admit("review.refused", "user:carol")
    limiter.admit("auth.refused", "user:carol")
    summary = limiter.summary(force=True)
    assert summary is not None
    assert summary["count"] == 2
    assert summary["actions"] == {"review.refused": 1, "auth.refused": 1}
    assert limiter.summary(force=True) is None


@given(
    st.lists(st.tuples(st.sampled_from(["auth.refused", "session.refused"]), st.text(max_size=80),
                       st.floats(min_value=0, max_value=200)), max_size=300)
)  # fmt: skip
def test_every_refusal_is_audited_or_counted_exactly_once(steps: list[tuple[str, str, float]]) -> None:
    clock = Clock()
    limiter = RefusalLimiter(burst=7, per_source=3, window=60, clock=clock)
    audited = counted = window_audited = 0
    window_start = clock.now
    for action, source, advance in steps:
        clock.now += advance / 10
        if clock.now - window_start >= 60:
            window_start, window_audited = clock.now, 0
        ok, summary = limiter.admit(action, source)
        if summary is not None:
            counted += summary["count"]
            assert sum(summary["actions"].values()) == summary["count"]
            assert summary["other_sources"] >= 0
        if ok:
            audited += 1
            window_audited += 1
        assert window_audited <= 7
    final = limiter.summary(force=True)
    counted += final["count"] if final else 0
    assert audited + counted == len(steps)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RefusalLimiter(burst=5, per_source=6)


def test_clip_and_source() -> None:
    assert clip("x" * 10, 10) == "x" * 10
    assert clip("abcdefghijk", 10) == "abcd\u2026ghijk"  # both ends kept
    assert len(clip("K" * 6000, 300)) == 300
    assert source_of("192.0.2.1:50022") == "192.0.2.1"
    assert source_of("::1:50022") == "::1"
    assert source_of("?") == "?"
    assert SUMMARY_ACTION == "refusals.suppressed"
