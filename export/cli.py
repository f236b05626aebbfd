"""`python -m export FORMAT [options]`: a thin argparse layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

from edge_runtime.formats import BY_NAME, FORMATS
from export import __version__
from export.errors import (
    DISK_FULL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    Terminated,
    ToolkitError,
    one_line,
    signals_received,
)
from export.formats import OPTIONS


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2 (argparse's default prints the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m export", description="Export GoogLeNet for edge devices.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True, parser_class=OneLineParser)
    for row in FORMATS:
        fmt_parser = sub.add_parser(row.name, help=row.description, description=row.description)
        for key in row.options:
            option = OPTIONS[key]
            fmt_parser.add_argument(*option.flags, **option.kwargs)
        if row.quantize:
            fmt_parser.add_argument("--quantize", choices=row.quantize, help="also write a quantized model")
    return parser


def _on_signal(signum: int, frame: object) -> None:
    signals_received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM (what a CI runner sends on cancel) raises like Ctrl-C, so staging folders are removed."""
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted() -> int:
    if signals_received and signals_received[0] == signal.SIGTERM:
        sys.stderr.write("error: terminated (SIGTERM)\n")
        return EXIT_SIGTERM
    sys.stderr.write("error: interrupted (SIGINT)\n")
    return EXIT_SIGINT


def run_guarded(run: Callable[[], int]) -> int:
    """Run a command: the user's errors, a full disk and interrupts as one line and an exit code.

    A signal raised inside a callback that a native library calls (TensorFlow's converter pulling
    calibration data) can come back as that library's own exception, or be swallowed by it: the signal
    still decides (and `publish` refuses to move files into place once one arrived).
    """
    signals_received.clear()
    try:
        try:
            with interruptible():
                code = run()
            return _interrupted() if signals_received else code
        except KeyboardInterrupt:
            return _interrupted()
        except ToolkitError as exc:
            if signals_received:
                return _interrupted()
            sys.stderr.write("error: {}\n".format(" ".join(str(exc).split())))
            return EXIT_USAGE
        except Exception as exc:
            if signals_received:
                return _interrupted()
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                where = f"{exc.filename}: " if exc.filename else ""
                sys.stderr.write(f"error: {where}no space left on device ({one_line(exc)})\n")
                return EXIT_USAGE
            raise
    finally:
        signals_received.clear()  # an API call later in this process is not interrupted


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        return BY_NAME[args.format].run_command(args)  # heavy imports only once the arguments are valid

    return run_guarded(run)
