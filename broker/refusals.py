"""Refusals that clients can cause in bulk are audited at a bounded rate, and what is held back is counted.

A client that never authenticated can present thousands of keys or self-signed certificates a minute,
and an enrolled user can repeat a refused command as fast: each refusal is worth an audit event (who
tried, from where, why), but the audit log must not become the attacker's storage, nor its writes a way
to slow the broker. One :class:`RefusalLimiter` serves every such refusal (``auth.refused``,
``session.refused``, ``session.failed``, ``review.refused``): at most ``burst`` events a window overall
and ``per_source`` for one source (a peer address, or a user), so that one noisy source cannot crowd out
the others. What it holds back is counted by action and by source, and reported in one
``refusals.suppressed`` event once the window is over.

:class:`RefusalLimiter` only decides and counts (it is shared by the event loop and worker threads,
hence the lock); :class:`RefusalAudit` clips what a client chose and writes the events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from jit_ssh.ca import StoreError
from jit_ssh.ca.audit import append_event
from jit_ssh.ca.store import Store

__all__ = ["SUMMARY_ACTION", "RefusalAudit", "RefusalLimiter", "clip", "source_of"]

log = logging.getLogger("jit_ssh.broker")

SUMMARY_ACTION = "refusals.suppressed"
#: Sources named one by one in a summary; the rest are counted together.
_SUMMARY_SOURCES = 10
_SOURCE_CHARS = 64
#: Characters kept of each text a client chose (a key id, a user name, a reason quoting them).
_FIELD_CHARS = 300

#: An audit event to write: actor, action, subject, details.
Event = tuple[str, str, str, dict[str, Any]]


def clip(value: object, limit: int) -> str:
    """``value`` as text of at most ``limit`` characters, its middle cut out (an ellipsis) if too long.

    The middle, because both ends say something: a refusal reason quotes a client's key id in its
    middle and ends with the fingerprints that explain it.
    """
    text = str(value)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (limit - 1 - head) :]


def source_of(peer: str) -> str:
    """The host part of a ``HOST:PORT`` peer: a client's next connection comes from another port."""
    host, sep, port = peer.rpartition(":")
    return host if sep and host and port.isdigit() else peer


class RefusalLimiter:
    """Admit at most ``burst`` refusal events per ``window`` seconds, ``per_source`` of them from one source.

    ``clock`` is injectable so that tests can end a window without waiting for it.
    """

    def __init__(
        self,
        *,
        burst: int,
        per_source: int,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or not 1 <= per_source <= burst or window <= 0:
            raise ValueError("a refusal limit needs burst >= per_source >= 1 and a positive window")
        self.burst = burst
        self.per_source = per_source
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._admitted = 0
        self._by_source: Counter[str] = Counter()
        self._held_actions: Counter[str] = Counter()
        self._held_sources: Counter[str] = Counter()

    def admit(self, action: str, source: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether to audit this refusal, and the summary of an earlier window to audit first (if any)."""
        source = clip(source, _SOURCE_CHARS)
        with self._lock:
            summary = self._roll()
            if self._admitted < self.burst and self._by_source[source] < self.per_source:
                self._admitted += 1
                self._by_source[source] += 1
                return True, summary
            if not self._held_actions:
                log.warning(
                    "refusal audit limit reached (%d a window, %d per source): further refusals are counted",
                    self.burst, self.per_source,
                )  # fmt: skip
            self._held_actions[action] += 1
            self._held_sources[source] += 1
            return False, summary

    def summary(self, *, force: bool = False) -> dict[str, Any] | None:
        """What was held back, once its window is over (or now, with ``force``: the broker is stopping)."""
        with self._lock:
            return self._roll(force=force)

    def _roll(self, *, force: bool = False) -> dict[str, Any] | None:
        now = self._clock()
        if not force and now - self._start < self.window:
            return None
        summary = None
        if self._held_actions:
            named = dict(self._held_sources.most_common(_SUMMARY_SOURCES))
            summary = {
                "count": sum(self._held_actions.values()),
                "window_seconds": round(now - self._start, 1),
                "actions": dict(self._held_actions),
                "sources": named,
                "other_sources": len(self._held_sources) - len(named),
            }
        if not force or summary is not None:
            self._start = now
            self._admitted = 0
            self._by_source.clear()
            self._held_actions.clear()
            self._held_sources.clear()
        return summary


class RefusalAudit:
    """Refusal events through a :class:`RefusalLimiter` into the audit log of ``store``."""

    def __init__(self, store: Store, limiter: RefusalLimiter) -> None:
        self.store = store
        self.limiter = limiter

    def admit(
        self,
        action: str,
        subject: str,
        details: Mapping[str, Any],
        *,
        source: str | None = None,
        actor: str = "jit-ssh",
    ) -> list[Event]:
        """The events to write for one refusal: a summary of an earlier window, and this one if admitted.

        ``source`` is whom the limit counts it against: the peer's address in ``details`` unless given.
        Every text is clipped, so that the event is never cut as a whole and keeps its peer and reason.
        """
        peer = str(details.get("peer") or "")
        admitted, summary = self.limiter.admit(action, source or source_of(peer) or subject)
        events = _summary_events(summary)
        if admitted:
            bounded = {k: clip(v, _FIELD_CHARS) if isinstance(v, str) else v for k, v in details.items()}
            events.append((clip(actor, _SOURCE_CHARS), action, clip(subject, _FIELD_CHARS), bounded))
        return events

    def summary(self, *, force: bool = False) -> list[Event]:
        """The summary event of a window that is over (``force``: now, at shutdown), if anything was held back."""
        return _summary_events(self.limiter.summary(force=force))

    def write(self, events: list[Event]) -> None:
        """Append ``events`` (from a worker thread); a store error is logged, the refusal stands."""
        for actor, action, subject, details in events:
            try:
                with self.store.transaction() as session:
                    append_event(self.store, session, actor=actor, action=action, subject=subject, details=details)
            except StoreError as exc:
                log.warning("could not audit %s: %s", action, exc)


def _summary_events(summary: dict[str, Any] | None) -> list[Event]:
    return [] if summary is None else [("jit-ssh", SUMMARY_ACTION, "broker", summary)]
