"""Commands registered by name and loaded when they run: how the engineer's CLI keeps clear of the bastion's code.

The bastion's commands (:mod:`jit_ssh.cli.bastion`) import the store, SQLAlchemy and the broker, which
cost most of the CLI's start-up. :class:`LazyGroup` lists them in ``jit-ssh --help`` (and in tab
completion) from one line of help each, and imports a command's module only when that command is
resolved: to run it, to complete its arguments, or to show its own ``--help``. This is click's "lazily
loading subcommands" pattern, fitted to typer.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["Lazy", "LazyGroup"]


@dataclass(frozen=True)
class Lazy:
    """A command by name: ``target`` is ``module:attribute``, a :class:`typer.Typer` (a group) or a command
    function; ``line`` is what ``jit-ssh --help`` shows, the first paragraph of the command's own help."""

    target: str
    line: str

    def load(self, name: str) -> Any:
        """The click command, built as ``app.add_typer``/``app.command`` would have built it."""
        module, _, attribute = self.target.partition(":")
        obj = getattr(importlib.import_module(module), attribute)
        holder = typer.Typer()
        if isinstance(obj, typer.Typer):
            holder.add_typer(obj, name=name)
        else:
            holder.command(name)(obj)
        return typer.main.get_group(holder).commands[name]


class _Commands(MutableMapping[str, Any]):
    """A group's commands: those built with the group, then the lazy ones, each loaded on first access."""

    def __init__(self, built: MutableMapping[str, Any], lazy: Mapping[str, Lazy], order: tuple[str, ...]) -> None:
        self._built = dict(built)
        self._lazy = lazy
        self._order = order

    def __getitem__(self, name: str) -> Any:
        if name not in self._built and name in self._lazy:
            self._built[name] = self._lazy[name].load(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        names = [*self._built, *(name for name in self._lazy if name not in self._built)]
        rank = {name: index for index, name in enumerate(self._order)}
        return iter(sorted(names, key=lambda name: rank.get(name, len(rank))))

    def __len__(self) -> int:
        return len(self._built.keys() | self._lazy.keys())

    def peek(self, name: str) -> Any:
        """The command if it is loaded, else a stand-in that only names it (for listings), or None."""
        if name in self._built:
            return self._built[name]
        if name in self._lazy:
            return TyperCommand(name=name, help=self._lazy[name].line)
        return None


class LazyGroup(TyperGroup):
    """A typer group with commands in :attr:`lazy`, listed in :attr:`order` (``jit-ssh --help``'s order).

    Subclass it and set both; pass the subclass as ``typer.Typer(cls=...)``. Listings (help, completion
    of the command name) see the stand-ins; resolving a command, as running or completing it does, loads it.
    """

    lazy: ClassVar[Mapping[str, Lazy]] = {}
    order: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands(self.commands, self.lazy, self.order)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names only: TyperGroup's own would load every command

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        commands = self.commands
        return commands.peek(cmd_name) if isinstance(commands, _Commands) else commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        return name, (self.commands[name] if name is not None else command), rest
