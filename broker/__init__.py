"""jit_ssh.broker: the bastion daemon (control plane and recording proxy)."""

__all__: list[str] = []
