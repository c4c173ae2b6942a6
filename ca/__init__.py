"""jit_ssh.ca: the authority. Keys, certificates, KRLs, policy and the record of who may have what.

No network code lives here; the broker and the CLI call into it. Certificates are signed only by
``jit_ssh.ca.issuer.Issuer``, which keeps a row and an audit event of each; the mint functions it uses
(``jit_ssh.ca.certs``) are not part of this package's API.
"""

from .authority import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, CADirectory, CARole, passphrase_from_env
from .certs import (
    ALL_USER_EXTENSIONS,
    DEFAULT_USER_EXTENSIONS,
    MAX_BACKDATE,
    Certificate,
    CertType,
)
from .errors import (
    AccessDenied,
    CAKeyError,
    CertificateError,
    ConfigError,
    GrantExpired,
    InputError,
    JitSshError,
    KRLError,
    StoreError,
)
from .keys import PublicKey
from .krl import KRL
from .signer import KeySigner, KeyType, Signer

__all__ = [
    "ALL_USER_EXTENSIONS",
    "DEFAULT_USER_EXTENSIONS",
    "KRL",
    "MAX_BACKDATE",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "AccessDenied",
    "CADirectory",
    "CAKeyError",
    "CARole",
    "CertType",
    "Certificate",
    "CertificateError",
    "ConfigError",
    "GrantExpired",
    "InputError",
    "JitSshError",
    "KRLError",
    "KeySigner",
    "KeyType",
    "PublicKey",
    "Signer",
    "StoreError",
    "passphrase_from_env",
]
