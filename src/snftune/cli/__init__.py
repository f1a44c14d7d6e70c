"""The command line: ``snftune <command> ...``. Each command is one module with
``add_parser(subparsers)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import sys

from . import params

COMMANDS = [params]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snftune", description="Parameter-efficient tuning of vision backbones")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
