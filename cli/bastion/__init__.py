"""jit_ssh.cli.bastion: the commands that run on the bastion, over its store, broker and recordings.

Admins' commands (``user``, ``host``, ``audit``, ``policy``, ``serve``), the review commands (whose
``--config`` mode reads the store and the recordings directly), host enrollment and the local demo stack.
:mod:`jit_ssh.cli.main` registers these commands by name and loads a module here only when one of them
runs, so that the engineer's side of the CLI never imports the store, SQLAlchemy or the broker.
"""

__all__: list[str] = []
