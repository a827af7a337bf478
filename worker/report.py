"""Readable tables for people: Items and their histories (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from worker.store import HistoryEntry, Item


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
