"""``jit-ssh config``: the client's settings."""

from __future__ import annotations

from typing import Annotated

import typer

from .output import console, emit_json
from .settings import KEYS, Settings, set_value

__all__ = ["app"]

app = typer.Typer(
    help="Client settings (~/.config/jit-ssh/config.toml; JIT_SSH_CONFIG overrides).", no_args_is_help=True
)


@app.command("set")
def set_cmd(
    key: Annotated[str, typer.Argument(help=f"One of: {', '.join(KEYS)}.")],
    value: Annotated[str, typer.Argument()],
) -> None:
    """Set one client setting."""
    path = set_value(key, value)
    console.print(f"{key} = {value} ({path})", markup=False)


@app.command("show")
def show_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the settings in effect."""
    settings = Settings.load()
    values = {
        "bastion": settings.bastion,
        "port": settings.port,
        "user": settings.user,
        "identity": str(settings.identity) if settings.identity else None,
        "known_hosts": str(settings.known_hosts),
        "login": settings.login,
        "file": str(settings.path),
    }
    if as_json:
        emit_json(values)
        return
    for key, value in values.items():
        console.print(f"{key:<12} {value if value is not None else '-'}", markup=False)
