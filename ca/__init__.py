"""jit_ssh.ca: the authority. Keys, certificates, KRLs, policy and the record of who may have what.

No network code lives here; the broker and the CLI call into it.
"""

from .authority import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, CADirectory, CARole, passphrase_from_env
from .certs import (
    ALL_USER_EXTENSIONS,
    DEFAULT_USER_EXTENSIONS,
    MAX_BACKDATE,
    Certificate,
    CertType,
    mint_host_certificate,
    mint_user_certificate,
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
    "mint_host_certificate",
    "mint_user_certificate",
    "passphrase_from_env",
]
