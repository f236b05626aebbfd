"""The user-facing error type, here at the bottom so the runtime core raises it too (`export.errors`
re-exports it with the CLI's exit codes). Standard library only: the device bundle ships it."""

from __future__ import annotations

from pathlib import Path


class ToolkitError(Exception):
    """A problem with the user's input (a file, an option, a folder): printed as one line, exit 2.

    Anything else that escapes is a bug in the toolkit and keeps its traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = message  # without the path, for lists that already name the file
        super().__init__(f"{self.path}: {message}" if self.path else message)


class RunnerError(ToolkitError):
    """The runtime core's bad input (a corrupted bundle, a missing runtime or file): one line, exit 2."""


def one_line(exc: BaseException) -> str:
    """Collapse a third-party exception message to its first meaningful line."""
    text = str(exc).strip() or type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    return first if len(first) <= 200 else first[:197] + "..."
