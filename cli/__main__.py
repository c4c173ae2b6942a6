"""``python -m jit_ssh.cli`` is ``jit-ssh``."""

from .main import run

run()
