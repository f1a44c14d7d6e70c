"""Pretraining of the embedded backbones on the generated upstream set.

The upstream set (:func:`snftune.data.generated.upstream_dataset`) draws classes disjoint
from every downstream task (other shapes, textures, letters), so transfer to the generated
tasks is transfer, not memorisation. ``pretrain`` trains the whole model (method ``full``)
with the engine and writes the weights with a JSON record: the recipe as run, the time it
took, the upstream top-1 and the sha256 that :func:`snftune.backbones.embedded.create_embedded`
checks on every load.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from .atomic import atomic_write, atomic_write_json
from .backbones.embedded import EMBEDDED, embedded_names, sha256_of
from .data import build_transform, model_data_config
from .data.generated import UPSTREAM_CLASSES, upstream_dataset
from .engine import TrainConfig, train
from .tuning import apply

__all__ = ["RECIPES", "PretrainRecipe", "pretrain", "recipe_with"]


@dataclass(frozen=True)
class PretrainRecipe:
    """How an embedded backbone is pretrained: the upstream data and the training settings
    (:class:`snftune.engine.TrainConfig` fields; the others keep the engine's defaults)."""

    samples: int = 24000
    val_samples: int = 2000
    data_seed: int = 0
    train: dict[str, Any] = field(
        default_factory=lambda: {
            "epochs": 5,
            "batch_size": 64,
            "lr": 1e-3,
            "weight_decay": 0.05,
            "warmup_epochs": 0.5,
            "label_smoothing": 0.1,
            "seed": 0,
            "workers": 0,
        }
    )


RECIPES: dict[str, PretrainRecipe] = {"snftune-vit-tiny": PretrainRecipe()}


def recipe_with(name: str, *, train: dict[str, Any] | None = None, **upstream: Any) -> PretrainRecipe:
    """``name``'s recipe with some upstream fields (``samples``, ...) and training settings replaced,
    e.g. ``recipe_with("snftune-vit-tiny", samples=2000, train={"epochs": 1})`` for a quick try."""
    base = RECIPES[name]
    return replace(base, **upstream, train={**base.train, **(train or {})})


def pretrain(
    name: str,
    out_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    recipe: PretrainRecipe | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrains the embedded backbone ``name`` and writes ``<out_dir>/<name>.safetensors`` and
    ``<out_dir>/<name>.json``; returns the record.

    ``run_dir`` receives the engine's run folder (log.jsonl, metrics.json). ``recipe`` replaces
    the shipped recipe (see :func:`recipe_with`); the record says what was run.
    """
    if name not in RECIPES:
        raise KeyError(f"no pretraining recipe for '{name}'; known: {', '.join(embedded_names())}")
    backbone, recipe = EMBEDDED[name], recipe or RECIPES[name]
    train_config = TrainConfig.from_dict({**recipe.train, "progress": progress})
    out_dir = Path(out_dir)
    start = time.perf_counter()
    torch.manual_seed(train_config.seed)
    model = timm.create_model(
        backbone.architecture, pretrained=False, num_classes=len(UPSTREAM_CLASSES), **backbone.model_kwargs
    )
    apply(model, "full")
    data_config = model_data_config(model, input_size=backbone.image_size)
    transform = build_transform("vtab", data_config, train=False)
    train_set = upstream_dataset(recipe.samples, recipe.data_seed, backbone.image_size, "train", transform)
    val_set = upstream_dataset(recipe.val_samples, recipe.data_seed, backbone.image_size, "val", transform)
    data_s = time.perf_counter() - start
    metrics = train(
        model,
        train_set,
        train_config,
        run_dir,
        eval_set=val_set,
        eval_split="upstream-val",
        record={"model": name, "method": "full", "data": "generated/upstream"},
    )
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = out_dir / f"{name}.safetensors"
    atomic_write(
        weights, lambda tmp: save_file(state, tmp, metadata={"name": name, "architecture": backbone.architecture})
    )
    record = {
        "name": name,
        "description": backbone.description,
        "architecture": backbone.architecture,
        "model_kwargs": backbone.model_kwargs,
        "parameters": sum(v.numel() for v in state.values()),
        "head": {"classes": list(UPSTREAM_CLASSES), "num_classes": len(UPSTREAM_CLASSES)},
        "input": {"size": backbone.image_size, "mean": list(data_config["mean"]), "std": list(data_config["std"])},
        "recipe": {
            "upstream": {
                "samples": recipe.samples,
                "val_samples": recipe.val_samples,
                "data_seed": recipe.data_seed,
                "image_size": backbone.image_size,
                "splits": ["train", "val"],
            },
            "method": "full",
            "train": train_config.to_dict(),
        },
        "upstream_val_top1": metrics["top1"],
        "timing": {
            "data_s": round(data_s, 1),
            "train_s": round(metrics["timing"]["train_s"], 1),
            "total_s": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "sha256": sha256_of(weights),
        "bytes": weights.stat().st_size,
        "command": f"snftune pretrain --model {name}",
    }
    atomic_write_json(out_dir / f"{name}.json", record)
    return record
