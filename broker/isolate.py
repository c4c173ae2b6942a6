"""Expensive work on user data, in a process of its own with a CPU-time and memory budget (invariant 6).

Indexing a recording feeds a terminal emulator whatever a session printed; a hostile session can make
that arbitrarily slow (``ESC # 8`` fills a 1000x500 screen per three bytes). Run in the broker's threads,
such work held the GIL and filled the thread pool that authentication, control commands and enforcement
waited on. Here each job runs in a child process forked from a small preloaded server (multiprocessing's
``forkserver``: a fork costs milliseconds, and shares nothing with the broker's event loop, threads or
sockets), at a lower priority, with limits the kernel enforces:

* CPU time (``RLIMIT_CPU``): at the soft limit the child gets SIGXCPU, which raises :class:`BudgetExceeded`
  in it so that the job can keep what it has; a few seconds later the hard limit kills it;
* memory (``RLIMIT_AS``): an allocation over it raises ``MemoryError`` in the child;
* wall-clock time: a child still running after ``wall_seconds`` is killed by the parent.

The broker waits for a child on its event loop (the child's sentinel), never in a thread pool, so a job
can neither block nor starve anything else; shutting down kills the children instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import os
import resource
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from jit_ssh.ca import JitSshError

__all__ = ["Budget", "BudgetExceeded", "IsolatedJobError", "Isolator"]

_GRACE = 5  # CPU seconds between the soft limit (keep what you have) and the hard one (killed)
_PRELOAD = ["jit_ssh.broker.recording.index", "jit_ssh.broker.recording.typed_commands"]


class BudgetExceeded(BaseException):
    """Raised in a job's process when its CPU-time budget is spent.

    A BaseException, as KeyboardInterrupt is: code that guards against hostile input with ``except
    Exception`` (the terminal emulator's handlers) must not swallow the budget's end.
    """


class IsolatedJobError(JitSshError):
    """A job's process failed, was killed or gave no result."""


@dataclass(frozen=True, slots=True)
class Budget:
    cpu_seconds: int = 120
    memory_bytes: int = 1024 * 1024 * 1024
    wall_seconds: float = 600.0


def _over_budget(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)  # once: let the job write what it has
    raise BudgetExceeded("CPU time")


def _child(target: str, payload: dict[str, Any], result: str, budget: Budget) -> None:
    """In the child process: limits, then the job; its JSON result goes to the file ``result``."""
    with contextlib.suppress(OSError):
        os.nice(10)
    resource.setrlimit(resource.RLIMIT_CPU, (budget.cpu_seconds, budget.cpu_seconds + _GRACE))
    resource.setrlimit(resource.RLIMIT_AS, (budget.memory_bytes, budget.memory_bytes))
    signal.signal(signal.SIGXCPU, _over_budget)
    module, _, name = target.partition(":")
    job: Callable[[dict[str, Any]], dict[str, Any]] = getattr(importlib.import_module(module), name)
    output = job(payload)
    temporary = Path(result + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(output, handle)
    temporary.replace(result)


class Isolator:
    """Runs jobs (``"module:function"``, JSON in, JSON out) in budgeted child processes, ``workers`` at once."""

    def __init__(self, workdir: Path, budget: Budget, *, workers: int = 1) -> None:
        self.workdir = workdir
        self.budget = budget
        self._slots = asyncio.Semaphore(workers)
        self._running: set[BaseProcess] = set()
        self._context: Any = None

    def _process(self, target: str, payload: dict[str, Any], result: Path) -> BaseProcess:
        if self._context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            self._context = context
        process: BaseProcess = self._context.Process(
            target=_child, args=(target, payload, str(result), self.budget), name="jit-ssh-job", daemon=True
        )
        process.start()
        return process

    async def run(self, target: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one job and return its result; IsolatedJobError if its process failed or was killed."""
        async with self._slots:
            self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, name = tempfile.mkstemp(prefix="job-", suffix=".json", dir=self.workdir)
            os.close(fd)
            result = Path(name)
            try:
                return await self._run(target, payload, result)
            finally:
                result.unlink(missing_ok=True)
                result.with_name(result.name + ".tmp").unlink(missing_ok=True)

    async def _run(self, target: str, payload: dict[str, Any], result: Path) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        process = await asyncio.to_thread(self._process, target, payload, result)
        self._running.add(process)
        exited: asyncio.Future[None] = loop.create_future()
        sentinel = process.sentinel

        def ended() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(sentinel, ended)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.budget.wall_seconds)
            except TimeoutError:
                process.kill()
                await exited
                raise IsolatedJobError(f"the job ran over {self.budget.wall_seconds:.0f} s and was stopped") from None
        finally:
            loop.remove_reader(sentinel)
            self._running.discard(process)
            process.join(5)
            code = process.exitcode
            with contextlib.suppress(ValueError):
                process.close()
        if code != 0:
            why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
            if code in (-signal.SIGKILL, -signal.SIGXCPU):
                why += " (over its CPU-time budget)"
            raise IsolatedJobError(f"the job's process ended with {why}")
        try:
            output = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IsolatedJobError(f"the job gave no result: {exc}") from exc
        if not isinstance(output, dict):
            raise IsolatedJobError("the job gave a result that is not an object")
        return output

    def kill_all(self) -> None:
        """Stop every running job at once (shutdown must not wait for them)."""
        for process in list(self._running):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                process.kill()
