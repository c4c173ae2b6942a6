"""How the CLI speaks: human text with rich by default, JSON for scripts, one red line for errors."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["console", "emit_json", "error_console", "print_error", "step"]

console = Console(highlight=False, soft_wrap=True)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    # soft_wrap keeps it one line however narrow the terminal is.
    error_console.print(f"[bold red]error:[/] {escape(message)}")


def step(message: str) -> None:
    console.print(f"[bold cyan]==>[/] {escape(message)}")
