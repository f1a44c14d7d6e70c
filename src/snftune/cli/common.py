"""What the commands share: one-line errors for bad input, ``KEY=VALUE`` options, the
training options of ``train`` and ``bench``, and merging a settings file with the command line.
The run itself lives in :mod:`snftune.runs`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import SnftuneError
from ..inputs import THREADS, Rule, load_yaml


class CLIError(SnftuneError):
    """A problem with what the user asked for: printed as one line, exit status 2 (like every
    :class:`~snftune.errors.SnftuneError`, which the CLI prints as one line with its exit code)."""


# The library is imported inside the functions that need it, so that building the parser
# (``snftune --help``) does not import torch and timm.


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["depth=2", "patch_size=8"]`` -> ``{"depth": 2, "patch_size": 8}`` (values read as YAML)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} takes KEY=VALUE pairs, got '{item}' (e.g. {flag} depth=2)")
        values[key] = load_yaml(text=raw, source=f"{flag} {item}", error=CLIError)
    return values


def parse_search(items: list[str]) -> dict[str, list[Any]]:
    """``["lr=0.001,0.005", "weight_decay=1e-4"]`` -> ``{"lr": [0.001, 0.005], "weight_decay": [0.0001]}``
    (values read as YAML; the search space itself is checked by :class:`snftune.selection.SearchSpace`)."""
    space: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--search takes KEY=V1,V2 pairs, got '{item}' (e.g. --search lr=0.001,0.005)")
        space[key] = (
            [load_yaml(text=v, source=f"--search {item}", error=CLIError) for v in raw.split(",")] if raw else []
        )
    return space


def check_output_file(path: str | None, flag: str) -> None:
    """Refuses an output file path that cannot be written, before any work is done."""
    if path is not None and Path(path).is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file path")


def write_json_result(path: str, data: dict[str, Any]) -> None:
    """``--json PATH``: the result as a JSON file, written atomically."""
    atomic_write_json(path, data)


def add_train_options(parser: argparse.ArgumentParser, with_run: bool = True) -> None:
    """Options shared by ``train`` and ``bench``; every default is None (= not given), so
    that YAML files and protocol defaults can fill them."""
    _add_run_options(parser, with_run)
    _add_selection_options(parser)
    group = parser.add_argument_group("training (defaults: the task's protocol, docs/protocols.md)")
    _add_training_options(group)
    _add_engine_options(group)


def _add_run_options(parser: argparse.ArgumentParser, with_run: bool) -> None:
    """What runs: backbone, weights, method, task and their options."""
    if with_run:
        parser.add_argument(
            "--model", help="timm model name (e.g. vit_base_patch16_224), or snftune-vit-tiny: shipped, offline"
        )
        parser.add_argument("--method", help="method or preset name (snf-deep, lora, ...) or a method YAML file")
        parser.add_argument("--data", help="task spec, e.g. vtab1k/cifar, fgvc/cub, generated/shapes")
    if with_run:
        parser.add_argument(
            "--pretrained", help="weights: a local .npz/.pth/.safetensors file, or a hub tag (needs network)"
        )
    else:
        parser.add_argument(
            "--pretrained",
            nargs="+",
            metavar="FILE_OR_LABEL=FILE",
            help="backbone weights (a local file or hub tag); LABEL=FILE pairs for suites with several backbones",
        )
    parser.add_argument("--data-dir", help="folder holding the datasets (not needed for generated/...)")
    parser.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="extra timm.create_model arguments")
    parser.add_argument("--data-options", nargs="+", metavar="KEY=VALUE", help="task options, e.g. image_size=32")
    parser.add_argument("--method-options", nargs="+", metavar="KEY=VALUE", help="method settings, e.g. planar_steps=3")
    parser.add_argument("--config", help="YAML file of defaults for these options (the command line wins)")


def _add_selection_options(parser: argparse.ArgumentParser) -> None:
    """How hyper-parameters are chosen on validation, and the seeds of the final runs."""
    parser.add_argument(
        "--search",
        nargs="+",
        metavar="KEY=V1,V2",
        help="choose these settings on the task's validation split first (e.g. lr=0.001,0.005 "
        "weight_decay=0.0001,0.001), then train on the final split with the best; see docs/protocols.md",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="final runs, one per seed (results: mean ± std)")
    parser.add_argument(
        "--select-seeds",
        type=int,
        metavar="N",
        help="run each --search trial on N seeds and choose on the mean validation top-1 (default 1); "
        "see docs/trust.md",
    )
    parser.add_argument(
        "--select-folds",
        type=int,
        metavar="K",
        help="run each --search trial on K folds of the tuning pair (e.g. train800+val200, stratified by class) "
        "and choose on the mean over folds (default: no folds)",
    )
    parser.add_argument(
        "--unstable-range",
        type=float,
        metavar="POINTS",
        help="a trial whose seeds' validation top-1 differ by more than this is unstable, never chosen over "
        "a stable one (default 10)",
    )


def _add_training_options(group: argparse._ArgumentGroup) -> None:
    """The training loop's settings (TrainConfig): schedule, regularisation, precision, evaluation."""
    group.add_argument("--epochs", type=int)
    group.add_argument("--lr", type=float)
    group.add_argument("--batch-size", type=int, help="global batch of one optimiser step")
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--warmup-epochs", type=float)
    group.add_argument("--warmup-lr", type=float)
    group.add_argument("--min-lr", type=float)
    group.add_argument("--drop-path", type=float)
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--mixup", type=float, help="mixup alpha (0: off)")
    group.add_argument("--cutmix", type=float, help="cutmix alpha (0: off)")
    group.add_argument("--accum-steps", type=int, help="split each batch into this many accumulation steps")
    group.add_argument("--grad-clip", type=float)
    group.add_argument(
        "--amp",
        choices=["auto", "off", "bf16", "fp16"],
        help="autocast dtype (auto: bf16 on CUDA where supported, fp16 on older cards, off on the CPU; "
        "bf16/fp16 autocast on the CPU too; docs/speed.md)",
    )
    group.add_argument("--eval-every", type=int, help="evaluate every k epochs (0: at the end only)")
    group.add_argument("--eval-batch-size", type=int)
    group.add_argument("--seed", type=int)
    group.add_argument("--workers", type=int, help="data-loading processes")
    group.add_argument("--img-size", type=int, help="input size (ViT/Swin are built for it)")
    group.add_argument("--num-classes", type=int, help="checked against the task's class count")
    group.add_argument("--split", dest="train_split", help="training split (default: the protocol's)")
    group.add_argument("--eval-split", help="evaluation split (default: the protocol's)")
    group.add_argument(
        "--report",
        choices=["final", "best"],
        help="headline top-1: the final epoch's (default) or the best evaluation, labelled as such",
    )
    group.add_argument("--checkpoint-every", type=int, help="also checkpoint every N optimiser steps")
    group.add_argument("--log-every", type=int)


def _add_engine_options(group: argparse._ArgumentGroup) -> None:
    """Where and how fast it runs: device, compile, checkpointing, threads, caches, progress."""
    group.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    group.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="train through torch.compile (backend: inductor, the default, or aot_eager, eager, cudagraphs)",
    )
    group.add_argument(
        "--grad-checkpointing",
        dest="grad_checkpointing",
        action="store_const",
        const=True,
        help="recompute each block's activations in the backward pass (less memory, about 1/3 more time)",
    )
    add_threads_option(group)
    group.add_argument(
        "--cache",
        choices=["auto", "off", "ram", "disk"],
        help="decoded-image cache (default auto: on disk, reused by later runs; docs/data.md)",
    )
    group.add_argument(
        "--cache-dir", help="image cache folder (default: $SNFTUNE_CACHE_DIR or ~/.cache/snftune/images)"
    )
    group.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_const",
        const=False,
        help="train a head-only method (linear) end to end, not on backbone features computed once",
    )
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")


def ranged(rule: Rule) -> Any:
    """An argparse ``type`` from a :class:`snftune.inputs.Rule`: the text as the rule's number,
    within its range, else argparse's one line (``argument --top-k: must be a whole number >= 1,
    got '0'``)."""

    def parse(text: str) -> Any:
        try:
            return rule.check("value", int(text) if rule.kind is int else float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, got {text!r}") from None

    parse.__name__ = rule.describe()
    return parse


def add_threads_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--threads", type=ranged(THREADS), help="torch CPU threads (default: one per idle core)")


def apply_threads(threads: int | None) -> int:
    """Sets torch's CPU threads to ``threads`` (``--threads``; None: one per idle core) and says
    so, once (on rank 0 under torchrun)."""
    from ..engine.acceleration import use_threads

    chosen = use_threads(threads)
    if os.environ.get("RANK", "0") == "0":
        source = "--threads" if threads else "one per idle core; --threads sets it"
        print(f"torch CPU threads: {chosen} ({source})", flush=True)
    return chosen


def values_from_args(args: argparse.Namespace, leave: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """Merged settings: the --config file, then every option given on the command line (see
    :func:`snftune.runs.merge_layers`), but for the options in ``leave`` (the command reads them
    itself); and a note per warm-up scaled with a changed length."""
    from ..runs import known_keys, load_settings_file, merge_layers

    values = load_settings_file(args.config) if getattr(args, "config", None) else {}
    wanted = set(known_keys()) - set(leave)
    given = {k: v for k, v in vars(args).items() if k in wanted and v is not None}
    for key, flag in (("model_kwargs", "--model-kwargs"), ("data_options", "--data-options")):
        if key in given:
            given[key] = parse_key_values(given[key], flag)
    if "method_options" in given:
        given["method_options"] = parse_key_values(given["method_options"], "--method-options")
    if getattr(args, "seeds", None) and len(set(args.seeds)) != len(args.seeds):
        raise CLIError(f"--seeds {' '.join(map(str, args.seeds))} lists a seed twice; give each seed once")
    return merge_layers(values, given, names=(f"--config {getattr(args, 'config', None)}",))
