"""``snftune params``: tuned-parameter counts for methods x backbones, without weights."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "params",
        help="tuned-parameter table for methods x backbones (meta device, no weights needed)",
        description="Counts the parameters each method tunes (classifier head excluded) on the paper's "
        "backbones or on any timm models, building them on the meta device.",
    )
    parser.add_argument("--methods", nargs="+", help="method or preset names (default: the paper's methods)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="TIMM_NAME",
        help="timm model names (default: the paper's ViT-B/16, ViT-L/16, Swin-B, ResNet-50, ResNet-101)",
    )
    parser.add_argument(
        "--noah-subnets",
        nargs="+",
        metavar="YAML",
        default=[],
        help="NOAH subnet files (experiments/NOAH/subnet/VTAB/*.yaml, or a search's subnet.yaml): a row each",
    )
    parser.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones.factory import require_known_model
    from ..bench.params import PAPER_BACKBONES, PAPER_METHODS, format_table, noah_subnet_table, parameter_table

    for name in args.models or ():
        require_known_model(name)
    methods = PAPER_METHODS if args.methods is None else tuple(args.methods)
    backbones = PAPER_BACKBONES if args.models is None else {name: name for name in args.models}
    rows = parameter_table(methods, backbones) + noah_subnet_table(args.noah_subnets, backbones)
    print(format_table(rows, args.format), end="")
    return 0
