"""``snftune eval``: re-evaluate a run folder or a tuned-weights file on any split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .common import add_threads_option, apply_threads, check_output_file, parse_key_values, write_json_result

if TYPE_CHECKING:
    from ..runs import RunSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a run folder or a tuned file on a split",
        description="Rebuilds the model a run folder recorded (config.yaml), loads its tuned.safetensors and "
        "measures top-1 on a split. A bare tuned file needs --model and --data (and --pretrained when it was "
        "tuned on pretrained weights).",
        epilog="examples: snftune eval runs/cifar-snf --split test;  snftune eval task.safetensors "
        "--model vit_base_patch16_224 --pretrained ViT-B_16.npz --data vtab1k/cifar --data-dir /data",
    )
    parser.add_argument("source", help="a run folder, or a tuned .safetensors file")
    parser.add_argument("--split", help="split to evaluate (default: the run's evaluation split)")
    parser.add_argument("--data", help="task spec (default: the run's task)")
    parser.add_argument("--data-dir", help="folder holding the datasets (default: the run's)")
    parser.add_argument("--data-options", nargs="+", metavar="KEY=VALUE")
    parser.add_argument("--model", help="timm model name (for a bare tuned file)")
    parser.add_argument("--pretrained", help="backbone weights: a local file or a hub tag")
    parser.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_threads_option(parser)
    parser.add_argument("--json", help="also write the result to this JSON file")
    parser.set_defaults(run=run)


def _settings_for(args: argparse.Namespace) -> tuple[RunSettings, Path]:
    from ..runs import evaluation_settings

    return evaluation_settings(
        args.source,
        data=args.data,
        model=args.model,
        data_dir=args.data_dir,
        pretrained=args.pretrained,
        img_size=args.img_size,
        data_options=parse_key_values(args.data_options, "--data-options") if args.data_options else None,
        model_kwargs=parse_key_values(args.model_kwargs, "--model-kwargs") if args.model_kwargs else None,
    )


def run(args: argparse.Namespace) -> int:
    from ..runs import evaluate_tuned

    check_output_file(args.json, "--json")
    apply_threads(args.threads)
    settings, tuned = _settings_for(args)
    result = evaluate_tuned(settings, tuned, args.split, args.batch_size, args.workers, args.device)
    subset = f", over {result['class_subset']} classes" if result["class_subset"] else ""
    print(f"top-1 {result['top1']:.2f}% on {result['data']}:{result['split']} ({result['count']} images{subset})")
    if args.json:
        write_json_result(args.json, result)
    return 0
