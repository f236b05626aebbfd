"""`python -m export FORMAT [options]`: a thin argparse layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export import __version__
from export.errors import EXIT_USAGE, ToolkitError
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from export import commands  # heavy imports only once the arguments are known to be valid

    try:
        return getattr(commands, f"run_{args.format}")(args)
    except ToolkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
