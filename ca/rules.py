"""Who may do what beyond requesting access: reviewers and host identities."""

from __future__ import annotations

from .errors import AccessDenied

__all__ = ["HOST_GROUP", "check_reviewer"]

#: Members are hosts' own keys (enrolled by 'host enroll --host-key'), good for fetching the KRL only.
HOST_GROUP = "jit-hosts"


def check_reviewer(groups: frozenset[str], reviewer_groups: frozenset[str], user: str) -> None:
    if not groups & reviewer_groups:
        raise AccessDenied(f"{user} is not a reviewer (reviewers: {', '.join(sorted(reviewer_groups)) or 'nobody'})")
