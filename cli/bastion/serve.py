"""``jit-ssh serve``: the broker in the foreground, logging one record a line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime

from jit_ssh.broker.config import BrokerConfig
from jit_ssh.broker.server import Broker
from jit_ssh.ca import passphrase_from_env

from ..output import printable
from .admin_cmds import ConfigOption

__all__ = ["serve"]


class _TextFormatter(logging.Formatter):
    """``time level logger message``, one physical line a record, whatever the message holds.

    Exec commands, user names and reasons reach the log, in our lines and in asyncssh's own INFO lines
    (``Command: ...``): a newline in one would forge a line, an escape sequence would act on the
    terminal of whoever reads the log. :func:`~jit_ssh.cli.output.printable` escapes them, and a traceback's line
    breaks too, so that a line of the log always starts a record.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback, if any); json.dumps
    escapes every control character, so a logged value cannot break the line either."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def serve(config: ConfigOption = None) -> None:
    """Run the broker (control plane and recording proxy) until SIGTERM."""
    cfg = BrokerConfig.load(BrokerConfig.locate(config))
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    logging.basicConfig(level=cfg.log_level, handlers=[handler])
    broker = Broker(cfg, passphrase=passphrase_from_env())
    asyncio.run(broker.serve_forever())
