"""Tables people read: rich on a terminal, Markdown elsewhere (CI logs, `| tee`, files), never truncated.

rich renders at the terminal's width and, when stdout is not a terminal, at 80 columns, cutting headers and values
("evoluti…"). A `Table` is plain data: `show` renders it with rich only on a terminal wide enough for it, else as a
Markdown table, which reports reuse as well.
"""
from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    caption: str = ""

    def add_row(self, *cells: Any) -> None:
        self.rows.append(tuple(cells))

    def markdown_lines(self) -> list[str]:
        """The table as Markdown lines (no title or caption)."""
        cells = [[str(c).replace("|", "\\|") for c in row] for row in self.rows]
        return ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns),
                *("| " + " | ".join(row) + " |" for row in cells)]

    def markdown(self) -> str:
        head = [f"**{self.title}**", ""] if self.title else []
        tail = ["", self.caption] if self.caption else []
        return "\n".join([*head, *self.markdown_lines(), *tail])

    def width(self) -> int:
        """Characters a boxed rendering needs: the widest cell of each column plus borders and padding."""
        widths = [max([len(str(c)), *(len(str(r[i])) for r in self.rows)]) for i, c in enumerate(self.columns)]
        return sum(widths) + 3 * len(widths) + 1

    def rich(self) -> Any:
        from rich.table import Table as RichTable

        table = RichTable(title=self.title or None, caption=self.caption or None)
        for c in self.columns:
            table.add_column(str(c), justify="right", no_wrap=True)
        for row in self.rows:
            table.add_row(*(str(c) for c in row))
        return table


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def show(table: Table, stream: TextIO | None = None) -> None:
    """Print `table`: boxed by rich on a terminal that fits it, else Markdown (full width, nothing cut)."""
    stream = stream or sys.stdout
    if is_terminal(stream) and table.width() <= shutil.get_terminal_size().columns:
        from rich.console import Console

        Console(file=stream, highlight=False).print(table.rich())
    else:
        print(table.markdown(), file=stream, flush=True)
        print(file=stream)


def say(message: str, stream: TextIO | None = None) -> None:
    """One line of progress for people (stdout)."""
    print(message, file=stream or sys.stdout, flush=True)


class Steps:
    """Progress through a known number of named steps: a rich bar on a terminal, one line per step elsewhere."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.done, self.stream = total, 0, stream or sys.stdout
        self._bar: Any = None

    def __enter__(self) -> Steps:
        if is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<44}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                 console=Console(file=self.stream))
            self._bar.__enter__()
            self._task = self._bar.add_task("start", total=self.total)
        return self

    def __call__(self, step: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=step)
        else:
            print(f"[{self.done + 1}/{self.total}] {step}", file=self.stream, flush=True)
        self.done = min(self.done + 1, self.total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total, description="done")
            self._bar.__exit__(*exc)
