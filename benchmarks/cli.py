"""`python -m benchmarks <command>`: one small function per subcommand, registered in COMMANDS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from benchmarks import commands as cmd
from edge_runtime.formats import EXPECTED
from export.artifacts import write_json
from export.cli import run_guarded
from export.errors import EXIT_USAGE, one_line


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error: ...` line (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, how it adds its arguments, and what it runs (returns exit code)."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _configure_macs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help=f"model to count ({EXPECTED})")
    parser.add_argument("--layers", action="store_true", help="also print one row per layer")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the counts as JSON")


def _run_macs(args: argparse.Namespace) -> int:
    from export.counting import compare_with_paper, render_table
    from export.inspect_onnx import count_file

    report = count_file(args.file)
    console = Console(width=None if sys.stdout.isatty() else 120)  # pipes and logs get the full table
    if args.layers:
        console.print(render_table(report, layers=True))
    console.print(render_table(report))
    if args.json:
        paper = [asdict(row) for row in compare_with_paper(report)]
        write_json(args.json, {**report.to_dict(), "paper_table1": paper})
        console.print(f"wrote {args.json}")
    return 0


COMMANDS: dict[str, Command] = {
    "macs": Command("count parameters and multiply-adds per Table 1 row", _configure_macs, _run_macs),
    "run": Command("benchmark artifacts: size, MACs, memory, latency, accuracy", cmd.configure_run, cmd.run_run),
    "gate": Command("pass/fail a report against thresholds (exit 1 on failure)", cmd.configure_gate, cmd.run_gate),
    "compare": Command("what got better or worse between two reports", cmd.configure_compare, cmd.run_compare),
    "plot": Command("latency vs accuracy PNG of a report", cmd.configure_plot, cmd.run_plot),
    "bundle": Command("a self-contained tarball to benchmark on a device", cmd.configure_bundle, cmd.run_bundle),
    "merge": Command("merge host and device reports into one", cmd.configure_merge, cmd.run_merge),
    "emulate": Command(
        "run a bundle on emulated aarch64 CPUs (QEMU): int8 accuracy as ARM kernels compute it",
        cmd.configure_emulate,
        cmd.run_emulate,
    ),
    "schema": Command("print the report's JSON Schema", cmd.configure_schema, cmd.run_schema),
}


def _prog() -> str:
    """The name the user typed: `python -m benchmarks`, or the `googlenet-bench` console script."""
    return "googlenet-bench" if Path(sys.argv[0]).name == "googlenet-bench" else "python -m benchmarks"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog(), description="Measure exported GoogLeNet models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        command.configure(subparsers.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: COMMANDS[args.command].run(args))
