"""The command line: ``snftune <command> ...``. Each command is one module with
``add_parser(subparsers)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import NoReturn

from ..errors import BAD_INPUT, SnftuneError
from ..suggest import did_you_mean
from . import analyze, bench, data, demo, params, plot, predict, pretrain, search, train
from . import eval as eval_command

COMMANDS = [demo, params, train, eval_command, predict, bench, search, plot, pretrain, data, analyze]


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors that name the (sub)command, suggest the nearest option or
    choice for a near miss (difflib; argparse's own ``suggest_on_error`` needs Python 3.14), and
    point to that command's ``--help`` instead of printing the top-level usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # A subcommand's parser is called through parse_known_args: refusing unknown options here
        # reports them against the subcommand that was given them, not the top-level parser.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._nearest_option(extras)}")
        return namespace, extras

    def _nearest_option(self, extras: list[str]) -> str:
        typed = next((word.split("=", 1)[0] for word in extras if word.startswith("--")), None)
        if typed is None:
            return ""
        return did_you_mean(typed, [flag for action in self._actions for flag in action.option_strings])

    def _check_value(self, action: argparse.Action, value) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError:
            hint = did_you_mean(str(value), [str(choice) for choice in action.choices or ()])
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="snftune", description="Parameter-efficient tuning of vision backbones")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"snftune: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        return args.run(args) or 0
    except SnftuneError as error:
        # Raised on purpose, not a bug: one line saying what is wrong and what to do, no traceback;
        # bad input exits 2, a run that started and could not finish exits 1.
        outcome = "error" if error.exit_code == BAD_INPUT else "failed"
        print(f"snftune {args.command}: {outcome}: {error}", file=sys.stderr)
        return error.exit_code
    except FileNotFoundError as error:  # a path given on the command line: the library's own words
        print(f"snftune {args.command}: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except OSError as error:  # a full disk, a folder that cannot be written: the system's own words
        if os.environ.get("SNFTUNE_TRACEBACK"):
            raise
        print(f"snftune {args.command}: failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
