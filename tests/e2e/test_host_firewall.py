"""The host firewall (issue 10, item 6): ``scripts/enroll-host --firewall`` writes an nftables ruleset that
accepts new inbound connections only from the bastion (plus loopback, replies to the host's own connections
and the service ports the operator lists), so that a ``mosh-server`` or ``nc -l`` listener started in a
session cannot be reached around the broker, which would neither record nor end that traffic.

The ruleset is checked by the real ``nft``, and loaded into a pair of network namespaces made here, a
"host" and a "network" holding the bastion's address and another one: real TCP and UDP traffic shows what
gets through. Negative controls beside each: before the ruleset is loaded, and after it is removed as the
docs say, the other address reaches the same listeners.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from jit_ssh.cli.bastion.stack import LocalStack

from tests.e2e.stack_fixture import wait_for
from tests.e2e.test_enroll import ENROLL_HOST, HostRoot, make_root

pytestmark = pytest.mark.e2e

NAME = "prod-app-9"
SOURCES = ["192.0.2.10", "2001:db8:5::/64"]  # the broker's [broker] source_addresses in this module
UNIT = "jit-ssh-firewall.service"
NFT = shutil.which("nft") or "/usr/sbin/nft"
needs_nft = pytest.mark.skipif(
    not Path(NFT).exists(), reason="nft is not installed (JIT_SSH_WITH_TEST_TOOLS=1 scripts/setup installs it)"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``jit-ssh host enroll --output`` on a bastion whose broker connects from SOURCES."""
    base = tmp_path_factory.mktemp("firewall")
    key = make_root(base / "key-host").host_key.with_suffix(".pub")
    settings = {"source_addresses": json.dumps(SOURCES)}
    with LocalStack(base / "site", hosts=(), broker_settings=settings) as stack:
        stack.admin(
            "host", "enroll", NAME, "--address", "198.51.100.7", "--host-key", str(key),
            "--output", str(base / "bundle"),
        )  # fmt: skip
        yield base / "bundle"


def enroll(bundle: Path, host: HostRoot, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENROLL_HOST), str(bundle), "--root", str(host.root), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip


def ruleset(host: HostRoot) -> Path:
    return host.etc / "jit-ssh" / "firewall.nft"


def unit(host: HostRoot) -> Path:
    return host.root / "etc" / "systemd" / "system" / UNIT


def everything(host: HostRoot) -> dict[str, bytes]:
    """Every file and link under the host's /etc but enroll-host's backups."""
    etc = host.root / "etc"
    return {
        str(p.relative_to(etc)): os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
        for p in sorted(etc.rglob("*"))
        if (p.is_file() or p.is_symlink()) and not any(part.startswith("jit-ssh.backup.") for part in p.parts)
    }


def accepted(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:
    """The ruleset's own accept rules: (family, source) for addresses, (protocol, port) for service ports."""
    sources = re.findall(r"^\s*(ip6?) saddr (\S+) accept$", text, re.M)
    ports = [(proto, int(port)) for proto, port in re.findall(r"^\s*(tcp|udp) dport (\d+) accept$", text, re.M)]
    return sources, ports


def nft_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NFT, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False)


# -- the bundle and the file -------------------------------------------------------------------------
def test_the_bundle_names_the_addresses_hosts_see_the_broker_connect_from(bundle: Path) -> None:
    lines = (bundle / "bastion_addresses").read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == SOURCES


@needs_nft
def test_firewall_writes_the_ruleset_and_its_unit_and_a_second_run_changes_nothing(
    bundle: Path, tmp_path: Path
) -> None:
    host = make_root(tmp_path / "host")
    done = enroll(bundle, host, "--firewall", "--allow-port", "443", "--allow-port", "5353/udp")
    assert done.returncode == 0, done.stderr
    text = ruleset(host).read_text(encoding="utf-8")
    assert accepted(text) == ([("ip", "192.0.2.10"), ("ip6", "2001:db8:5::/64")], [("tcp", 443), ("udp", 5353)])
    assert "table inet jit_ssh {" in text
    assert re.search(r"type filter hook input priority filter; policy drop;", text)
    assert nft_check(ruleset(host)).returncode == 0
    # Loaded at boot, and again whenever nftables.service (whose 'flush ruleset' would drop it) starts.
    service = unit(host).read_text(encoding="utf-8")
    assert f"ExecStart={NFT} -f {ruleset(host)}\n" in service
    enabled = subprocess.run(
        ["systemctl", "--root", str(host.root), "is-enabled", UNIT], capture_output=True, text=True, check=False
    )
    assert enabled.stdout.strip() == "enabled", enabled.stdout + enabled.stderr
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit(host))], capture_output=True, text=True, timeout=60, check=False
        )
        assert verify.returncode == 0, verify.stderr

    before = everything(host)
    again = enroll(bundle, host, "--firewall", "--allow-port", "443", "--allow-port", "5353/udp")
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout
    assert everything(host) == before
    # Other ports are a change, and only the ports change.
    third = enroll(bundle, host, "--firewall", "--allow-port", "8443")
    assert third.returncode == 0, third.stderr
    assert accepted(ruleset(host).read_text(encoding="utf-8"))[1] == [("tcp", 8443)]


@needs_nft
def test_bastion_replaces_the_bundles_addresses(bundle: Path, tmp_path: Path) -> None:
    host = make_root(tmp_path / "host")
    done = enroll(bundle, host, "--firewall", "--bastion", "10.0.0.5,fd00::5,10.8.0.0/16")
    assert done.returncode == 0, done.stderr
    assert accepted(ruleset(host).read_text(encoding="utf-8")) == (
        [("ip", "10.0.0.5"), ("ip6", "fd00::5"), ("ip", "10.8.0.0/16")],
        [],
    )


@needs_nft
def test_without_firewall_nothing_of_it_is_written_and_an_installed_one_stays(bundle: Path, tmp_path: Path) -> None:
    host = make_root(tmp_path / "host")
    plain = enroll(bundle, host)
    assert plain.returncode == 0, plain.stderr
    assert not ruleset(host).exists()
    assert not (host.root / "etc" / "systemd").exists()
    assert "bastion_addresses" not in {p.name for p in host.etc.rglob("*")}
    # A later run without the option (a new bundle, say) never takes the firewall away: removing it is explicit.
    assert enroll(bundle, host, "--firewall").returncode == 0
    installed = everything(host)
    again = enroll(bundle, host)
    assert again.returncode == 0, again.stderr
    assert everything(host) == installed


# -- bad input -----------------------------------------------------------------------------------------
BAD = {
    "octet": (["--firewall", "--bastion", "10.0.0.256"], "10.0.0.256"),
    "host bits": (["--firewall", "--bastion", "10.0.0.5/24"], "host bits"),
    "everyone v4": (["--firewall", "--bastion", "0.0.0.0/0"], "0.0.0.0/0"),
    "everyone v6": (["--firewall", "--bastion", "::/0"], "::/0"),
    "v6 host bits": (["--firewall", "--bastion", "fd00::1/64"], "host bits"),
    "two ::": (["--firewall", "--bastion", "fd00::1::2"], "fd00::1::2"),
    "name": (["--firewall", "--bastion", "bastion.example.com"], "bastion.example.com"),
    "empty item": (["--firewall", "--bastion", "10.0.0.5,"], "--bastion"),
    "leading zero": (["--firewall", "--bastion", "10.0.0.05"], "10.0.0.05"),
    "injection": (["--firewall", "--bastion", "10.0.0.5 accept; flush ruleset"], "flush ruleset"),
    "newline": (["--firewall", "--bastion", "10.0.0.5\ntcp dport 1-65535 accept"], "--bastion"),
    "port zero": (["--firewall", "--allow-port", "0"], "0"),
    "port too big": (["--firewall", "--allow-port", "65536"], "65536"),
    "port range": (["--firewall", "--allow-port", "1-65535"], "1-65535"),
    "protocol": (["--firewall", "--allow-port", "22/sctp"], "22/sctp"),
    "service name": (["--firewall", "--allow-port", "https"], "https"),
    "bastion alone": (["--bastion", "10.0.0.5"], "--firewall"),
    "port alone": (["--allow-port", "443"], "--firewall"),
    "no value": (["--firewall", "--bastion"], "usage"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_addresses_and_ports_are_refused_in_one_line_and_nothing_is_written(
    bundle: Path, tmp_path: Path, case: str
) -> None:
    args, named = BAD[case]
    host = make_root(tmp_path / "host")
    pristine = everything(host)
    refused = enroll(bundle, host, *args)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert named in lines[0], lines[0]
    assert everything(host) == pristine


def test_a_bundle_with_bad_or_no_bastion_addresses_is_refused(bundle: Path, tmp_path: Path) -> None:
    host = make_root(tmp_path / "host")
    pristine = everything(host)
    old = tmp_path / "old-bundle"
    shutil.copytree(bundle, old)
    (old / "bastion_addresses").unlink()  # a bundle from before bastion_addresses
    refused = enroll(old, host, "--firewall")
    assert refused.returncode == 2
    assert "--bastion" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    (old / "bastion_addresses").write_text("# edited by hand\n10.0.0.5\n0.0.0.0/0\n", encoding="utf-8")
    refused = enroll(old, host, "--firewall")
    assert refused.returncode == 2
    assert "0.0.0.0/0" in refused.stderr
    assert everything(host) == pristine


# -- real traffic in network namespaces ----------------------------------------------------------------
NET_TOOL = r'''
"""serve PROTO:PORT...: answer b"hello\n" on each (dual-stack) until stdin closes.
probe JSON TIMEOUT: for each [proto, source, target, port] print whether the answer came, as JSON."""
import json, socket, sys, threading

def answer(sock, tcp):
    while True:
        if tcp:
            conn, _ = sock.accept()
            conn.sendall(b"hello\n")
            conn.close()
        else:
            _, peer = sock.recvfrom(2048)
            sock.sendto(b"hello\n", peer)

def serve(specs):
    for spec in specs:
        proto, port = spec.split(":")
        tcp = proto == "tcp"
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", int(port)))
        if tcp:
            sock.listen(64)
        threading.Thread(target=answer, args=(sock, tcp), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()

def probe(proto, source, target, port, timeout):
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    tcp = proto == "tcp"
    with socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.bind((source, 0))
            if tcp:
                sock.connect((target, port))
            else:
                sock.sendto(b"ping", (target, port))
            return sock.recv(16) == b"hello\n"
        except OSError:
            return False

if sys.argv[1] == "serve":
    serve(sys.argv[2:])
else:
    probes, timeout = json.loads(sys.argv[2]), float(sys.argv[3])
    results = [False] * len(probes)
    def run(i, p):
        results[i] = probe(*p, timeout)
    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(probes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))
'''

HOST4, BASTION4, OTHER4 = "198.51.100.1", "198.51.100.2", "198.51.100.3"
HOST6, BASTION6, OTHER6 = "2001:db8:77::1", "2001:db8:77::2", "2001:db8:77::3"
LISTENER_TCP, LISTENER_UDP = 7000, 60001  # what a session starts: nc -l, mosh-server (UDP 60000-61000)
SERVICE_TCP, SERVICE_UDP = 8080, 6000  # what the operator allows with --allow-port
OUT_TCP, OUT_UDP = 7100, 7101  # listeners beyond the host, for the host's own outgoing connections


class Namespaces:
    """Two network namespaces joined by a veth pair: ``host`` and ``net`` (bastion and other addresses)."""

    def __init__(self, tag: str, tool: Path) -> None:
        self.host, self.net, self.tool = f"jitfw-h-{tag}", f"jitfw-n-{tag}", tool
        self.servers: list[subprocess.Popen[str]] = []

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def create(self) -> None:
        self.ip("netns", "add", self.host)
        self.ip("netns", "add", self.net)
        self.ip("link", "add", "name", "veth-h", "netns", self.host, "type", "veth",
                "peer", "name", "veth-n", "netns", self.net)  # fmt: skip
        for ns, dev, addresses in (
            (self.host, "veth-h", (f"{HOST4}/24", f"{HOST6}/64")),
            (self.net, "veth-n", (f"{BASTION4}/24", f"{OTHER4}/24", f"{BASTION6}/64", f"{OTHER6}/64")),
        ):
            for address in addresses:
                self.ip("-n", ns, "addr", "add", address, "dev", dev, *(["nodad"] if ":" in address else []))
            self.ip("-n", ns, "link", "set", "lo", "up")
            self.ip("-n", ns, "link", "set", dev, "up")

    def serve(self, ns: str, *specs: str) -> None:
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(self.tool), "serve", *specs],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.servers.append(server)
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n", server.stderr.read() if server.stderr else ""

    def probe(self, ns: str, probes: Sequence[tuple[str, str, str, int]], *, timeout: float) -> list[bool]:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(self.tool), "probe", json.dumps(probes), str(timeout)],
            capture_output=True, text=True, timeout=timeout + 60, check=True,
        )  # fmt: skip
        results: list[bool] = json.loads(done.stdout)
        return results

    def nft(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.host, NFT, *args], capture_output=True, text=True, timeout=30, check=False
        )

    def flush_neighbours(self) -> None:
        """Forget learnt link addresses, so that IPv6 needs neighbour discovery through the ruleset again."""
        for ns in (self.host, self.net):
            self.ip("-n", ns, "neigh", "flush", "all")

    def destroy(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                server.kill()
            server.communicate(timeout=30)  # closes its pipes too
        for ns in (self.host, self.net):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


@pytest.fixture
def namespaces(tmp_path: Path) -> Iterator[Namespaces]:
    tool = tmp_path / "net_tool.py"
    tool.write_text(NET_TOOL, encoding="utf-8")
    spaces = Namespaces(f"{os.getpid()}", tool)
    try:
        try:
            spaces.create()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"this machine cannot make network namespaces: {exc.stderr.strip()}")
        yield spaces
    finally:
        spaces.destroy()


# Traffic from the network to the host: (protocol, source, target, port) and whether it may get in.
INBOUND = {
    ("tcp", BASTION4, HOST4, LISTENER_TCP): True,
    ("udp", BASTION4, HOST4, LISTENER_UDP): True,
    ("tcp", BASTION6, HOST6, LISTENER_TCP): True,
    ("udp", BASTION6, HOST6, LISTENER_UDP): True,
    ("tcp", OTHER4, HOST4, LISTENER_TCP): False,
    ("udp", OTHER4, HOST4, LISTENER_UDP): False,
    ("tcp", OTHER6, HOST6, LISTENER_TCP): False,
    ("udp", OTHER6, HOST6, LISTENER_UDP): False,
    ("tcp", OTHER4, HOST4, SERVICE_TCP): True,
    ("udp", OTHER4, HOST4, SERVICE_UDP): True,
    ("tcp", OTHER6, HOST6, SERVICE_TCP): True,
    ("udp", OTHER6, HOST6, SERVICE_UDP): True,
    ("tcp", OTHER4, HOST4, SERVICE_UDP): False,  # allowed for UDP only
    ("udp", OTHER4, HOST4, SERVICE_TCP): False,  # allowed for TCP only
}
# Traffic the host starts itself (to the network and over loopback): always allowed, replies included.
OWN = [
    ("tcp", HOST4, OTHER4, OUT_TCP),
    ("udp", HOST4, OTHER4, OUT_UDP),
    ("tcp", HOST6, OTHER6, OUT_TCP),
    ("udp", HOST6, OTHER6, OUT_UDP),
    ("tcp", "127.0.0.1", "127.0.0.1", LISTENER_TCP),
    ("udp", "::1", "::1", LISTENER_UDP),
]


@needs_nft
def test_only_the_bastion_reaches_a_listener_started_on_the_host(
    bundle: Path, tmp_path: Path, namespaces: Namespaces
) -> None:
    host = make_root(tmp_path / "host")
    done = enroll(
        bundle, host, "--firewall", "--bastion", f"{BASTION4},{BASTION6}",
        "--allow-port", f"{SERVICE_TCP}/tcp", "--allow-port", f"{SERVICE_UDP}/udp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ns = namespaces
    ns.serve(ns.host, *(f"{p}:{port}" for p, port in
                        (("tcp", LISTENER_TCP), ("udp", LISTENER_UDP), ("tcp", SERVICE_TCP), ("udp", SERVICE_UDP),
                         ("udp", SERVICE_TCP), ("tcp", SERVICE_UDP))))  # fmt: skip
    ns.serve(ns.net, f"tcp:{OUT_TCP}", f"udp:{OUT_UDP}")
    inbound = list(INBOUND)

    # Negative control: without the ruleset, every address reaches every listener.
    wait_for(lambda: all(ns.probe(ns.net, inbound, timeout=5)), timeout=60, what="the listeners without a firewall")
    assert all(ns.probe(ns.host, OWN, timeout=5))

    loaded = ns.nft("-f", str(ruleset(host)))
    assert loaded.returncode == 0, loaded.stderr
    assert ns.nft("-f", str(ruleset(host))).returncode == 0  # loading it again replaces it: still one table
    listed = ns.nft("list", "ruleset").stdout
    assert listed.count("table inet jit_ssh") == 1
    assert listed.count("chain input") == 1
    ns.flush_neighbours()
    # The ones that may get in get in at once; a dropped packet shows only by the missing answer.
    reached = dict(zip(inbound, ns.probe(ns.net, inbound, timeout=5), strict=True))
    assert reached == INBOUND
    assert all(ns.probe(ns.host, OWN, timeout=5))

    # Removing it as docs/security.md says lets the other address in again.
    assert ns.nft("delete", "table", "inet", "jit_ssh").returncode == 0
    assert all(ns.probe(ns.net, inbound, timeout=5))
