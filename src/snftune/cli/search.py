"""``snftune search noah``: NOAH's supernet -> evolutionary search -> retrain, each phase in its
own folder under --out (a rerun skips finished phases and resumes an interrupted one)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .common import CLIError, add_train_options, apply_threads, parse_key_values, values_from_args

SEARCH_OPTIONS = {
    "population": int,
    "generations": int,
    "top_k": int,
    "mutation": int,
    "crossover": int,
    "mutation_prob": float,
    "depth_prob": float,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="NOAH: train a supernet, search a subnet under a parameter limit, retrain it",
        description="NOAH (neural prompt search): trains a supernet of VPT-deep prompts, LoRA and adapters "
        "(a random subnet per step) on the task's training split, searches per-block sizes by evolution on its "
        "validation split under --param-limit, then retrains the best subnet on the final split. Phases: "
        "OUT/supernet, OUT/search (subnet.yaml in NOAH's format), OUT (the retrain run). Training settings: the "
        "protocol's, NOAH's supernet recipe (supernet only), the options given here (both phases), then "
        "--supernet/--retrain KEY=VALUE.",
        epilog="example: snftune search noah --model vit_base_patch16_224 --pretrained ViT-B_16.npz "
        "--data vtab1k/cifar --data-dir /data --param-limit 0.64M --out runs/cifar-noah",
    )
    parser.add_argument("algorithm", choices=["noah"], help="the search (NOAH)")
    add_train_options(parser)
    parser.add_argument("--out", help="output folder (created)")
    group = parser.add_argument_group("NOAH (defaults: NOAH's VTAB-1k settings)")
    group.add_argument("--param-limit", help="most tuned parameters of a subnet, e.g. 0.64M (default), 640K")
    group.add_argument("--population", type=int, help="candidates per generation (50)")
    group.add_argument("--generations", type=int, help="generations bred after the random one (15)")
    group.add_argument("--top-k", type=int, help="parents: the best so far (10)")
    group.add_argument("--mutation", type=int, help="children by mutation per generation (25)")
    group.add_argument("--crossover", type=int, help="children by crossover per generation (25)")
    group.add_argument("--mutation-prob", type=float, help="chance a module type mutates (0.2)")
    group.add_argument("--depth-prob", type=float, help="chance a mutation redraws the depth (0.4)")
    group.add_argument("--sizes", type=int, nargs="+", help="sizes of prompts, LoRA ranks, adapters (5 10 50 100)")
    group.add_argument("--depths", type=int, nargs="+", help="blocks that carry a module (quarters: 3 6 9 12)")
    group.add_argument("--supernet", nargs="+", metavar="KEY=VALUE", help="supernet training, e.g. epochs=500")
    group.add_argument("--retrain", nargs="+", metavar="KEY=VALUE", help="retrain training, e.g. lr=0.001")
    parser.set_defaults(run=run)


def _noah_options(args: argparse.Namespace) -> dict:
    options = {name: getattr(args, name) for name in SEARCH_OPTIONS if getattr(args, name) is not None}
    for name in ("param_limit", "sizes", "depths"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for phase in ("supernet", "retrain"):
        if getattr(args, phase):
            options[phase] = parse_key_values(getattr(args, phase), f"--{phase}")
    return options


def run(args: argparse.Namespace) -> int:
    from ..nas.evolution import read_search_result
    from ..nas.noah import RESULT_NAME, SEARCH_DIR, SUBNET_NAME, plan_noah
    from ..runs import RunRequest

    values, notes = values_from_args(args)
    if values.get("method") not in (None, "noah"):
        raise CLIError(f"snftune search noah tunes with NOAH's modules; drop --method {values['method']}")
    if args.search:
        raise CLIError(
            "--search chooses one method's hyper-parameters; NOAH's phases take --supernet/--retrain KEY=VALUE"
        )
    apply_threads(args.threads)
    if not values.get("out"):
        raise CLIError("missing --out (the folder for the supernet, search and retrain)")
    out = Path(values.pop("out"))
    values["method_options"] = {**(values.get("method_options") or {}), **_noah_options(args)}
    seeds = tuple(args.seeds) if args.seeds else None
    plan = plan_noah(RunRequest({**values, "method": "noah"}), seeds)
    for note in notes:
        print(note, flush=True)
    results = plan.run(out, log=lambda line: print(line, flush=True))
    search = out / SEARCH_DIR
    found = read_search_result(search / RESULT_NAME)["best"]
    top1 = [m["top1"] for m in results]
    spread = f" ± {statistics.stdev(top1):.2f} over {len(top1)} seeds" if len(top1) > 1 else ""
    print(
        f"{results[0]['settings']['data']} / NOAH: top-1 {statistics.mean(top1):.2f}%{spread} "
        f"({results[0].get('reported_as', 'final')}); subnet of {found['parameters']:,} tuned parameters "
        f"(limit {plan.noah.evolution.param_limit:,}; {found['top1']:.2f}% on validation with the supernet's weights) "
        f"in {search / SUBNET_NAME}; results in {out}"
    )
    return 0
