"""Who may do what beyond requesting access: reviewers, host identities, and what a host's sshd accepts.

Pure rules over the policy and a user's groups; the approver rule is :meth:`Policy.check_approver`.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import AccessDenied
from .policy import HostInfo, Policy
from .validate import target_principal

__all__ = [
    "HOST_GROUP",
    "HOST_IDENTITY_VERBS",
    "check_host_identity",
    "check_reviewer",
    "host_principals",
]

#: Members are hosts' own keys (enrolled by 'host enroll --host-key'), good for fetching the KRL only.
HOST_GROUP = "jit-hosts"
#: The control verbs a host identity may use: the KRL, and asking who it is.
HOST_IDENTITY_VERBS = frozenset({"whoami", "krl"})


def check_host_identity(user: str, groups: Iterable[str], verb: str) -> None:
    """Refuse ``verb`` to a host identity (a member of :data:`HOST_GROUP` by its store ``groups``) unless it is
    one of :data:`HOST_IDENTITY_VERBS`: a key on a host opens nothing but the KRL, whatever else it is given."""
    if verb not in HOST_IDENTITY_VERBS and HOST_GROUP in groups:
        raise AccessDenied(f"{user} is a host identity: it may only fetch the KRL")


def check_reviewer(policy: Policy, user: str, store_groups: Iterable[str]) -> None:
    """Refuse ``user`` unless a member of one of the policy's reviewer groups (``[review]``), by the store's
    groups and the policy's own ``[groups]``: listing, replaying and watching sessions is for reviewers."""
    reviewers = policy.reviewer_groups
    if policy.groups_of(user, store_groups).isdisjoint(reviewers):
        raise AccessDenied(f"{user} is not a reviewer (reviewers: {', '.join(sorted(reviewers)) or 'nobody'})")


def host_principals(policy: Policy, host: HostInfo) -> dict[str, tuple[str, ...]]:
    """What each login's ``AuthorizedPrincipalsFile`` on ``host`` lists, by login (sorted): exactly
    ``LOGIN@HOST``, for each login some rule selecting the host allows. A login no rule allows there has
    no file, so sshd accepts no certificate for it."""
    logins = sorted({login for rule in policy.rules if rule.selects(host) for login in rule.logins})
    return {login: (target_principal(login, host.name),) for login in logins}
