"""`python -m export FORMAT [options]`: a thin argparse layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

from export import __version__
from export.errors import DISK_FULL, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, Terminated, ToolkitError, one_line
from export.formats import OPTIONS, export_formats


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2 (argparse's default prints the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m export", description="Export GoogLeNet for edge devices.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True, parser_class=OneLineParser)
    for fmt in export_formats().values():
        fmt_parser = sub.add_parser(fmt.name, help=fmt.description, description=fmt.description)
        for key in fmt.options:
            option = OPTIONS[key]
            fmt_parser.add_argument(*option.flags, **option.kwargs)
        if fmt.quantize:
            fmt_parser.add_argument("--quantize", choices=fmt.quantize, help="also write a quantized model")
    return parser


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM (what a CI runner sends on cancel) raises like Ctrl-C, so staging folders are removed."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_guarded(run: Callable[[], int]) -> int:
    """Run a command: the user's errors, a full disk and interrupts as one line and an exit code."""
    try:
        with interruptible():
            return run()
    except ToolkitError as exc:
        sys.stderr.write("error: {}\n".format(" ".join(str(exc).split())))
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"error: {where}no space left on device ({one_line(exc)})\n")
        return EXIT_USAGE
    except Terminated:
        sys.stderr.write("error: terminated (SIGTERM)\n")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted (SIGINT)\n")
        return EXIT_SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from export import commands  # heavy imports only once the arguments are known to be valid

        return getattr(commands, f"run_{args.format}")(args)

    return run_guarded(run)
