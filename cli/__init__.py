"""jit_ssh.cli: the ``jit-ssh`` command line."""

from .main import app, run

__all__ = ["app", "run"]
