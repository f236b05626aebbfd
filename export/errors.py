"""The one exception type that reaches the user as a one-line message and exit code 2."""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2


class ToolkitError(Exception):
    """A problem with the user's input (a file, an option, a folder): printed as one line, exit 2.

    Anything else that escapes is a bug in the toolkit and keeps its traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def one_line(exc: BaseException) -> str:
    """Collapse a third-party exception message to its first meaningful line."""
    text = str(exc).strip() or type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    return first if len(first) <= 200 else first[:197] + "..."
