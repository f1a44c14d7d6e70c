"""The command line: ``snftune <command> ...``. Each command is one module with
``add_parser(subparsers)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import sys

from ..runs import RunFailedError
from . import bench, demo, params, plot, predict, pretrain, train
from . import eval as eval_command
from .common import USER_ERRORS

COMMANDS = [demo, params, train, eval_command, predict, bench, plot, pretrain]


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
    except USER_ERRORS as error:
        # Bad input, not a bug: one line saying what is wrong and what to do, no traceback.
        print(f"snftune {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RunFailedError as error:
        print(f"snftune {args.command}: failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
