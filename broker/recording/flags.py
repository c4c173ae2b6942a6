"""What a reviewer must look at without reading the whole recording: sessions that left a way around it.

The broker records what passes through it. A session can start a server that the client then reaches
*without* the broker (``mosh-server``; a ``socat``/``nc -l`` listener; an ``ssh -R`` tunnel from the host
back out), or leave itself standing access (a key added to ``authorized_keys``, a changed shell start-up
file that runs something at the next login). The traffic of the first kind is invisible to any bastion:
hosts must accept connections only from the bastion (docs/security.md). What the broker can do is notice
the attempt in what it did record (commands typed or run, input fed to a shell, environment values, file
operations, and the few lines such servers print) and flag the session for review, so reviewers do not
have to read every recording to find them.

Detection is by pattern and therefore incomplete (an attacker can obfuscate a command line): a flag is a
pointer for a reviewer, the recording remains the evidence. The patterns are ours, never a user's, and
simple (no nested repetition), so matching is linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MAX_FLAGS", "flags_in_command", "flags_in_output", "flags_in_transfer"]

MAX_FLAGS = 32
_WORD = r"(?:^|[\s;&|(`'\"/=$])"  # what may come before a command name

_COMMAND_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(_WORD + r"mosh-server\b"), "out-of-band server: mosh-server"),
    (re.compile(_WORD + r"(?:nc|ncat|netcat|busybox\s+nc)\b[^\n;|&]*?(?:\s-[a-zA-Z]*l|\s--listen\b)"),
     "listener: nc -l"),
    (re.compile(_WORD + r"socat\b[^\n]*?\b(?:tcp|tcp4|tcp6|udp|udp4|udp6|sctp|openssl|dccp)-listen\b", re.I),
     "listener: socat"),
    (re.compile(_WORD + r"(?:python[0-9.]*|python3)\s+-m\s+(?:http\.server|SimpleHTTPServer|smtpd)\b"),
     "listener: python -m http.server"),
    (re.compile(_WORD + r"ssh\s[^\n;|&]*?-[a-zA-Z]*[RLDw](?:\s|[0-9]|$)"), "tunnel: ssh -R/-L/-D/-w from the host"),
    (re.compile(r"authorized_keys2?\b"), "persistence: authorized_keys"),
    (re.compile(_WORD + r"(?:crontab\b|at\s+(?:now|[0-9]))"), "persistence: scheduled job"),
    (re.compile(_WORD + r"(?:systemd-run|nohup|setsid|disown)\b"), "detached process"),
    (re.compile(r"/dev/(?:tcp|udp)/"), "reverse shell: /dev/tcp"),
    # The host firewall (scripts/enroll-host --firewall) is what keeps out-of-band servers unreachable.
    (re.compile(_WORD + r"(?:nft\s+(?:-\S+\s+)*(?:flush|delete|add|insert|replace|destroy|-f)\b"
                r"|(?:ip6?tables|ufw|firewall-cmd)\b)"), "firewall changed"),
)  # fmt: skip
_OUTPUT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^MOSH CONNECT \d+ "), "out-of-band server: mosh-server"),
)
#: Files whose change runs code at someone's next login or program start, or lets someone in.
_SENSITIVE_PATH = re.compile(
    r"(?:^|/)(?:\.bashrc|\.bash_profile|\.bash_login|\.bash_logout|\.bash_aliases|\.profile|\.zshrc|\.zprofile"
    r"|\.zshenv|\.zlogin|\.zlogout|\.kshrc|\.cshrc|\.tcshrc|\.login|\.logout|\.inputrc|\.pam_environment"
    r"|authorized_keys2?|\.ssh/rc|\.ssh/environment|\.ssh/config|\.gitconfig|\.git/hooks/[^/]+|\.vimrc|\.exrc"
    r"|\.config/systemd/user/[^/]+|\.config/autostart/[^/]+|\.config/fish/[^/]+|\.local/bin/[^/]+|bin/[^/]+"
    r"|[^/]+\.pth|sitecustomize\.py|usercustomize\.py|crontab|crontabs/[^/]+|cron\.[a-z]+/[^/]+|anacrontab"
    r"|bash\.bashrc|profile|profile\.d/[^/]+|environment|rc\.local|init\.d/[^/]+|systemd/system/[^/]+"
    r"|passwd|shadow|group|gshadow|sudoers(?:\.d/[^/]+)?|pam\.d/[^/]+|security/[^/]+|ld\.so\.preload"
    r"|ld\.so\.conf(?:\.d/[^/]+)?|sshd_config(?:\.d/[^/]+)?|hosts\.allow|nftables\.conf|iptables/[^/]+"
    r"|modules-load\.d/[^/]+|udev/rules\.d/[^/]+|apt/apt\.conf\.d/[^/]+)$"
)
_MODIFYING_OPS = frozenset(
    {"write", "rename", "posix-rename", "hardlink", "symlink", "setstat", "fsetstat", "lsetstat", "copy-data",
     "remove", "mkdir"}
)  # fmt: skip


def flags_in_command(text: str) -> list[str]:
    """Flags for a command line (exec, typed, fed on a shell's stdin) or an environment value."""
    if len(text) > 65536:
        text = text[:65536]
    return [flag for pattern, flag in _COMMAND_PATTERNS if pattern.search(text)]


def flags_in_output(line: str) -> list[str]:
    return [flag for pattern, flag in _OUTPUT_PATTERNS if pattern.search(line)]


def flags_in_transfer(op: dict[str, object], links: dict[str, str] | None = None) -> list[str]:
    """Flags for one file operation (SFTP): a change to a file that runs code or lets someone in.

    ``links`` maps the symlinks made earlier in the session to their targets (it is kept up to date here):
    writing through ``notes.txt -> ~/.bash_profile`` changes ``~/.bash_profile``.
    """
    name = str(op.get("op", ""))
    if name not in _MODIFYING_OPS:
        return []
    paths = [str(op[key]) for key in ("path", "to", "from", "target") if isinstance(op.get(key), str)]
    if links is not None:
        linked = name == "symlink" and isinstance(op.get("path"), str) and isinstance(op.get("target"), str)
        if linked and len(links) < 10_000:
            links[str(op["path"])] = str(op["target"])
        paths += [links[path] for path in paths if path in links]
    flagged = dict.fromkeys(path for path in paths if _SENSITIVE_PATH.search(path))
    return [f"sensitive file changed over SFTP: {path[:200]}" for path in flagged]


def merge(flags: list[str], new: Iterable[str]) -> None:
    """Add ``new`` flags to ``flags`` once each, keeping at most MAX_FLAGS."""
    for flag in new:
        if flag not in flags and len(flags) < MAX_FLAGS:
            flags.append(flag)
