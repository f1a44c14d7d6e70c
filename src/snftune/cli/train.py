"""``snftune train``: tune one backbone on one task; writes metrics.json, tuned.safetensors,
config.yaml, log.jsonl (and checkpoint.pt while running) in the run folder.
Under ``torchrun --nproc_per_node N -m snftune train ...`` it trains with DDP."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ..engine import cleanup_distributed, setup_distributed
from ..runs import CONFIG_NAME, merge_layers, recorded_values, resolve_settings, train_run
from ..selection import CellPlan, SearchSpace, read_selection, run_cell
from .common import CLIError, add_train_options, parse_search, values_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="tune a backbone on a task (one run folder)",
        description="Tunes a timm backbone with a method on a task. Defaults come from the task's protocol "
        "(docs/protocols.md), then a --config YAML file, then the options given here. Under torchrun it uses "
        "DistributedDataParallel; --batch-size stays the global batch.",
        epilog="example: snftune train --model vit_base_patch16_224 --pretrained ViT-B_16.npz "
        "--method snf-deep --data vtab1k/cifar --data-dir /data --out runs/cifar-snf",
    )
    add_train_options(parser)
    parser.add_argument("--out", help="run folder (created)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    values, notes = values_from_args(args)
    if not values.get("out"):
        raise CLIError("missing --out (the run folder to write)")
    if args.resume and (Path(values["out"]) / CONFIG_NAME).is_file():
        values, notes = merge_layers(recorded_values(Path(values["out"])), values, names=("the run folder",))
    resolved = resolve_settings(values)
    notes = [*notes, *resolved.notes]
    if args.search or args.seeds:
        return _run_cell(args, values, resolved, notes)
    dist = setup_distributed(resolved.settings.device)
    _say(notes, dist)
    try:
        metrics = train_run(resolved, Path(values["out"]), args.resume, dist)
    finally:
        cleanup_distributed()
    if metrics is None:
        if dist.is_main:
            print(f"{values['out']} already finished; nothing to do")
    elif dist.is_main:
        headline = "no evaluation split" if metrics["top1"] is None else f"{metrics['top1']:.2f}%"
        print(
            f"{resolved.task.name} / {resolved.settings.method}: top-1 {headline} "
            f"({metrics.get('reported_as', metrics['reported'])}); {metrics['tuned_parameters']:,} tuned "
            f"parameters; {metrics['timing']['train_s']:.1f}s training; results in {values['out']}"
        )
    return 0


def _say(notes: list[str], dist) -> None:
    if dist.is_main:
        for note in notes:
            print(note, flush=True)


def _run_cell(args: argparse.Namespace, values: dict, resolved, notes: list[str]) -> int:
    """``--search`` and/or ``--seeds``: selection on validation, then one final run per seed."""
    values = {k: v for k, v in values.items() if k != "out"}
    plan = CellPlan(
        values,
        SearchSpace.parse(parse_search(args.search), "--search") if args.search else None,
        tuple(args.seeds) if args.seeds else None,
    )
    out = Path(args.out)
    dist = setup_distributed(resolved.settings.device)
    _say(notes, dist)
    try:
        results = run_cell(plan, out, dist, log=lambda line: print(line, flush=True) if dist.is_main else None)
    finally:
        cleanup_distributed()
    if dist.is_main:
        top1 = [m["top1"] for m in results]
        spread = f" ± {statistics.stdev(top1):.2f} over {len(top1)} seeds" if len(top1) > 1 else ""
        chosen = read_selection(out)
        picked = f"; chosen on {chosen['selected_on']}: {chosen['chosen']}" if chosen else ""
        name = f"{resolved.task.name} / {resolved.settings.method}"
        print(f"{name}: top-1 {statistics.mean(top1):.2f}%{spread}{picked}; results in {out}")
    return 0
