"""The ``jit-ssh`` command: one typer app; errors caught once, here, as one red line."""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from jit_ssh.ca import JitSshError

from . import access_cmds, admin_cmds, ca_cmds, config_cmds, connect_cmd, demo
from .output import print_error

__all__ = ["app", "run"]

app = typer.Typer(
    name="jit-ssh",
    help="Temporary, approved, recorded SSH access to production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(ca_cmds.app, name="ca")
app.add_typer(config_cmds.app, name="config")
app.command("demo")(demo.demo)
access_cmds.register(app)
app.command("connect")(connect_cmd.connect)
admin_cmds.register(app)


def _version() -> str:
    try:
        return version("jit-ssh")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"jit-ssh {_version()}")
        raise typer.Exit


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks with errors.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_show_version, is_eager=True),
    ] = False,
) -> None:
    """Temporary, approved, recorded SSH access to production."""


_GLOBAL_FLAGS = frozenset({"--verbose", "-v", "--version", "--help", "--install-completion", "--show-completion"})


def route_host(args: list[str]) -> list[str]:
    """``jit-ssh HOST ...`` means ``jit-ssh connect HOST ...``: a first word that is not a subcommand
    is a host. A host named like a subcommand is reached with ``jit-ssh connect HOST``."""
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    for index, word in enumerate(args):
        if word in _GLOBAL_FLAGS:
            continue
        if word.startswith("-") or word in commands:
            return args
        return [*args[:index], "connect", *args[index:]]
    return args


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = route_host(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    try:
        app(args=args, prog_name="jit-ssh")
    except JitSshError as exc:
        if verbose:
            traceback.print_exc()
        print_error(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns any surprise into one line
        if verbose:
            traceback.print_exc()
        print_error(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    run()
