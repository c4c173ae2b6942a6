"""The ``jit-ssh`` command: one typer app; errors caught once, here, as one red line."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, ClassVar

import typer
from jit_ssh.ca import JitSshError

from . import access_cmds, ca_cmds, config_cmds, connect_cmd
from .lazy import Lazy, LazyGroup
from .output import print_error

__all__ = ["app", "run"]

_ON_BASTION = "jit_ssh.cli.bastion"


class _Commands(LazyGroup):
    """``jit-ssh``'s commands. Those of the bastion (its store, broker and recordings) are named here with the
    line ``jit-ssh --help`` shows, and load only when they run: the engineer's commands never import them.
    tests/unit/cli/test_lazy.py checks each line against the command's own help."""

    lazy: ClassVar[Mapping[str, Lazy]] = {
        "demo": Lazy(
            f"{_ON_BASTION}.demo:demo", "Run jit-ssh end to end on this machine, in a temporary folder, and clean up."
        ),
        "serve": Lazy(
            f"{_ON_BASTION}.serve:serve", "Run the broker (control plane and recording proxy) until SIGTERM."
        ),
        "export": Lazy(
            f"{_ON_BASTION}.review_cmds:export",
            "Write a session as a standard asciicast file (asciinema play/cat and asciinema-player read it).",
        ),
        "replay": Lazy(
            f"{_ON_BASTION}.review_cmds:replay",
            "Play a recording in this terminal with its timing (space pauses, q quits); follows a live one.",
        ),
        "watch": Lazy(
            f"{_ON_BASTION}.review_cmds:watch",
            "A live, read-only view of an active session (the user is told they are watched).",
        ),
        "user": Lazy(f"{_ON_BASTION}.admin_cmds:user_app", "Enrolled users (on the bastion)."),
        "host": Lazy(f"{_ON_BASTION}.admin_cmds:host_app", "The host inventory (on the bastion)."),
        "audit": Lazy(f"{_ON_BASTION}.admin_cmds:audit_app", "The hash-chained audit log (on the bastion)."),
        "policy": Lazy(f"{_ON_BASTION}.admin_cmds:policy_app", "Check and explain the access policy."),
        "sessions": Lazy(
            f"{_ON_BASTION}.review_cmds:sessions_app", "Recorded sessions: list, search, show, verify, prune."
        ),
    }
    # The order of `jit-ssh --help`: commands, then groups.
    order = (
        "demo", "request", "requests", "status", "approve", "deny", "cancel", "revoke", "cert", "connect",
        "serve", "export", "replay", "watch", "ca", "config", "user", "host", "audit", "policy", "sessions",
    )  # fmt: skip


app = typer.Typer(
    name="jit-ssh",
    help="Temporary, approved, recorded SSH access to production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    cls=_Commands,
)
app.add_typer(ca_cmds.app, name="ca")
app.add_typer(config_cmds.app, name="config")
access_cmds.register(app)
app.command("connect")(connect_cmd.connect)


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
    commands = set(_Commands.order)
    for index, word in enumerate(args):
        if word in _GLOBAL_FLAGS:
            continue
        if word.startswith("-") or word in commands:
            return args
        return [*args[:index], "connect", *args[index:]]
    return args


def _click_error(exc: Exception) -> None:
    """Usage errors, --help on a bare group and aborts, from whichever click typer bundles (typer 0.29
    vendors its own), recognised by class name: one line and exit 2, as a usage error should."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    ctx = getattr(exc, "ctx", None)
    if "NoArgsIsHelpError" in names and ctx is not None:
        typer.echo(ctx.get_help())
        sys.exit(2)
    if "UsageError" in names:
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print_error(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
        sys.exit(2)
    if "Exit" in names:
        sys.exit(getattr(exc, "exit_code", 0))
    if "Abort" in names:
        print_error("aborted")
        sys.exit(130)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = route_host(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    try:
        # standalone_mode=False: usage errors come back to us, to be printed as one line too.
        result = app(args=args, prog_name="jit-ssh", standalone_mode=False)
        if isinstance(result, int) and result:
            sys.exit(result)
    except JitSshError as exc:
        if verbose:
            traceback.print_exc()
        print_error(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns any surprise into one line
        _click_error(exc)
        if verbose:
            traceback.print_exc()
        print_error(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    run()
