"""Human renderings of requests and grants (the JSON form is the broker's reply as it is).

Every value is the requester's or an approver's text: shown through :func:`~.output.plain`, never as markup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from .output import console, plain

__all__ = ["print_request", "print_requests", "when"]


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _state(request: dict[str, Any]) -> Text:
    state = str(request["state"])
    colour = {"approved": "green", "pending": "yellow"}.get(state, "red")
    extra = " (break-glass)" if request.get("break_glass") else ""
    return Text.assemble(plain(state, style=colour), extra)


def print_requests(requests: list[dict[str, Any]], *, title: str) -> None:
    if not requests:
        console.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for column in ("id", "state", "requester", "target", "for", "approvals", "reason", "expires"):
        table.add_column(column)
    for r in requests:
        table.add_row(
            plain(r["id"]),
            _state(r),
            plain(r["requester"]),
            plain(", ".join(r["principals"])),
            plain(r["duration"]),
            f"{len(r['approvals'])}/{r['approvals_required']}",
            plain(r["reason"], limit=60),
            when(r.get("expires_at")),
        )
    console.print(table)


def print_request(r: dict[str, Any]) -> None:
    console.print(Text.assemble("Request ", plain(r["id"], style="bold"), ": ", _state(r)))
    rows = [
        ("requester", r["requester"]),
        ("target", ", ".join(r["principals"])),
        ("duration", r["duration"]),
        ("reason", r["reason"]),
        ("ticket", r.get("ticket") or "-"),
        ("rules", ", ".join(r["rules"])),
        (
            "approvals",
            f"{len(r['approvals'])} of {r['approvals_required']} from {', '.join(r['approver_groups']) or '-'}",
        ),
        ("extensions", ", ".join(r["extensions"])),
        ("created", when(r["created_at"])),
        ("window", f"{when(r.get('starts_at'))} to {when(r.get('expires_at'))}"),
    ]
    for approval in r["approvals"]:
        note = f": {approval['comment']}" if approval.get("comment") else ""
        rows.append(("approved by", f"{approval['approver']} at {when(approval['at'])}{note}"))
    if r.get("decided_by") and r["state"] not in ("pending", "approved"):
        rows.append((r["state"] + " by", f"{r['decided_by']}: {r.get('decision_note') or ''}"))
    for name, value in rows:
        console.print(plain(f"  {name:<11} {value}"))
