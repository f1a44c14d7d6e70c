"""``snftune pretrain``: pretrain an embedded backbone on the generated upstream set (CPU,
seeded) and write its weights with a JSON record (recipe, time, upstream accuracy, sha256)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..inputs import EPOCHS, THREADS, Rule
from ..suggest import did_you_mean
from .common import CLIError, ranged


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain an embedded backbone on the generated upstream set",
        description="Trains an embedded backbone (its recipe is in snftune.pretraining) on the generated "
        "upstream distribution, whose classes are disjoint from every downstream task, with the training engine "
        "(method 'full'). Writes <name>.safetensors and <name>.json (recipe, time taken, upstream top-1, sha256) "
        "to --out. The shipped weights were made with the defaults; the demo never pretrains.",
        epilog="example: snftune pretrain --model snftune-vit-tiny --out my-weights --threads 1; then use them "
        "with --model snftune-vit-tiny --pretrained my-weights/snftune-vit-tiny.safetensors",
    )
    parser.add_argument("--model", default="snftune-vit-tiny", help="embedded backbone (default: snftune-vit-tiny)")
    parser.add_argument("--out", default=".", help="folder for the weights and JSON (default: the working directory)")
    parser.add_argument("--run-dir", help="engine run folder (log.jsonl, metrics.json; default: a temporary one)")
    parser.add_argument("--epochs", type=ranged(EPOCHS), help="override the recipe's epochs")
    parser.add_argument(
        "--samples",
        type=ranged(Rule(int, 1, 10_000_000)),
        help="override the recipe's number of upstream training images",
    )
    parser.add_argument("--seed", type=ranged(Rule(int, 0, 2**63 - 1)), help="override the recipe's training seed")
    parser.add_argument("--threads", type=ranged(THREADS), help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..pretraining import RECIPES, pretrain, recipe_with

    if args.model not in RECIPES:
        hint = did_you_mean(args.model, RECIPES)
        raise CLIError(f"--model {args.model}: no pretraining recipe{hint}; known: {', '.join(sorted(RECIPES))}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train = {k: getattr(args, k) for k in ("epochs", "seed") if getattr(args, k) is not None}
    upstream = {"samples": args.samples} if args.samples is not None else {}
    recipe = recipe_with(args.model, train=train, **upstream)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="snftune-pretrain-") as scratch:
        run_dir = Path(args.run_dir) if args.run_dir else Path(scratch)
        record = pretrain(args.model, out, run_dir, recipe=recipe, progress=args.progress)
    print(
        f"{args.model}: upstream top-1 {record['upstream_val_top1']:.2f}% after {record['timing']['total_s']:.0f}s; "
        f"{record['parameters']:,} parameters; {out / (args.model + '.safetensors')} "
        f"({record['bytes'] / 1e6:.2f} MB, sha256 {record['sha256']})"
    )
    return 0
