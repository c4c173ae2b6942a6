"""Grants: what one engineer's certificate may open through the broker (invariant 4)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Grant"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What one engineer's certificate may open, as the store says now."""

    request_id: int
    user: str
    host: str
    address: str
    port: int
    host_key: str | None
    login: str
    starts_at: float
    expires_at: float
    extensions: tuple[str, ...]
    serial: int
    key_id: str
