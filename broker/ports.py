"""What one client connection needs from the broker, as interfaces.

A connection's modules (session.py for the session face, control_channel.py for the control face)
depend on these protocols rather than on :class:`~jit_ssh.broker.server.Broker`, which implements
them: server.py imports the connection's modules and none of them imports it back, not even for types.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncssh
from jit_ssh.ca import Certificate, PublicKey
from jit_ssh.ca.grant import Grant

from .config import BrokerConfig
from .proxy import ProxySession
from .recording.store import RecordingStore, StoredRecording

__all__ = ["ControlBroker", "SessionBroker", "Slots"]


class Slots(Protocol):
    """What one user may hold at once, and the broker's background tasks."""

    def take_slot(self, kind: str, user: str) -> bool: ...

    def give_slot(self, kind: str, user: str) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class ControlBroker(Slots, Protocol):
    """What a control channel (one exec'd control command) needs from the broker."""

    def command_place(self, user: str) -> AbstractAsyncContextManager[None]: ...

    async def run_control(self, user: str, command: str, raw: bytes) -> tuple[dict[str, Any], int]: ...

    def current_krl(self) -> bytes: ...

    async def open_stream(
        self, user: str, verb: str, args: Mapping[str, Any]
    ) -> tuple[StoredRecording, Callable[[], bool]]: ...


class SessionBroker(Slots, Protocol):
    """What a client connection needs from the broker: authentication, the grant, onward connections,
    the live-session registry, the recordings and the audit of refusals."""

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def auth_pool(self) -> Executor: ...

    @property
    def user_ca_key(self) -> PublicKey: ...

    async def authenticate(self, username: str, key: PublicKey, peer: str) -> str | None: ...

    def session_grant(self, username: str, cert: Certificate, peer: str, audit: bool) -> Grant: ...

    def recheck_grant(self, grant: Grant) -> None: ...

    async def connect_onward(self, grant: Grant, session_id: str) -> tuple[asyncssh.SSHClientConnection, int]: ...

    def control_session(
        self, user: str, on_closed: Callable[[], None] | None = None
    ) -> asyncssh.SSHServerSession[bytes]: ...

    def register(self, request_id: int, proxy: ProxySession) -> None: ...

    def unregister(self, request_id: int, proxy: ProxySession) -> None: ...

    @property
    def recordings(self) -> RecordingStore: ...

    def session_started(
        self, proxy: ProxySession, grant: Grant, cert: Certificate, recording: str, onward_serial: int | None, peer: str
    ) -> None: ...

    def session_onward(self, session_id: str, serial: int) -> None: ...

    def session_ended(self, session_id: str, summary: dict[str, Any], size: int, digest: str) -> None: ...

    def index_later(self, session_id: str, user: str) -> None: ...

    def audit_refusal(
        self, action: str, subject: str, details: Mapping[str, Any], source: str | None = None, actor: str = "jit-ssh"
    ) -> None: ...
