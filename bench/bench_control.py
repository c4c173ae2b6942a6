"""Control-plane round trips over SSH on loopback: latency of ``status`` and ``cert``, and certificate
fetches per second with 20 concurrent clients.

A real broker (``jit-ssh serve``, as a separate process, default settings: SQLite in WAL mode, INFO logs)
serves one approved request of alice's. The client is asyncssh in this process, as in the CLI's
``ControlClient``:

* persistent: one authenticated connection, one exec channel per command (what a long-running client
  or ``jit-ssh HOST`` polling for approval pays);
* per call: connect, authenticate, run one command, close (what one ``jit-ssh`` command pays on the
  wire, without the CLI's own start-up);
* CLI: the ``jit-ssh cert ID`` command end to end, Python start-up and imports included.

Throughput: 20 clients at once, each fetching certificates in a loop for a few seconds, on persistent
connections and with a new connection per fetch. Clients and broker share the machine's cores, so the
figures are a floor for a bastion with cores of its own. The target (issue 3) is a p50 under 50 ms for a
certificate fetch.

Usage: .venv/bin/python bench/bench_control.py [--quick]   (or bench/run control; --quick prints only)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
from _report import command, machine, table, write_section
from jit_ssh.ca import CADirectory, CARole
from jit_ssh.ca.inventory import add_host, add_user
from jit_ssh.ca.store import Store
from jit_ssh.cli.openssh import generate_ssh_key

TARGET_P50_MS = 50.0
CLIENTS = 20
POLICY = """\
[groups]
sre = ["alice", "bob"]

[[rule]]
name = "prod"
hosts = ["prod-*"]
requesters = ["sre"]
logins = ["ubuntu"]
max_duration = "8h"
approvals = 1
approvers = ["sre"]
"""
JIT_SSH = str(Path(sys.executable).with_name("jit-ssh"))


class Site:
    """A bastion in a temporary directory, its broker process, and alice's approved request."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CADirectory.create(root / "ca", passphrase=None, insecure_no_passphrase=True)
        (root / "policy.toml").write_text(POLICY)
        self.config = root / "broker.toml"
        self.config.write_text(
            '[broker]\nlisten = "127.0.0.1:0"\ndata_dir = "data"\nca_dir = "ca"\npolicy = "policy.toml"\n'
        )
        (root / "data").mkdir(mode=0o700)
        self.keys = {name: root / f"id_{name}" for name in ("alice", "bob")}
        store = Store(root / "data" / "jit-ssh.db")
        try:
            for name, path in self.keys.items():
                add_user(store, name, keys=[generate_ssh_key(path, comment=name)], groups=[])
            add_host(store, "prod-web-3", address="127.0.0.1", labels={"env": "prod"})
        finally:
            store.dispose()
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"@cert-authority * {self.ca.public_key(CARole.HOST).to_openssh()}\n")
        self.public_key = Path(f"{self.keys['alice']}.pub").read_text().strip()
        self.log = (root / "broker.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jit_ssh.cli.main", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port()
        self.request_id = 0

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"broker listening on \S+:(\d+)", (self.root / "broker.log").read_text())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise SystemExit("the broker did not start:\n" + (self.root / "broker.log").read_text())

    @contextlib.contextmanager
    def broker_times(self, verb: str) -> Iterator[list[float]]:
        """The broker's own milliseconds for ``verb`` (from its log lines) while the block runs."""
        log = self.root / "broker.log"
        start = log.stat().st_size
        times: list[float] = []
        yield times
        time.sleep(0.2)  # the last log lines
        with log.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode(errors="replace")
        times += [float(m) for m in re.findall(rf"verb={verb} exit=0 ms=([0-9.]+)", text)]

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the broker process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    async def connect(self, user: str = "alice") -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1", self.port, username=user, client_keys=[str(self.keys[user])], agent_path=None,
            known_hosts=str(self.known_hosts), config=None, encoding=None,
        )  # fmt: skip


async def call(conn: asyncssh.SSHClientConnection, verb: str, args: dict[str, Any]) -> Any:
    result = await conn.run(verb, input=json.dumps(args).encode(), check=False)
    reply = json.loads(result.stdout or b"{}")
    if not reply.get("ok"):
        raise SystemExit(f"{verb} failed: {reply}")
    return reply["result"]


async def approved_request(site: Site) -> int:
    async with await site.connect("alice") as alice, await site.connect("bob") as bob:
        args = {"hosts": ["prod-web-3"], "login": "ubuntu", "duration": "8h", "reason": "benchmark"}
        request = await call(alice, "request", args)
        await call(bob, "approve", {"id": request["id"]})
        return int(request["id"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latencies(site: Site, verb: str, runs: int, *, persistent: bool) -> list[float]:
    """Milliseconds per round trip, after a few warm-up calls."""
    args: dict[str, Any] = {"id": site.request_id}
    if verb == "cert":
        args["public_key"] = site.public_key
    out: list[float] = []
    if persistent:
        async with await site.connect() as conn:
            for n in range(runs + 5):
                start = time.perf_counter()
                await call(conn, verb, args)
                if n >= 5:
                    out.append((time.perf_counter() - start) * 1000)
        return out
    for n in range(runs + 3):
        start = time.perf_counter()
        async with await site.connect() as conn:
            await call(conn, verb, args)
        if n >= 3:
            out.append((time.perf_counter() - start) * 1000)
    return out


def cli_latencies(site: Site, runs: int) -> list[float]:
    """``jit-ssh cert ID`` as a user types it: a new Python process, the CLI's imports, one connection."""
    home = site.root / "cli"
    env = {**os.environ, "JIT_SSH_CONFIG": str(home / "config.toml"), "XDG_CACHE_HOME": str(home / "cache")}
    for key, value in (("bastion", "127.0.0.1"), ("port", str(site.port)), ("user", "alice"),
                       ("identity", str(site.keys["alice"])), ("known_hosts", str(site.known_hosts))):  # fmt: skip
        subprocess.run([JIT_SSH, "config", "set", key, value], env=env, check=True, capture_output=True)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([JIT_SSH, "cert", str(site.request_id)], env=env, check=True, capture_output=True)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def throughput(site: Site, seconds: float, *, persistent: bool) -> float:
    """Certificates per second fetched by CLIENTS concurrent clients over ``seconds``."""
    args = {"id": site.request_id, "public_key": site.public_key}
    stop = time.perf_counter() + seconds
    counts = [0] * CLIENTS

    async def client(index: int) -> None:
        if persistent:
            async with await site.connect() as conn:
                while time.perf_counter() < stop:
                    await call(conn, "cert", args)
                    counts[index] += 1
        else:
            while time.perf_counter() < stop:
                async with await site.connect() as conn:
                    await call(conn, "cert", args)
                counts[index] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    return sum(counts) / (time.perf_counter() - start)


def rounds(run: Callable[[], Awaitable[float]], count: int) -> list[float]:
    return [asyncio.run(run()) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs; print without writing BENCHMARKS.md")
    options = parser.parse_args()
    runs, fresh_runs, cli_runs, seconds, tp_rounds = (60, 20, 3, 1.0, 1) if options.quick else (500, 150, 15, 5.0, 3)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="jit-ssh-bench-control-") as tmp:
        site = Site(Path(tmp))
        try:
            site.request_id = asyncio.run(approved_request(site))
            lat: dict[tuple[str, str], list[float]] = {}
            server_ms: dict[str, list[float]] = {}
            for verb in ("status", "cert"):
                with site.broker_times(verb) as times:
                    lat[(verb, "persistent")] = asyncio.run(latencies(site, verb, runs, persistent=True))
                server_ms[f"{verb} alone"] = times
                lat[(verb, "per call")] = asyncio.run(latencies(site, verb, fresh_runs, persistent=False))
            lat[("cert", "CLI")] = cli_latencies(site, cli_runs)
            with site.broker_times("cert") as times:
                cpu_before, wall_before = site.cpu_seconds(), time.perf_counter()
                persistent_rate = rounds(lambda: throughput(site, seconds, persistent=True), tp_rounds)
                broker_cores = (site.cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
            server_ms["cert loaded"] = times
            tput = {
                "persistent": persistent_rate,
                "per call": rounds(lambda: throughput(site, seconds, persistent=False), tp_rounds),
            }
        finally:
            site.close()
        log = (site.root / "broker.log").read_text()
    if "Traceback" in log:
        raise SystemExit("the broker logged a traceback:\n" + log[-3000:])

    rows = []
    for (verb, how), values in lat.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        rows.append((f"`{verb}`", how, f"{len(values)}", f"{p50:.1f} ms", f"{p99:.1f} ms"))
    cert_p50 = statistics.median(lat[("cert", "persistent")])
    fresh_p50 = statistics.median(lat[("cert", "per call")])
    verdict = "meets" if max(cert_p50, fresh_p50) < TARGET_P50_MS else "MISSES"
    tp_rows = [
        (how, f"{statistics.median(values):,.0f}", f"{min(values):,.0f} to {max(values):,.0f}")
        for how, values in tput.items()
    ]
    summary = (
        f"Certificate fetch over SSH on loopback: **p50 {cert_p50:.1f} ms** on a persistent connection and "
        f"**{fresh_p50:.1f} ms** with a new connection per call, which {verdict} the target of p50 < "
        f"{TARGET_P50_MS:.0f} ms; **{statistics.median(tput['persistent']):,.0f} certificates/s** with "
        f"{CLIENTS} concurrent clients on persistent connections "
        f"({statistics.median(tput['per call']):,.0f}/s with a new connection each)."
    )
    print(summary.replace("**", ""))
    for row in rows:
        print("  ", *row)
    for row in tp_rows:
        print("  ", *row)
    if options.quick:
        return
    elapsed = time.perf_counter() - started
    inside = {key: statistics.median(values) if values else float("nan") for key, values in server_ms.items()}
    write_section(
        "control",
        f"""
## Control plane

{summary}

{table(("command", "connection", "calls", "p50", "p99"), rows)}

{table((f"{CLIENTS} concurrent clients fetching certificates", "certificates/s (median)", "range of rounds"), tp_rows)}

The broker is `jit-ssh serve` in its own process with its defaults (SQLite in WAL mode under its data
directory, INFO logs to a file); the clients are asyncssh in the benchmark's process, as the CLI's
`ControlClient`, with Ed25519 user keys. "persistent": one authenticated connection, one exec channel
per command. "per call": TCP connect, key exchange, public-key authentication, one command, close, as one
`jit-ssh` command does on the wire. "CLI": `jit-ssh cert ID` end to end, including starting Python and
importing the CLI. Every `cert` signs a new certificate (a new serial, a database row and an audit event in
one transaction). Inside the broker (its own log lines: thread hand-off, database, signing) a `cert` takes
{inside["cert alone"]:.1f} ms and a `status` {inside["status alone"]:.1f} ms (medians, one client at a time); the
rest of a round trip is SSH and the client. The CLI's ~{statistics.median(lat[("cert", "CLI")]) / 1000:.1f} s is
almost all Python start-up and imports, not the round trip. With {CLIENTS} clients at once a `cert` spends
{inside["cert loaded"]:.1f} ms inside the broker (median), mostly queued behind the others' commands: one
broker is one Python process. Throughput: {CLIENTS} clients at once for {seconds:.0f} s, {tp_rounds} rounds;
during the persistent-connection rounds the broker process used {broker_cores:.2f} of a core and the
clients (in the benchmark's process) part of the other one. The machine also ran other work (see the load
average below), so take these as floors.

- Machine: {machine()}
- Measured: {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}, in {elapsed:.0f} s; 1-minute load average
  {load_before:.1f} before and {os.getloadavg()[0]:.1f} after (other work on the machine shows up here)
- Command: `{command()}`
""",
    )


if __name__ == "__main__":
    main()
