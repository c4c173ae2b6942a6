"""Webhook notifications: Slack-compatible JSON on request events, delivered in the background.

The workflow calls :meth:`Notifier.notify`, which only queues; a worker per webhook posts with the
standard library, retrying connection errors, timeouts, HTTP 429 and 5xx with exponential backoff and
jitter. A notification never blocks or fails the workflow, and one slow or dead webhook never delays
another: each has its own queue, worker and thread. Webhook URLs (a Slack incoming-webhook URL is a
secret in its path) and header values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.client
import json
import logging
import random
import re
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Self

from jit_ssh.ca.errors import ConfigError

__all__ = ["EVENTS", "Notifier", "Webhook", "message_body", "message_text"]

_log = logging.getLogger("jit_ssh.broker.notify")

EVENTS = frozenset(
    {
        "request.created",
        "request.approved",
        "request.denied",
        "request.revoked",
        "request.cancelled",
        "breakglass.used",
        "session.flagged",
    }
)

_MAX_URL = 2048
_MAX_ATTEMPTS = 20
_MAX_TIMEOUT = 300.0
_MAX_HEADERS = 32
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Visible ASCII, space and tab: what every HTTP stack sends unchanged, and no CR/LF to split headers.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,4096}")
# Headers the notifier owns; letting the config set them would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})
_CONFIG_KEYS = frozenset({"url", "events", "timeout", "max_attempts", "headers"})
_USER_AGENT = "jit-ssh-webhook/1"
_MAX_FIELD = 200
_MAX_HOSTS_SHOWN = 3


def _shown(value: object) -> str:
    text = str(value)
    return repr(text[:64] + ("..." if len(text) > 64 else ""))


def _check_url(url: object) -> str:
    expected = "expected an http:// or https:// URL with a host"
    if not isinstance(url, str):
        raise ConfigError(f"'url': {expected}, found {type(url).__name__}")
    if len(url) > _MAX_URL or not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"'url': {expected}, of at most {_MAX_URL} printable ASCII characters (%-encoded)")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"'url': {expected}, found one that does not parse ({exc})") from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        # Show the scheme and host only: the rest of a webhook URL (or its user info) may be a secret.
        raise ConfigError(
            f"'url': {expected}, found scheme {_shown(parts.scheme)} and host {_shown(parts.hostname or '')}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"'url': {expected} and no user:password@ (use an Authorization header)")
    return url


def _check_events(events: object) -> frozenset[str]:
    if isinstance(events, str | bytes) or not isinstance(events, Iterable):
        raise ConfigError(f"'events': expected a list of event names, found {type(events).__name__}")
    names = list(events)
    for name in names:
        if not isinstance(name, str) or name not in EVENTS:
            raise ConfigError(f"'events': expected names among {', '.join(sorted(EVENTS))}, found {_shown(name)}")
    if not names:
        raise ConfigError("'events': expected at least one event name, found an empty list")
    return frozenset(names)


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= _MAX_TIMEOUT:
        raise ConfigError(f"'timeout': expected seconds in (0, {_MAX_TIMEOUT:g}], found {_shown(timeout)}")
    return float(timeout)


def _check_attempts(max_attempts: object) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise ConfigError(f"'max_attempts': expected a whole number, found {_shown(max_attempts)}")
    if not 1 <= max_attempts <= _MAX_ATTEMPTS:
        raise ConfigError(f"'max_attempts': expected 1 to {_MAX_ATTEMPTS}, found {max_attempts}")
    return max_attempts


def _check_headers(headers: object) -> Mapping[str, str]:
    if not isinstance(headers, Mapping):
        raise ConfigError(f"'headers': expected a table of names to values, found {type(headers).__name__}")
    if len(headers) > _MAX_HEADERS:
        raise ConfigError(f"'headers': expected at most {_MAX_HEADERS} headers, found {len(headers)}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"'headers': expected header names such as 'Authorization', found {_shown(name)}")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"'headers': expected no {name} header (the notifier sets it), found one")
        # Never echo a value: it is typically a token.
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise ConfigError(
                f"'headers': expected {name} to be a string of printable ASCII without CR, LF or "
                "control characters (value not shown)"
            )
        checked[name] = value
    return MappingProxyType(checked)


def _redacted(url: str) -> str:
    """The scheme and host of a URL, safe to log: the path and query may be the secret."""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{port}/..."


@dataclass(frozen=True, slots=True, repr=False)
class Webhook:
    """One webhook endpoint and the events it receives; validated on construction.

    ``url`` must be ``http://`` or ``https://`` with a host and no user info; ``events`` a non-empty
    subset of :data:`EVENTS`; ``timeout`` in seconds for one attempt; ``max_attempts`` counts the first
    try; ``headers`` (for example ``Authorization``) must be printable ASCII, never CR or LF. Invalid
    values raise :class:`~jit_ssh.ca.errors.ConfigError`. ``repr`` shows neither the URL path nor header
    values.
    """

    url: str
    events: frozenset[str] = EVENTS
    timeout: float = 5.0
    max_attempts: int = 5
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Normalise in place (frozen, so through object.__setattr__) so that an invalid Webhook cannot
        # exist and a caller's dict cannot change it later.
        object.__setattr__(self, "url", _check_url(self.url))
        object.__setattr__(self, "events", _check_events(self.events))
        object.__setattr__(self, "timeout", _check_timeout(self.timeout))
        object.__setattr__(self, "max_attempts", _check_attempts(self.max_attempts))
        object.__setattr__(self, "headers", _check_headers(self.headers))

    def __repr__(self) -> str:
        return (
            f"Webhook(url={_redacted(self.url)!r}, events={sorted(self.events)!r}, timeout={self.timeout!r}, "
            f"max_attempts={self.max_attempts!r}, headers=<{len(self.headers)} not shown>)"
        )

    @classmethod
    def from_config(cls, table: Mapping[str, object], *, where: str) -> Webhook:
        """A webhook from a ``[[webhook]]`` table of broker.toml; ``where`` names it in errors.

        Keys: ``url`` (required), ``events`` (list), ``timeout``, ``max_attempts``, ``headers`` (table).
        Unknown keys are refused, so a misspelt option cannot be silently ignored.
        """
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table with a 'url' key, found {type(table).__name__}")
        unknown = sorted(str(key) for key in table if key not in _CONFIG_KEYS)
        if unknown:
            expected = ", ".join(sorted(_CONFIG_KEYS))
            raise ConfigError(f"{where}: unknown key {_shown(unknown[0])}; expected keys among {expected}")
        if "url" not in table:
            raise ConfigError(f"{where}: expected a 'url' key, found none")
        try:
            return cls(
                url=_check_url(table["url"]),
                events=_check_events(table.get("events", EVENTS)),
                timeout=_check_timeout(table.get("timeout", 5.0)),
                max_attempts=_check_attempts(table.get("max_attempts", 5)),
                headers=_check_headers(table.get("headers", {})),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from exc


# --- the message --------------------------------------------------------------------------------------


def _clean(value: object, limit: int = _MAX_FIELD) -> str:
    """One safe line of at most ``limit`` characters, escaped for Slack's mrkdwn.

    Control and format characters (newlines, bidi overrides) become spaces so that a reason cannot
    forge a second line or reorder text; ``& < >`` are escaped so that it cannot write ``<!channel>``
    or a disguised link.
    """
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(value))
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _get(payload: Mapping[str, object], *keys: str) -> str:
    for key in keys:
        value = payload.get(key)
        if value is not None and value != "":
            return _clean(value)
    return ""


def _targets(payload: Mapping[str, object]) -> str:
    hosts = payload.get("hosts")
    if hosts is None or hosts == "":
        names: list[object] = []
    elif isinstance(hosts, str | bytes) or not isinstance(hosts, Iterable):
        names = [hosts]
    else:
        names = list(hosts)
    login = _get(payload, "login")
    shown = [f"{login}@{_clean(host, 100)}" if login else _clean(host, 100) for host in names[:_MAX_HOSTS_SHOWN]]
    if len(names) > _MAX_HOSTS_SHOWN:
        shown.append(f"+{len(names) - _MAX_HOSTS_SHOWN} more")
    if shown:
        return ", ".join(shown)
    return f"login {login}" if login else "access"


def message_text(event: str, payload: Mapping[str, object]) -> str:
    """The one human line of a notification, built from whatever keys ``payload`` has.

    For example ``:lock: alice requests ubuntu@prod-web-3 for 30m: INC-4121 disk full (request 42)``.
    """
    requester = _get(payload, "requester") or "someone"
    actor = _get(payload, "actor") or "someone"
    what = _targets(payload)
    duration = _get(payload, "duration")
    span = f"{what} for {duration}" if duration else what
    request_id = _get(payload, "request_id")
    ref = f" (request {request_id})" if request_id else ""
    why = " ".join(part for part in (_get(payload, "ticket"), _get(payload, "reason")) if part)
    said = _get(payload, "comment", "why")
    said = f": {said}" if said else ""
    if event == "request.created":
        return f":lock: {requester} requests {span}{': ' + why if why else ''}{ref}"
    if event == "breakglass.used":
        return (
            f":rotating_light: BREAK-GLASS: {requester} took {span} without approval"
            f"{': ' + why if why else ''}{ref}; review required"
        )
    if event == "session.flagged":
        flags = payload.get("flags")
        shown = ", ".join(_clean(f, 100) for f in flags[:5]) if isinstance(flags, list) else _get(payload, "flags")
        session = _get(payload, "session")
        return f":mag: {_get(payload, 'user') or 'someone'}'s session {session} on {what} needs review: {shown}{ref}"
    if event == "request.cancelled":
        whose = "their" if actor in {"someone", requester} else f"{requester}'s"
        who = requester if actor == "someone" else actor
        return f":wastebasket: {who} cancelled {whose} request for {span}{ref}{said}"
    icons = {
        "request.approved": (":white_check_mark:", "approved"),
        "request.denied": (":no_entry:", "denied"),
        "request.revoked": (":x:", "revoked"),
    }
    icon, verb = icons.get(event, (":information_source:", _clean(event, 64)))
    return f"{icon} {actor} {verb} {requester}'s access to {span}{ref}{said}"


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def message_body(event: str, payload: Mapping[str, object]) -> bytes:
    """The JSON body posted for one event: ``{"text": ..., "event": ..., "jit_ssh": payload}``."""
    document = {"text": message_text(event, payload), "event": event, "jit_ssh": dict(payload)}
    return json.dumps(document, default=_json_default, allow_nan=False).encode()


# --- delivery -----------------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a GET without the body, and a redirect could point a
    # webhook anywhere: a 3xx is reported as a failure to fix in the config instead.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    error: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or 500 <= self.status < 600


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


def _post(hook: Webhook, body: bytes) -> _Attempt:
    """One POST, run in a thread; every failure comes back as an :class:`_Attempt`, never raised."""
    headers = {"User-Agent": _USER_AGENT, **hook.headers, "Content-Type": "application/json"}
    request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=hook.timeout) as response:
            response.read(65536)
            return _Attempt(status=response.status)
    except urllib.error.HTTPError as exc:
        try:
            detail = exc.read(200).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            detail = ""
        finally:
            exc.close()
        return _Attempt(
            status=exc.code,
            error=_clean(detail, 200),
            retry_after=_retry_after(exc.headers.get("Retry-After")),
        )
    except urllib.error.URLError as exc:
        return _Attempt(status=None, error=_clean(exc.reason, 200))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _Attempt(status=None, error=_clean(f"{type(exc).__name__}: {exc}", 200))


@dataclass(frozen=True, slots=True)
class _Message:
    event: str
    body: bytes


class Notifier:
    """Delivers notifications to webhooks in the background, one queue and worker per webhook.

    Call :meth:`notify` from the event loop's thread; it never blocks and never raises. Each queue
    holds at most ``queue_size`` messages and drops the oldest when full. Retries wait
    ``backoff_base * 2**n`` seconds, capped at ``backoff_max`` (or the server's ``Retry-After`` if
    longer, under the same cap), jittered down by up to half. Counters: ``delivered`` and ``failed``
    per webhook and message, ``dropped`` for messages lost to a full queue or to :meth:`stop`.
    """

    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        queue_size: int = 1000,
    ) -> None:
        if not all(isinstance(hook, Webhook) for hook in hooks):
            raise ConfigError("notifier: expected Webhook objects, found something else")
        if not 0 < backoff_base <= backoff_max:
            raise ConfigError(
                f"notifier: expected 0 < backoff_base <= backoff_max, found {backoff_base} and {backoff_max}"
            )
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f"notifier: expected a queue_size of at least 1, found {_shown(queue_size)}")
        self._hooks = tuple(hooks)
        self._labels = tuple(f"webhook {i} ({_redacted(hook.url)})" for i, hook in enumerate(self._hooks, 1))
        self._backoff_base = float(backoff_base)
        self._backoff_max = float(backoff_max)
        self._queues = tuple(asyncio.Queue[_Message](maxsize=queue_size) for _ in self._hooks)
        self._workers: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._state = "new"
        self._in_flight = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def hooks(self) -> tuple[Webhook, ...]:
        return self._hooks

    @property
    def queued(self) -> int:
        """Messages waiting in the queues, not counting the ones being delivered."""
        return sum(queue.qsize() for queue in self._queues)

    async def start(self) -> None:
        """Start one delivery task per webhook on the running loop; messages queued before start go out."""
        if self._state != "new":
            raise RuntimeError(f"Notifier.start: expected a new notifier, found one that is {self._state}")
        self._state = "running"
        if not self._hooks:
            return
        # A dedicated pool, one thread per webhook: a hanging endpoint holds its own thread only, never
        # one of the default executor's that the rest of the broker shares.
        self._executor = ThreadPoolExecutor(max_workers=len(self._hooks), thread_name_prefix="jit-ssh-notify")
        self._workers = [
            asyncio.create_task(self._work(index), name=f"jit-ssh notify {label}")
            for index, label in enumerate(self._labels)
        ]

    async def stop(self, *, drain_timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``drain_timeout`` seconds, then cancel the rest."""
        running = self._state == "running"
        self._state = "stopped"
        if running and (self.queued or self._in_flight):
            try:
                async with asyncio.timeout(max(0.0, drain_timeout)):
                    await asyncio.gather(*(queue.join() for queue in self._queues))
            except TimeoutError:
                _log.warning(
                    "notifications: drain timed out after %gs with %d queued and %d in flight; cancelling",
                    drain_timeout,
                    self.queued,
                    self._in_flight,
                )
        if self._workers:
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()
                self.dropped += 1
        if self._executor is not None:
            # Do not wait: a thread stuck on a dead endpoint ends at its own timeout.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def notify(self, event: str, payload: Mapping[str, object]) -> None:
        """Queue ``event`` for every webhook that wants it; returns at once and never raises.

        The payload is serialised now, so later changes to it are not sent. An unknown event name
        is a programming error: it is logged and dropped.
        """
        try:
            self._enqueue(event, payload)
        except Exception:  # noqa: BLE001 - logged with its traceback; the workflow must not fail here
            _log.exception("notification %s dropped: it could not be queued", _shown(event))

    def _enqueue(self, event: str, payload: Mapping[str, object]) -> None:
        if event not in EVENTS:
            _log.error("notification dropped: unknown event %s (expected one of %s)", _shown(event), sorted(EVENTS))
            return
        if self._state == "stopped":
            _log.warning("notification %s dropped: the notifier is stopped", event)
            return
        targets = [i for i, hook in enumerate(self._hooks) if event in hook.events]
        if not targets:
            return
        message = _Message(event, message_body(event, payload))
        for index in targets:
            queue = self._queues[index]
            if queue.full():
                oldest = queue.get_nowait()
                queue.task_done()
                self.dropped += 1
                _log.warning(
                    "%s: queue full (%d); dropped the oldest notification (%s); %d dropped in all",
                    self._labels[index],
                    queue.maxsize,
                    oldest.event,
                    self.dropped,
                )
            queue.put_nowait(message)

    async def _work(self, index: int) -> None:
        queue = self._queues[index]
        while True:
            message = await queue.get()
            self._in_flight += 1
            try:
                await self._deliver(index, message)
            except asyncio.CancelledError:
                self.dropped += 1
                raise
            except Exception:  # noqa: BLE001 - logged with its traceback; the worker must live on
                self.failed += 1
                _log.exception("%s: %s not delivered: unexpected error", self._labels[index], message.event)
            finally:
                self._in_flight -= 1
                queue.task_done()

    async def _deliver(self, index: int, message: _Message) -> None:
        hook, label = self._hooks[index], self._labels[index]
        loop = asyncio.get_running_loop()
        for attempt in range(1, hook.max_attempts + 1):
            result = await loop.run_in_executor(self._executor, _post, hook, message.body)
            if result.ok:
                self.delivered += 1
                _log.debug("%s: %s delivered (attempt %d)", label, message.event, attempt)
                return
            outcome = f"HTTP {result.status}" if result.status is not None else "no answer"
            if result.error:
                outcome += f": {result.error}"
            if not result.retryable or attempt == hook.max_attempts:
                self.failed += 1
                _log.warning("%s: %s not delivered after %d attempt(s): %s", label, message.event, attempt, outcome)
                return
            delay = self._delay(attempt, result.retry_after)
            _log.info(
                "%s: %s attempt %d failed (%s); retrying in %.2fs",
                label,
                message.event,
                attempt,
                outcome,
                delay,
            )
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        # Jitter spreads the retries of several brokers that saw the same outage; not security-relevant.
        delay *= random.uniform(0.5, 1.0)  # noqa: S311
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_max))
        return delay
