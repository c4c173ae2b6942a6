"""Webhook notifications against a real HTTP receiver on 127.0.0.1: shape, retries, isolation, config."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from jit_ssh.broker.notify import EVENTS, Notifier, Webhook, message_body, message_text
from jit_ssh.ca.errors import ConfigError

WHERE = "broker.toml [[webhook]] #1"
PAYLOAD: dict[str, object] = {
    "request_id": 42,
    "requester": "alice",
    "hosts": ["prod-web-3"],
    "login": "ubuntu",
    "duration": "30m",
    "reason": "disk full",
    "ticket": "INC-4121",
}


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, object]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class _Server(ThreadingHTTPServer):
    # Joined in server_close(), so that no handler thread (or its socket) outlives the test.
    daemon_threads = False


class Receiver:
    """A real webhook endpoint: records every POST, answers ``status`` after ``fail_first`` answers
    of ``fail_status``, or, with ``hang``, answers nothing until ``release`` is set."""

    def __init__(self, *, status: int = 200, fail_first: int = 0, fail_status: int = 500, hang: bool = False):
        self.status, self.fail_first, self.fail_status, self.hang = status, fail_first, fail_status, hang
        self.release = threading.Event()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    count = len(receiver.received)
                if receiver.hang:
                    receiver.release.wait(60)
                    return  # close without an answer
                status = receiver.fail_status if count <= receiver.fail_first else receiver.status
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"{receiver.url}/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class names it
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="webhook-receiver"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def bodies(self) -> list[dict[str, object]]:
        with self._lock:
            return [r.json for r in self.received]

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(**kwargs: object) -> Receiver:
        rx = Receiver(**kwargs)  # type: ignore[arg-type]
        started.append(rx)
        return rx

    yield start
    for rx in started:
        rx.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens: the port was free a moment ago and is closed now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def until(predicate: Callable[[], bool], what: str) -> None:
    # A safety net against a hung test, not a timing assertion.
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def deliver(hooks: list[Webhook], events: list[tuple[str, dict[str, object]]], **kwargs: object) -> Notifier:
    """Start a notifier, notify ``events``, and stop once everything is delivered or given up."""

    async def main() -> Notifier:
        notifier = Notifier(hooks, backoff_base=0.01, backoff_max=0.05, **kwargs)  # type: ignore[arg-type]
        await notifier.start()
        for event, payload in events:
            notifier.notify(event, payload)
        await notifier.stop(drain_timeout=30)
        return notifier

    return asyncio.run(main())


# --- the message --------------------------------------------------------------------------------------


def test_posts_slack_compatible_json(receiver: Callable[..., Receiver]) -> None:
    rx = receiver()
    hook = Webhook(f"{rx.url}/services/T0/B0/x", headers={"Authorization": "Bearer token-1"})
    notifier = deliver([hook], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed, notifier.dropped) == (1, 0, 0)
    [request] = rx.received
    assert request.path == "/services/T0/B0/x"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer token-1"
    assert request.json == {
        "text": ":lock: alice requests ubuntu@prod-web-3 for 30m: INC-4121 disk full (request 42)",
        "event": "request.created",
        "jit_ssh": PAYLOAD,
    }


@pytest.mark.parametrize(
    ("event", "extra", "text"),
    [
        (
            "request.approved",
            {"actor": "bob", "comment": "ok"},
            ":white_check_mark: bob approved alice's access to ubuntu@prod-web-3 for 30m (request 42): ok",
        ),
        (
            "request.denied",
            {"actor": "bob", "why": "use the runbook"},
            ":no_entry: bob denied alice's access to ubuntu@prod-web-3 for 30m (request 42): use the runbook",
        ),
        (
            "request.revoked",
            {"actor": "carol"},
            ":x: carol revoked alice's access to ubuntu@prod-web-3 for 30m (request 42)",
        ),
        (
            "request.cancelled",
            {"actor": "alice"},
            ":wastebasket: alice cancelled their request for ubuntu@prod-web-3 for 30m (request 42)",
        ),
        (
            "breakglass.used",
            {},
            ":rotating_light: BREAK-GLASS: alice took ubuntu@prod-web-3 for 30m without approval: "
            "INC-4121 disk full (request 42); review required",
        ),
    ],
)
def test_text_of_each_event(event: str, extra: dict[str, object], text: str) -> None:
    assert message_text(event, {**PAYLOAD, **extra}) == text


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"requester": None, "hosts": None, "request_id": None},
        {"hosts": "prod-web-3", "login": "ubuntu"},
        {"hosts": [f"web-{i}" for i in range(5)], "request_id": "7"},
        {"hosts": 3, "requester": ["not", "a", "name"], "duration": 1800, "reason": {"nested": True}},
    ],
)
def test_text_is_built_from_whatever_is_present(event: str, payload: dict[str, object]) -> None:
    text = message_text(event, payload)
    assert text.startswith(":")
    assert "\n" not in text
    assert "None" not in text
    json.loads(message_body(event, payload))


def test_text_lists_at_most_three_hosts() -> None:
    text = message_text("request.created", {"hosts": [f"web-{i}" for i in range(5)], "login": "ubuntu"})
    assert "ubuntu@web-0, ubuntu@web-1, ubuntu@web-2, +2 more" in text


def test_text_cannot_inject_slack_markup_or_lines() -> None:
    reason = "<!channel> see <https://evil.example|the runbook> & \u202eeno\nsecond line\r\tthird " + "x" * 500
    text = message_text("request.created", {**PAYLOAD, "reason": reason})
    assert "<" not in text
    assert ">" not in text
    assert "&lt;!channel&gt;" in text
    assert "&amp;" in text
    assert not any(c in text for c in "\n\r\t\u202e")
    assert len(text) < 400
    # The structured payload still carries the original, for machines that escape it themselves.
    assert json.loads(message_body("request.created", {**PAYLOAD, "reason": reason}))["jit_ssh"]["reason"] == reason


# --- retries --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retries_5xx_and_429_then_delivers(receiver: Callable[..., Receiver], status: int) -> None:
    rx = receiver(fail_first=2, fail_status=status)
    notifier = deliver([Webhook(rx.url, max_attempts=5)], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed) == (1, 0)
    assert rx.count() == 3
    assert len({r.body for r in rx.received}) == 1


def test_gives_up_after_max_attempts(receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    rx = receiver(fail_first=100)
    with caplog.at_level(logging.WARNING, logger="jit_ssh.broker.notify"):
        notifier = deliver([Webhook(rx.url, max_attempts=3)], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed) == (0, 1)
    assert rx.count() == 3
    assert "not delivered after 3 attempt(s): HTTP 500" in caplog.text


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_no_retry_on_other_4xx(receiver: Callable[..., Receiver], status: int) -> None:
    rx = receiver(status=status)
    notifier = deliver([Webhook(rx.url, max_attempts=5)], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed) == (0, 1)
    assert rx.count() == 1


def test_redirect_is_not_followed(receiver: Callable[..., Receiver]) -> None:
    rx = receiver(status=302)
    notifier = deliver([Webhook(f"{rx.url}/hook", max_attempts=5)], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed) == (0, 1)
    assert [r.path for r in rx.received] == ["/hook"]


def test_dead_url_is_retried_then_given_up() -> None:
    notifier = deliver([Webhook(closed_port_url(), max_attempts=3)], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed) == (0, 1)


def test_hanging_receiver_times_out(receiver: Callable[..., Receiver]) -> None:
    rx = receiver(hang=True)
    notifier = deliver([Webhook(rx.url, timeout=0.2, max_attempts=2)], [("request.created", PAYLOAD)])
    assert (notifier.delivered, notifier.failed) == (0, 1)
    assert rx.count() == 2


# --- isolation: the caller and other webhooks never wait ------------------------------------------------


def test_dead_and_hanging_webhooks_do_not_delay_a_healthy_one(receiver: Callable[..., Receiver]) -> None:
    hanging_rx, healthy_rx = receiver(hang=True), receiver()
    dead = Webhook(closed_port_url(), max_attempts=3)
    hanging = Webhook(hanging_rx.url, timeout=60, max_attempts=1)
    healthy = Webhook(healthy_rx.url)

    async def main() -> None:
        notifier = Notifier([dead, hanging, healthy], backoff_base=0.01)
        await notifier.start()
        for i in range(3):
            assert notifier.notify("request.created", {**PAYLOAD, "request_id": i}) is None  # type: ignore[func-returns-value]
        # notify() has returned without any delivery having run: everything waits in the queues.
        assert notifier.queued == 9
        assert (notifier.delivered, notifier.failed) == (0, 0)
        await until(lambda: healthy_rx.count() == 3, "the healthy webhook")
        await until(lambda: notifier.failed == 3, "the dead webhook to give up")
        # The hanging endpoint still holds its first message and has answered nothing.
        assert notifier.delivered == 3
        assert hanging_rx.count() == 1
        hanging_rx.release.set()
        await notifier.stop(drain_timeout=30)
        assert (notifier.delivered, notifier.failed, notifier.dropped) == (3, 6, 0)

    asyncio.run(main())
    assert [body["jit_ssh"]["request_id"] for body in healthy_rx.bodies] == [0, 1, 2]  # type: ignore[index]


def test_stop_cancels_what_it_cannot_deliver(
    receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    rx = receiver(hang=True)

    async def main() -> Notifier:
        notifier = Notifier([Webhook(rx.url, timeout=60)], backoff_base=0.01)
        await notifier.start()
        for i in range(3):
            notifier.notify("request.created", {**PAYLOAD, "request_id": i})
        await until(lambda: rx.count() == 1, "the first delivery to start")
        await notifier.stop(drain_timeout=0)
        notifier.notify("request.created", PAYLOAD)  # after stop: logged and dropped, not raised
        return notifier

    with caplog.at_level(logging.WARNING, logger="jit_ssh.broker.notify"):
        notifier = asyncio.run(main())
    assert (notifier.delivered, notifier.failed, notifier.dropped) == (0, 0, 3)
    assert "the notifier is stopped" in caplog.text


def test_full_queue_drops_the_oldest(receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    rx = receiver()

    async def main() -> Notifier:
        notifier = Notifier([Webhook(rx.url)], backoff_base=0.01, queue_size=2)
        for i in range(5):  # queued before start, so the queue fills
            notifier.notify("request.created", {**PAYLOAD, "request_id": i})
        assert (notifier.queued, notifier.dropped) == (2, 3)
        await notifier.start()
        await notifier.stop(drain_timeout=30)
        return notifier

    with caplog.at_level(logging.WARNING, logger="jit_ssh.broker.notify"):
        notifier = asyncio.run(main())
    assert notifier.delivered == 2
    assert [body["jit_ssh"]["request_id"] for body in rx.bodies] == [3, 4]  # type: ignore[index]
    assert "queue full (2); dropped the oldest notification" in caplog.text


def test_events_are_filtered_per_webhook(receiver: Callable[..., Receiver]) -> None:
    created_rx, alerts_rx, all_rx = receiver(), receiver(), receiver()
    hooks = [
        Webhook(created_rx.url, events=frozenset({"request.created"})),
        Webhook(alerts_rx.url, events=frozenset({"breakglass.used", "request.revoked"})),
        Webhook(all_rx.url),
    ]
    events = ["request.created", "request.approved", "breakglass.used", "request.denied", "request.revoked"]
    notifier = deliver(hooks, [(event, PAYLOAD) for event in events])
    assert [b["event"] for b in created_rx.bodies] == ["request.created"]
    assert [b["event"] for b in alerts_rx.bodies] == ["breakglass.used", "request.revoked"]
    assert [b["event"] for b in all_rx.bodies] == events
    assert notifier.delivered == 8


def test_unknown_event_and_bad_payload_are_logged_not_raised(
    receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    rx = receiver()
    circular: dict[str, object] = {}
    circular["self"] = circular
    with caplog.at_level(logging.ERROR, logger="jit_ssh.broker.notify"):
        notifier = deliver([Webhook(rx.url)], [("request.exploded", PAYLOAD), ("request.created", circular)])
    assert rx.count() == 0
    assert notifier.delivered == 0
    assert "unknown event 'request.exploded'" in caplog.text
    assert "could not be queued" in caplog.text


def test_secrets_are_never_logged(receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    rx = receiver(fail_first=100)
    hook = Webhook(
        f"{rx.url}/services/T0/B0/PATH-SECRET?token=QUERY-SECRET",
        headers={"Authorization": "Bearer HEADER-SECRET"},
        max_attempts=2,
    )
    with caplog.at_level(logging.DEBUG, logger="jit_ssh.broker.notify"):
        deliver([hook], [("request.created", PAYLOAD)])
    assert "webhook 1 (http://127.0.0.1:" in caplog.text
    for secret in ("PATH-SECRET", "QUERY-SECRET", "HEADER-SECRET"):
        assert secret not in caplog.text
        assert secret not in repr(hook)


# --- configuration --------------------------------------------------------------------------------------


def test_from_config_reads_a_webhook_table() -> None:
    table: dict[str, object] = {
        "url": "https://hooks.slack.com/services/T0/B0/x",
        "events": ["request.created", "breakglass.used"],
        "timeout": 2,
        "max_attempts": 3,
        "headers": {"Authorization": "Bearer t"},
    }
    hook = Webhook.from_config(table, where=WHERE)
    assert hook == Webhook(
        "https://hooks.slack.com/services/T0/B0/x",
        events=frozenset({"request.created", "breakglass.used"}),
        timeout=2.0,
        max_attempts=3,
        headers={"Authorization": "Bearer t"},
    )
    assert Webhook.from_config({"url": "http://127.0.0.1:9/x"}, where=WHERE) == Webhook("http://127.0.0.1:9/x")
    assert Webhook("http://example.com/").events == EVENTS


OK_URL = "https://example.com/hook"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({}, "'url'"),
        ({"url": 42}, "'url'"),
        ({"url": "ftp://example.com/x"}, "'url'"),
        ({"url": "file:///etc/passwd"}, "'url'"),
        ({"url": "https://"}, "'url'"),
        ({"url": "example.com/hook"}, "'url'"),
        ({"url": "https://user:pw@example.com/"}, "'url'"),
        ({"url": "https://example.com/a b"}, "'url'"),
        ({"url": "https://example.com:99999/"}, "'url'"),
        ({"url": "https://bücher.example/"}, "'url'"),
        ({"url": OK_URL, "events": [["request.created"]]}, "'events'"),
        ({"url": OK_URL, "events": ["request.exploded"]}, "'events'"),
        ({"url": OK_URL, "events": "request.created"}, "'events'"),
        ({"url": OK_URL, "events": []}, "'events'"),
        ({"url": OK_URL, "evnets": ["request.created"]}, "'evnets'"),
        ({"url": OK_URL, "timeout": 0}, "'timeout'"),
        ({"url": OK_URL, "timeout": True}, "'timeout'"),
        ({"url": OK_URL, "timeout": "5"}, "'timeout'"),
        ({"url": OK_URL, "max_attempts": 0}, "'max_attempts'"),
        ({"url": OK_URL, "max_attempts": 1.5}, "'max_attempts'"),
        ({"url": OK_URL, "headers": "Authorization: x"}, "'headers'"),
        ({"url": OK_URL, "headers": {"Bad Name": "x"}}, "'headers'"),
        ({"url": OK_URL, "headers": {"Content-Type": "text/plain"}}, "'headers'"),
        ({"url": OK_URL, "headers": {"X-Token": 5}}, "'headers'"),
    ],
)
def test_from_config_refuses_bad_tables(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Webhook.from_config(table, where=WHERE)
    assert info.value.message.startswith(f"{WHERE}: ")
    assert key in info.value.message


def test_url_errors_do_not_echo_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        Webhook.from_config({"url": "ftp://user:PASSWORD@example.com/PATH"}, where=WHERE)
    assert "PASSWORD" not in info.value.message
    assert "PATH" not in info.value.message
    assert "'example.com'" in info.value.message


@pytest.mark.parametrize("value", ["Bearer SECRET\r\nX-Injected: 1", "SECRET\n", "SECRET\x00"])
def test_header_values_with_line_breaks_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Webhook.from_config({"url": OK_URL, "headers": {"Authorization": value}}, where=WHERE)
    assert "'headers'" in info.value.message
    assert "SECRET" not in info.value.message
    with pytest.raises(ConfigError):
        Webhook(OK_URL, headers={"Authorization": value})


def test_constructor_validates_and_freezes() -> None:
    headers = {"Authorization": "Bearer a"}
    hook = Webhook(OK_URL, headers=headers)
    headers["Authorization"] = "Bearer changed"
    assert hook.headers == {"Authorization": "Bearer a"}
    with pytest.raises(TypeError):
        hook.headers["X"] = "y"  # type: ignore[index]
    with pytest.raises(ConfigError, match="'url'"):
        Webhook("javascript:alert(1)")
    with pytest.raises(ConfigError, match="'events'"):
        Webhook(OK_URL, events=frozenset({"request.created", "nope"}))
    with pytest.raises(ConfigError, match="'timeout'"):
        Webhook(OK_URL, timeout=-1)


@pytest.mark.parametrize("kwargs", [{"queue_size": 0}, {"backoff_base": 0}, {"backoff_base": 2.0, "backoff_max": 1.0}])
def test_notifier_refuses_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="notifier"):
        Notifier([Webhook(OK_URL)], **kwargs)  # type: ignore[arg-type]


def test_idle_notifier_stops_cleanly(receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    rx = receiver()

    async def main() -> Notifier:
        async with Notifier([Webhook(rx.url)]) as notifier:
            pass
        return notifier

    with caplog.at_level(logging.DEBUG, logger="jit_ssh.broker.notify"):
        notifier = asyncio.run(main())
    assert (notifier.delivered, notifier.failed, notifier.dropped, notifier.queued) == (0, 0, 0, 0)
    assert caplog.records == []
    with pytest.raises(RuntimeError):
        asyncio.run(notifier.start())
