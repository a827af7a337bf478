"""Readable tables for people: Items and their histories (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from worker.items.model import HistoryEntry, Item


def history_table(history: Sequence[HistoryEntry]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("at", "from", "to", "trigger", "cause", "detail"):
        table.add_column(col)
    for h in history:
        detail = ", ".join(f"{k}={v}" for k, v in h.detail.items() if v is not None)
        table.add_row(
            h.at.strftime("%H:%M:%S.%f")[:-3], h.from_state or "-", h.to_state, h.trigger, h.cause, detail
        )
    return table


def print_item(item: Item, history: Sequence[HistoryEntry], console: Console | None = None) -> None:
    console = console or Console()
    error = f"  error: {item.error_code} ({item.error_message})" if item.error_code else ""
    console.print(f"[bold]{item.id}[/bold]  {item.state.value}  user={item.client_user_id}{error}")
    if item.state.value == "login_required" and item.resume_state:
        console.print(
            f"  waiting for the user to repair the bank login; returns to {item.resume_state.value}"
        )
    if item.consent_expires_at:
        console.print(f"  consent expires {item.consent_expires_at:%Y-%m-%d %H:%M} UTC (PENDING_EXPIRATION)")
    if item.disconnect_at:
        why = item.disconnect_reason or "PENDING_DISCONNECT"
        console.print(f"  Plaid disconnects it {item.disconnect_at:%Y-%m-%d %H:%M} UTC ({why})")
    console.print(history_table(history))


def items_table(rows: Sequence[tuple[str, Item]]) -> Table:
    table = Table(title="Items", show_lines=False)
    for col in ("case", "item id", "state", "error_code", "account", "funding source"):
        table.add_column(col)
    for label, item in rows:
        table.add_row(
            label,
            str(item.id),
            item.state.value,
            item.error_code or "",
            item.account_id or "",
            item.atomic_funding_source_id or "",
        )
    return table


def expiring_table(items: Sequence[Item], days: int) -> Table:
    table = Table(title=f"Items expiring or disconnecting within {days} days")
    for col in ("item id", "state", "user", "consent expires", "disconnect at", "reason"):
        table.add_column(col)
    for item in items:
        table.add_row(
            str(item.id),
            item.state.value,
            item.client_user_id,
            f"{item.consent_expires_at:%Y-%m-%d %H:%M}" if item.consent_expires_at else "",
            f"{item.disconnect_at:%Y-%m-%d %H:%M}" if item.disconnect_at else "",
            item.disconnect_reason or "",
        )
    return table
