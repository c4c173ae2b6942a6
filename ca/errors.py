"""The one error family of jit-ssh.

Every error a person can cause or meet derives from :class:`JitSshError` and carries a message meant
for that person: what was expected and what was found. The CLI catches the base class once and prints
the message as one line; library code translates errors of its dependencies where they enter, with
``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "CAKeyError",
    "CertificateError",
    "ConfigError",
    "GrantExpired",
    "InputError",
    "JitSshError",
    "KRLError",
    "StoreError",
]


class JitSshError(Exception):
    """Base of every error jit-ssh reports to a person; ``str(err)`` is the one-line message."""

    #: process exit status the CLI uses for this error (1: an error we explain).
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # One line, always: a message that spans lines would break the CLI's one-red-line promise.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(JitSshError):
    """Input that does not have the expected form (a host name, a duration, a public key, ...)."""

    exit_code = 2


class ConfigError(JitSshError):
    """A configuration or policy file that cannot be used as it is."""


class CAKeyError(JitSshError):
    """A CA key that cannot be created, read, decrypted or trusted."""


class CertificateError(JitSshError):
    """A certificate that would break an invariant, or one that cannot be parsed or verified."""


class KRLError(JitSshError):
    """A key revocation list that cannot be written or read."""


class StoreError(JitSshError):
    """The store (database) failed or holds something unexpected."""


class AccessDenied(JitSshError):
    """A security decision said no: policy, approval, certificate or grant."""

    exit_code = 3


class GrantExpired(AccessDenied):
    """The grant behind a request or session is no longer active."""
