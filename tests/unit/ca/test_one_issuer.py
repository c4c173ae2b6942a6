"""Only the issuer signs (issue 11): no product module but ``ca/issuer.py`` calls the mint functions or
takes a serial, so that no certificate can be signed without its row and audit event."""

from __future__ import annotations

import ast
from pathlib import Path

import jit_ssh.ca
import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("ca", "broker", "cli")
#: Names only the issuer may use, and where each is defined.
GUARDED = {"mint_user_certificate": "ca/certs.py", "mint_host_certificate": "ca/certs.py", "next_serial": "ca/store.py"}
ISSUER = "ca/issuer.py"


def _uses(path: Path) -> set[str]:
    """The guarded names ``path`` imports, calls or otherwise mentions (as a name or an attribute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.alias):
            name = node.name.rpartition(".")[2]
        else:
            continue
        if name in GUARDED:
            found.add(name)
    return found


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_only_the_issuer_mints_certificates_or_takes_serials() -> None:
    offenders = {}
    for path in _sources():
        relative = path.relative_to(ROOT).as_posix()
        if relative == ISSUER:
            continue
        used = {name for name in _uses(path) if GUARDED[name] != relative}
        if used:
            offenders[relative] = sorted(used)
    assert offenders == {}


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_the_check_sees_the_issuers_own_use(name: str) -> None:
    # The negative control: the issuer does use each name, and the check finds it there.
    assert name in _uses(ROOT / ISSUER)


def test_the_package_does_not_offer_the_mint_functions() -> None:
    assert not {"mint_user_certificate", "mint_host_certificate"} & set(jit_ssh.ca.__all__)
    assert not hasattr(jit_ssh.ca, "mint_user_certificate")
