"""``snftune pretrain``: pretrain an embedded backbone on the generated upstream set (CPU,
seeded) and write its weights with a JSON record (recipe, time, upstream accuracy, sha256)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from .common import CLIError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..backbones.embedded import embedded_names

    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain an embedded backbone on the generated upstream set",
        description="Trains an embedded backbone (its recipe is in snftune.backbones.embedded) on the generated "
        "upstream distribution, whose classes are disjoint from every downstream task, with the training engine "
        "(method 'full'). Writes <name>.safetensors and <name>.json (recipe, time taken, upstream top-1, sha256). "
        "The shipped weights were made with the defaults; the demo never pretrains.",
        epilog="example: snftune pretrain --model snftune-vit-tiny --out my-weights --threads 1",
    )
    parser.add_argument("--model", default="snftune-vit-tiny", choices=embedded_names())
    parser.add_argument("--out", help="folder for the weights and JSON (default: the package's weights folder)")
    parser.add_argument("--run-dir", help="engine run folder (log.jsonl, metrics.json; default: a temporary one)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--samples", type=int, help="override the recipe's number of upstream training images")
    parser.add_argument("--seed", type=int, help="override the recipe's training seed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones.embedded import pretrain, weights_dir

    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in ("epochs", "samples", "seed") if getattr(args, k) is not None}
    for key, value in overrides.items():
        if value < (0 if key == "seed" else 1):
            raise CLIError(f"--{key} must be positive, got {value}")
    out = Path(args.out) if args.out else weights_dir()
    with tempfile.TemporaryDirectory(prefix="snftune-pretrain-") as scratch:
        run_dir = Path(args.run_dir) if args.run_dir else Path(scratch)
        record = pretrain(args.model, out, run_dir, overrides=overrides, progress=args.progress)
    print(
        f"{args.model}: upstream top-1 {record['upstream_val_top1']:.2f}% after {record['timing']['total_s']:.0f}s; "
        f"{record['parameters']:,} parameters; {out / (args.model + '.safetensors')} "
        f"({record['bytes'] / 1e6:.2f} MB, sha256 {record['sha256']})"
    )
    return 0
