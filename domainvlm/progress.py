"""Progress bars with ETA and status lines, shown by the main process only."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    """What long work tells the user; silent when `enabled` is False (non-main processes)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    @contextlib.contextmanager
    def task(self, description: str, total: int,
             completed: int = 0) -> Iterator[Callable[..., None]]:
        """A bar with ETA; yields `advance(n=1, **fields)` (fields such as loss show beside)."""
        if not self.enabled:
            yield lambda n=1, **fields: None
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, completed=completed,
                                        status="")

            def advance(n: int = 1, **fields: Any) -> None:
                status = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in fields.items())
                progress.update(task_id, advance=n, status=status)

            yield advance

    def parameters(self, report: Any) -> None:
        if not self.enabled:
            return
        table = Table(title="parameters", show_edge=False)
        for column in ("component", "trainable", "total", "%"):
            table.add_column(column, justify="right" if column != "component" else "left")
        for name, (trainable, total) in sorted(report.rows.items()):
            table.add_row(name, f"{trainable:,}", f"{total:,}",
                          f"{100 * trainable / total:.2f}" if total else "-")
        table.add_row("all", f"{report.trainable:,}", f"{report.total:,}",
                      f"{100 * report.trainable / report.total:.2f}")
        self.console.print(table)
