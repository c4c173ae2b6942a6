"""Shared helpers of the benchmarks: timing, the machine description and BENCHMARKS.md.

Each benchmark script owns one section of BENCHMARKS.md, between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``, and rewrites only that section, so that benchmarks can run (and be re-run)
one at a time without losing the figures of the others.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
_HEADER = """# jit-ssh benchmarks

Written by `bench/run` (every benchmark) or `.venv/bin/python bench/bench_NAME.py` (one of them); each
section below belongs to one script, which rewrites only its own section. Figures are medians of
several rounds on the machine named in each section; compare them only with figures from the same
machine.
"""


def pin_to_one_core() -> str:
    """Run this process (and its children) on one CPU, so "per core" figures mean one core."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def rate(run: Callable[[int], None], *, rounds: int, seconds: float) -> tuple[float, list[float]]:
    """Median operations per second of ``run(n)`` over ``rounds`` rounds of about ``seconds`` each.

    A first short call warms caches and sizes ``n`` so that a round takes about ``seconds``.
    """
    n = 1
    while True:
        start = time.perf_counter()
        run(n)
        elapsed = time.perf_counter() - start
        if elapsed >= 0.05 or n >= 1 << 20:
            break
        n *= 4
    n = max(1, round(n * seconds / elapsed))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        run(n)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def openssh_version() -> str:
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().split(",")[0]


def machine() -> str:
    """One Markdown line naming the machine and the versions the figures depend on."""
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, {openssh_version()}, "
        f"cryptography {_version('cryptography')}, asyncssh {_version('asyncssh')}"
    )


def command() -> str:
    """The command that produced the figures: ``bench/run`` when run through it, else this script."""
    outer = os.environ.get("JIT_SSH_BENCH_COMMAND")
    if outer:
        return outer
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join([".venv/bin/python", shown, *sys.argv[1:]])


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``body``; leave the rest alone."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = REPORT.read_text() if REPORT.exists() else _HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = REPORT.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(REPORT)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
