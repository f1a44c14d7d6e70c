"""``snftune eval``: re-evaluate a run folder or a tuned-weights file on any split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..engine import TUNED_NAME, TrainConfig, evaluate
from ..engine.trainer import amp_dtype
from .common import (
    CLIError,
    RunSettings,
    build_backbone,
    input_config,
    parse_key_values,
    read_config,
    settings_from_record,
)


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
    parser.add_argument("--json", help="also write the result to this JSON file")
    parser.set_defaults(run=run)


def _settings_for(args: argparse.Namespace) -> tuple[RunSettings, Path]:
    source = Path(args.source)
    if source.is_dir():
        settings = settings_from_record(read_config(source))
        tuned = source / TUNED_NAME
        if not tuned.is_file():
            raise CLIError(
                f"{source} has no {TUNED_NAME}: the run has not finished; continue it with "
                f"snftune train --resume --out {source}"
            )
    elif source.is_file():
        if not (args.model and args.data):
            raise CLIError(f"{source} is a tuned file: pass --model and --data (the backbone and task it was tuned on)")
        settings = RunSettings(model=args.model, method="(from file)", data=args.data, train=TrainConfig())
        tuned = source
    else:
        raise CLIError(f"{source} does not exist; pass a run folder or a tuned .safetensors file")
    if args.data and args.data != settings.data:
        settings.data, settings.eval_split, settings.data_options = args.data, None, {}
    for key in ("data_dir", "model", "pretrained", "img_size"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    if args.data_options:
        settings.data_options = parse_key_values(args.data_options, "--data-options")
    if args.model_kwargs:
        settings.model_kwargs = parse_key_values(args.model_kwargs, "--model-kwargs")
    return settings, tuned


def evaluate_tuned(
    settings: RunSettings,
    tuned: Path,
    split: str | None = None,
    batch_size: int = 256,
    workers: int = 2,
    device: str | None = None,
) -> dict[str, Any]:
    """Top-1 of the tuned weights on ``split`` of the settings' task (default: its eval split)."""
    from ..data import build_transform, resolve_task
    from ..tuning import load_tuned

    task = resolve_task(settings.data, settings.data_dir, **(settings.data_options or {}))
    if settings.num_classes is not None and settings.num_classes != task.num_classes:
        raise CLIError(
            f"the run was tuned for {settings.num_classes} classes, {task.name} has {task.num_classes}; "
            "evaluate on a task with the same classes"
        )
    settings.num_classes = task.num_classes
    split = split or settings.eval_split or task.eval_split
    if split not in task.splits:
        raise CLIError(f"--split {split}: {task.name} has the splits {', '.join(task.splits)}")
    model = build_backbone(settings, drop_path=0.0)
    load_tuned(model, tuned)
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(chosen)
    dataset = task.dataset(split, transform=build_transform(task.protocol, input_config(model, settings), train=False))
    result = evaluate(
        model,
        dataset,
        batch_size=batch_size,
        device=chosen,
        workers=workers,
        class_subset=task.class_subset,
        dtype=amp_dtype(settings.train, chosen),
    )
    return {
        **result,
        "data": task.name,
        "split": split,
        "class_subset": len(task.class_subset) if task.class_subset else None,
        "tuned": str(tuned),
        "model": settings.model,
    }


def run(args: argparse.Namespace) -> int:
    settings, tuned = _settings_for(args)
    result = evaluate_tuned(settings, tuned, args.split, args.batch_size, args.workers, args.device)
    subset = f", over {result['class_subset']} classes" if result["class_subset"] else ""
    print(f"top-1 {result['top1']:.2f}% on {result['data']}:{result['split']} ({result['count']} images{subset})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
