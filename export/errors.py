"""The one exception type that reaches the user as a one-line message and exit code 2 (defined in
`edge_runtime.errors`, which the runtime core raises too), and the exit codes of interrupts."""

from __future__ import annotations

import errno
from pathlib import Path

from edge_runtime.errors import ToolkitError, one_line

__all__ = [
    "DISK_FULL",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "Terminated",
    "ToolkitError",
    "one_line",
    "raise_if_signalled",
    "signals_received",
    "write_error",
]

EXIT_USAGE = 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal number, as a shell reports them
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner's cancel), raised like Ctrl-C so every `finally` and clean-up still runs."""


# Signals the command's handler saw (`export.cli.interruptible`). A library may catch the exception the handler
# raised and carry on (torch's ONNX exporter falls back to another capture strategy on a C++-wrapped error):
# the signal is still on record here, and nothing is published once it is.
signals_received: list[int] = []


def raise_if_signalled() -> None:
    """Raise the interrupt again if a signal arrived and something swallowed its exception."""
    import signal

    if signals_received:
        raise Terminated() if signals_received[0] == signal.SIGTERM else KeyboardInterrupt()


def write_error(exc: OSError, path: str | Path) -> ToolkitError:
    """An OSError met while writing `path` as the user's one-line error (a full disk said plainly)."""
    path = Path(path)
    if exc.errno in DISK_FULL:
        return ToolkitError(f"no space left on device writing {path.name}", path.parent)
    return ToolkitError(f"cannot write {path.name} ({one_line(exc)})", path.parent)


def check_schema(data: object, schema: dict, kind: str, source: str | Path | None = None) -> object:
    """`data` unchanged when it fits the JSON `schema`; otherwise one ToolkitError: `not <kind>: <where>: <problem>`."""
    import jsonschema

    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ToolkitError(f"not {kind}: {where}: {exc.message[:160]}", source) from None
    return data
