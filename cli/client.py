"""The control-plane client: asyncssh to the broker, JSON in and out.

The bastion is verified by its host certificate (``known_hosts`` with the host CA's
``@cert-authority`` line): never trust on first use.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

import asyncssh
from jit_ssh.ca import AccessDenied, JitSshError

from .settings import Settings

__all__ = ["ControlClient", "RemoteError", "call", "run_async"]

T = TypeVar("T")


class RemoteError(JitSshError):
    """An error the broker reported; keeps the broker's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ControlClient:
    """One connection to the broker, for one or more commands."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: asyncssh.SSHClientConnection | None = None

    async def __aenter__(self) -> ControlClient:
        settings = self.settings
        host = settings.require_bastion()
        if not settings.known_hosts.exists():
            raise JitSshError(
                f"no {settings.known_hosts}: save the output of 'jit-ssh ca known-hosts' (run on the bastion) there"
            )
        options: dict[str, Any] = {}
        if settings.identity is not None:
            options["client_keys"] = [str(settings.identity)]
            options["agent_path"] = None
        try:
            self._conn = await asyncssh.connect(
                host,
                settings.port,
                username=settings.user,
                known_hosts=str(settings.known_hosts),
                config=None,
                encoding=None,
                connect_timeout=15,
                **options,
            )
        except asyncssh.PermissionDenied as exc:
            raise AccessDenied(
                f"the broker at {host}:{settings.port} refused user {settings.user!r} with this key (not enrolled?)"
            ) from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            raise JitSshError(
                f"{host}:{settings.port} did not present a host certificate from the trusted host CA in "
                f"{settings.known_hosts}: refusing to connect"
            ) from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise JitSshError(f"cannot reach the broker at {host}:{settings.port}: {exc}") from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()

    async def call(self, verb: str, args: Mapping[str, Any] | None = None) -> Any:
        if self._conn is None:
            raise RuntimeError("ControlClient used outside 'async with'")
        try:
            result = await self._conn.run(verb, input=json.dumps(dict(args or {})).encode(), check=False)
        except (OSError, asyncssh.Error) as exc:
            raise JitSshError(f"the broker connection failed during {verb}: {exc}") from exc
        raw = result.stdout if isinstance(result.stdout, bytes) else b""
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JitSshError(f"the broker sent an unreadable reply to {verb} (exit {result.exit_status})") from exc
        if not isinstance(reply, dict) or "ok" not in reply:
            raise JitSshError(f"the broker sent an unexpected reply to {verb}")
        if not reply["ok"]:
            error = reply.get("error") or {}
            raise RemoteError(str(error.get("message", "unknown error")), int(error.get("exit_code", 1)))
        return reply.get("result")

    async def stream(self, verb: str, args: Mapping[str, Any]) -> AsyncIterator[bytes]:
        """Lines of a streaming command (export, watch); an error reply raises RemoteError."""
        if self._conn is None:
            raise RuntimeError("ControlClient used outside 'async with'")
        try:
            process = await self._conn.create_process(verb, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise JitSshError(f"the broker connection failed during {verb}: {exc}") from exc
        process.stdin.write(json.dumps(dict(args)).encode())
        process.stdin.write_eof()
        first = True
        try:
            while True:
                line = await process.stdout.readline()
                if not line:
                    break
                if first and line.startswith(b'{"ok": false'):
                    error = json.loads(line).get("error") or {}
                    raise RemoteError(str(error.get("message", "unknown error")), int(error.get("exit_code", 1)))
                first = False
                yield line
            status = await process.wait()
            if status.exit_status:
                # The stream stopped on an error (an unreadable recording): what came is incomplete.
                text = (await process.stderr.read()).decode("utf-8", "replace").strip()
                try:
                    error = json.loads(text.splitlines()[0]).get("error") or {}
                except (IndexError, ValueError, AttributeError):
                    error = {}
                message = str(error.get("message") or f"{verb} stopped with exit status {status.exit_status}")
                raise RemoteError(message, int(error.get("exit_code", 1)))
        except (OSError, asyncssh.Error) as exc:
            raise JitSshError(f"the broker connection failed during {verb}: {exc}") from exc
        finally:
            process.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def call(settings: Settings, verb: str, args: Mapping[str, Any] | None = None) -> Any:
    """One command on a fresh connection."""

    async def once() -> Any:
        async with ControlClient(settings) as client:
            return await client.call(verb, args)

    return run_async(once())
