"""The issuer: the one place where the system signs certificates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["OnwardTerms"]


@dataclass(frozen=True, slots=True)
class OnwardTerms:
    """What the broker's certificate for one session's connection to the host says (invariants 3 and 8):
    the one principal of the session, from now to the end of the grant, the grant's extensions, the
    bastion's addresses as ``source-address``, and the session, request and user in the key id."""

    principals: tuple[str, ...]
    key_id: str
    valid_from: datetime
    valid_until: datetime
    max_validity: timedelta
    extensions: tuple[str, ...]
    source_address: tuple[str, ...]
    backdate: timedelta
