"""Terminal output: progress bars on stderr for long work, tables on stdout for results."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

T = TypeVar("T")


def _console(stderr: bool = False) -> Console:
    """Wide enough for the report tables when writing to a log or a pipe (rich assumes 80 columns)."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=max(probe.width, 160))


console = _console()
err_console = _console(stderr=True)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr (a plain final line when stderr is not a terminal)."""
    bar = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
    if not err_console.is_terminal:
        done = bar.tasks[0].completed if bar.tasks else 0
        err_console.print(f"{description}: {int(done)}{f'/{total}' if total else ''} done", highlight=False)


def step(message: str) -> None:
    """A one-line status message for a stage that has no countable steps."""
    err_console.print(f"[dim]•[/dim] {message}", highlight=False)


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    result = Table(title=title, title_justify="left")
    cells = [[str(v) for v in row] for row in rows]
    # the first column names the row (an artifact, a layer): never cut, the figures wrap instead
    first = max([len(columns[0]), *(len(row[0]) for row in cells)]) if columns else 0
    for index, column in enumerate(columns):
        if index == 0:
            result.add_column(column, justify="left", no_wrap=True, min_width=first)
        else:
            result.add_column(column, justify="right")
    for row in cells:
        result.add_row(*row)
    return result


def show(renderable: object) -> None:
    console.print(renderable)
