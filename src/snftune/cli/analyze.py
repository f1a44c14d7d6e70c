"""``snftune analyze``: per-site Lipschitz constants, error-propagation bound, drift and information
preservation of tuned models (:mod:`snftune.analysis`)."""

from __future__ import annotations

import argparse

from ..inputs import THREADS
from .common import CLIError, parse_key_values, ranged


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="per-site Lipschitz constants, error bound vs measured growth, CKA drift, flow invertibility",
        description="Measures, at every residual site of the untouched backbone and of each tuned model, on a "
        "sample of a task's images: the local Lipschitz constants of the branch and the shortcut (power "
        "iteration), the paper's error-propagation bound beside the measured growth of a small error at the "
        "output (pooled features), linear CKA with the backbone, and, where a slot holds a flow, how exactly "
        "its inverse restores real activations and its log-determinant. Writes analysis.json, analysis.md and "
        "lipschitz.png. A run folder gives the backbone and task; a bare tuned file needs --model (and "
        "--pretrained) and --data. With no source, the backbone alone is analysed.",
        epilog="examples: snftune analyze runs/shapes-linear runs/shapes-snf --out analysis;  snftune analyze "
        "task.safetensors --model vit_base_patch16_224 --pretrained ViT-B_16.npz --data vtab1k/dtd --data-dir /data",
    )
    parser.add_argument(
        "sources", nargs="*", metavar="RUN_OR_TUNED_FILE", help="run folders or tuned .safetensors files"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--data", help="task spec (default: the first run's task)")
    parser.add_argument("--data-dir", help="folder holding the datasets (default: the first run's)")
    parser.add_argument("--data-options", nargs="+", metavar="KEY=VALUE")
    parser.add_argument("--split", help="split to sample (default: the run's evaluation split)")
    parser.add_argument("--samples", type=int, default=64, help="images, evenly spaced through the split (default 64)")
    parser.add_argument("--model", help="timm model name (default: the first run's)")
    parser.add_argument("--pretrained", help="backbone weights: a local file or a hub tag")
    parser.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--labels", nargs="+", help="one name per source (default: the method)")
    # Defaults (None here) are AnalysisSettings', filled in when the command runs.
    parser.add_argument("--batch-size", type=int, help="images per pass")
    parser.add_argument("--iterations", type=int, help="power-iteration steps per site constant")
    parser.add_argument(
        "--end-to-end-iterations",
        type=int,
        help="power-iteration steps per end-to-end constant (each runs the rest of the network)",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=ranged(THREADS), help="torch CPU threads (default: the idle cores)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import AnalysisSettings, resolve_inputs, run_analysis

    given = {name: getattr(args, name) for name in ("batch_size", "iterations", "end_to_end_iterations", "seed")}
    try:
        settings = AnalysisSettings(**{name: value for name, value in given.items() if value is not None})
    except ValueError as error:
        raise CLIError(str(error)) from error
    inputs = resolve_inputs(
        args.sources,
        model=args.model,
        pretrained=args.pretrained,
        model_kwargs=parse_key_values(args.model_kwargs, "--model-kwargs") if args.model_kwargs else None,
        img_size=args.img_size,
        data=args.data,
        data_dir=args.data_dir,
        data_options=parse_key_values(args.data_options, "--data-options") if args.data_options else None,
        split=args.split,
    )
    analysis = run_analysis(
        inputs,
        args.out,
        samples=args.samples,
        labels=args.labels,
        settings=settings,
        device=args.device,
        threads=args.threads,
        progress=args.progress,
    )
    for model in analysis["models"]:
        sites = model["sites"]
        print(
            f"{model['label']}: branch K max {max(s['branch']['max'] for s in sites):.3g}, "
            f"bound from site 0 {sites[0]['bound']['max']:.3g} vs measured growth {sites[0]['growth']['max']:.3g}, "
            f"output CKA {model['pooled_cka']:.3f}"
        )
    written = analysis["written"]
    print(
        f"wrote {written['json']}, {written['markdown']}, {written['figure']} "
        f"({analysis['samples']} images of {analysis['data']}:{analysis['split']}, {analysis['seconds']:.0f}s)"
    )
    return 0
