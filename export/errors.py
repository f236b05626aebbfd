"""The one exception type that reaches the user as a one-line message and exit code 2."""

from __future__ import annotations

import errno
from pathlib import Path

EXIT_USAGE = 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal number, as a shell reports them
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ToolkitError(Exception):
    """A problem with the user's input (a file, an option, a folder): printed as one line, exit 2.

    Anything else that escapes is a bug in the toolkit and keeps its traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = message  # without the path, for lists that already name the file
        super().__init__(f"{self.path}: {message}" if self.path else message)


def one_line(exc: BaseException) -> str:
    """Collapse a third-party exception message to its first meaningful line."""
    text = str(exc).strip() or type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    return first if len(first) <= 200 else first[:197] + "..."


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner's cancel), raised like Ctrl-C so every `finally` and clean-up still runs."""


def write_error(exc: OSError, path: str | Path) -> ToolkitError:
    """An OSError met while writing `path` as the user's one-line error (a full disk said plainly)."""
    path = Path(path)
    if exc.errno in DISK_FULL:
        return ToolkitError(f"no space left on device writing {path.name}", path.parent)
    return ToolkitError(f"cannot write {path.name} ({one_line(exc)})", path.parent)
