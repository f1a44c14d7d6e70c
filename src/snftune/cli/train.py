"""``snftune train``: tune one backbone on one task; writes metrics.json, tuned.safetensors,
config.yaml, log.jsonl (and checkpoint.pt while running) in the run folder.
Under ``torchrun --nproc_per_node N -m snftune train ...`` it trains with DDP."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from .common import CLIError, add_train_options, apply_threads, parse_search, values_from_args

if TYPE_CHECKING:
    from ..runs import ResolvedRun


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
    if not args.out and not args.config:  # refused before torch is imported: at once
        raise CLIError("missing --out (the run folder to write)")
    from ..engine import cleanup_distributed, setup_distributed
    from ..runs import CONFIG_NAME, PLAN_KEYS, Plan, RunPlan, RunRequest, merge_layers, recorded_values
    from ..selection import SearchSpace, SelectionPlan

    values, notes = values_from_args(args)
    if not values.get("out"):
        raise CLIError("missing --out (the run folder to write)")
    out = Path(values.pop("out"))
    if args.resume and (out / CONFIG_NAME).is_file():
        values, notes = merge_layers(recorded_values(out), values, names=("the run folder",))
        values.pop("out", None)
    request = RunRequest(values)
    resolved = request.resolved
    notes = [*notes, *resolved.notes]
    judging = [key for key in PLAN_KEYS if values.get(key) is not None]
    if judging and not args.search:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in judging)
        raise CLIError(f"{flags} judge the trials of a search: add --search (e.g. --search lr=0.001,0.005)")
    plan: Plan
    if args.search or args.seeds:  # selection on validation, then one final run per seed
        space = SearchSpace.parse(parse_search(args.search), "--search") if args.search else None
        plan = SelectionPlan(request, space, tuple(args.seeds) if args.seeds else None)
    else:
        plan = RunPlan(resolved, args.resume)
    dist = setup_distributed(resolved.settings.device)
    say = (lambda line: print(line, flush=True)) if dist.is_main else (lambda line: None)
    for note in notes:
        say(note)
    apply_threads(resolved.settings.threads)  # --threads, the run folder's on --resume, else the idle cores
    try:
        results = plan.run(out, dist, log=say)
    finally:
        cleanup_distributed()
    if dist.is_main and results:
        _print_result(resolved, results, out)
    return 0


def _print_result(resolved: ResolvedRun, results: list[dict], out: Path) -> None:
    from ..selection import SELECTION_NAME, read_selection

    name = f"{resolved.task.name} / {resolved.settings.method}"
    top1 = [m["top1"] for m in results]
    if len(results) == 1 and not (out / SELECTION_NAME).is_file():
        metrics = results[0]
        headline = "no evaluation split" if metrics["top1"] is None else f"{metrics['top1']:.2f}%"
        print(
            f"{name}: top-1 {headline} ({metrics.get('reported_as', metrics['reported'])}); "
            f"{metrics['tuned_parameters']:,} tuned parameters; {metrics['timing']['train_s']:.1f}s training; "
            f"results in {out}"
        )
        return
    spread = f" ± {statistics.stdev(top1):.2f} over {len(top1)} seeds" if len(top1) > 1 else ""
    chosen = read_selection(out)
    picked = f"; chosen on {chosen['selected_on']}: {chosen['chosen']}" if chosen else ""
    print(f"{name}: top-1 {statistics.mean(top1):.2f}%{spread}{picked}; results in {out}")
