"""Backbones pretrained by this project and shipped inside the package, so that the demo,
the tests and a first try need no download.

Each embedded backbone is a recipe (:data:`RECIPES`: a timm architecture with its settings,
and how it is pretrained on the generated upstream set) plus, once ``snftune pretrain`` has
run, ``weights/<name>.safetensors`` and ``weights/<name>.json`` (the recipe as run, the time
it took, the upstream accuracy and the weights' sha256). ``create_embedded`` builds the
architecture from the JSON, checks the hash and loads the weights; the classifier head is
fresh whenever the class count differs from the upstream one.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .factory import WeightsUnavailableError

__all__ = [
    "RECIPES",
    "EmbeddedRecipe",
    "create_embedded",
    "embedded_names",
    "is_embedded",
    "pretrain",
    "read_record",
    "sha256_of",
    "weights_dir",
]

RANDOM = "random"  # pretrained="random": the same architecture, randomly initialised


@dataclass(frozen=True)
class EmbeddedRecipe:
    """How an embedded backbone is built and pretrained on the generated upstream set."""

    architecture: str
    model_kwargs: dict[str, Any]
    samples: int = 24000  # upstream training images (generated, seeded)
    val_samples: int = 2000  # upstream held-out images (another split of the generator)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    seed: int = 0
    data_seed: int = 0
    image_size: int = 32
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def train_settings(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_epochs": self.warmup_epochs,
            "warmup_lr": 1e-6,
            "min_lr": 1e-5,
            "label_smoothing": self.label_smoothing,
            "seed": self.seed,
            "workers": 0,
            "eval_every": 1,
            "report": "final",
        }


RECIPES: dict[str, EmbeddedRecipe] = {
    "snftune-vit-tiny": EmbeddedRecipe(
        architecture="vit_tiny_patch16_224",
        model_kwargs={"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
        description="ViT, 32 px input, 4 px patches (64 tokens + class token), width 96, 4 blocks, 3 heads; "
        "pretrained on the generated upstream set (24 classes disjoint from the downstream tasks)",
    ),
}


def weights_dir() -> Path:
    """The folder of the shipped weights (inside the installed package)."""
    return Path(str(resources.files("snftune.backbones") / "weights"))


def embedded_names() -> list[str]:
    """Names of the embedded backbones (whether or not their weights have been built)."""
    return sorted(RECIPES)


def is_embedded(name: str) -> bool:
    return name in RECIPES


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The JSON written next to the weights by ``snftune pretrain``."""
    if not is_embedded(name):
        raise KeyError(f"'{name}' is not an embedded backbone; known: {', '.join(embedded_names())}")
    path = (folder or weights_dir()) / f"{name}.json"
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the weights of {name} have not been built ({path} is missing); run: snftune pretrain --model {name}"
        )
    return json.loads(path.read_text())


def _architecture_kwargs(name: str, record: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    built = dict(record["model_kwargs"])
    for key, value in kwargs.items():
        if key in built and built[key] != value:
            raise WeightsUnavailableError(
                f"{name} was pretrained with {key}={built[key]!r}, not {value!r}; drop {key} "
                "(or use the timm architecture with random initialisation)"
            )
    return {**built, **kwargs}


def create_embedded(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """An embedded backbone by name.

    Args:
        name: e.g. ``snftune-vit-tiny``.
        pretrained: ``None`` for the shipped weights (their sha256 is checked against the JSON);
            ``"random"`` for the same architecture randomly initialised; or a path to another
            safetensors file of the same architecture (e.g. from ``snftune pretrain --out``),
            whose JSON, when it lies next to it, gives the architecture.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``drop_path_rate``, ...).
    """
    folder = None
    if pretrained not in (None, RANDOM):
        folder = Path(pretrained).expanduser().parent
        if not (folder / f"{name}.json").is_file():
            folder = None
    record = read_record(name, folder) if pretrained != RANDOM or _has_record(name) else None
    model_kwargs = record["model_kwargs"] if record else RECIPES[name].model_kwargs
    architecture = record["architecture"] if record else RECIPES[name].architecture
    model = timm.create_model(
        architecture, pretrained=False, **_architecture_kwargs(name, {"model_kwargs": model_kwargs}, kwargs)
    )
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "snftune_embedded": name,
        "snftune_weights": pretrained or "shipped",
    }
    if pretrained == RANDOM:
        return model
    path = Path(pretrained).expanduser() if pretrained else weights_dir() / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist; run: snftune pretrain --model {name}")
    if pretrained is None:
        found = sha256_of(path)
        if found != record["sha256"]:
            raise WeightsUnavailableError(
                f"{path} has sha256 {found}, but {name}.json records {record['sha256']}: the shipped weights are "
                "damaged or were replaced; reinstall snftune or rebuild them with snftune pretrain"
            )
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    head = {k for k in state if k.startswith("head.")}
    own = model.state_dict()
    if any(own[k].shape != state[k].shape for k in head if k in own):
        state = {k: v for k, v in state.items() if k not in head}  # a fresh head for another class count
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise WeightsUnavailableError(f"{path} does not fit {name}: missing {missing}, unexpected {unexpected}")
    return model


def _has_record(name: str) -> bool:
    return (weights_dir() / f"{name}.json").is_file()


def pretrain(
    name: str,
    out_dir: str | Path,
    run_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrains ``name`` on the generated upstream set with the engine (method ``full``) and
    writes ``<out_dir>/<name>.safetensors`` and ``<out_dir>/<name>.json``; returns the record.

    ``run_dir`` receives the engine's run folder (log.jsonl, metrics.json). ``overrides``
    replace recipe fields (e.g. ``{"epochs": 1, "samples": 2000}`` for a quick try).
    """
    from ..data import build_transform, model_data_config
    from ..data.generated import UPSTREAM_CLASSES, upstream_dataset
    from ..engine import TrainConfig, train
    from ..tuning import apply

    if not is_embedded(name):
        raise KeyError(f"no recipe for '{name}'; known: {', '.join(embedded_names())}")
    base = RECIPES[name]
    recipe = EmbeddedRecipe(**{**vars(base), **(overrides or {})})
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model = timm.create_model(
        recipe.architecture, pretrained=False, num_classes=len(UPSTREAM_CLASSES), **recipe.model_kwargs
    )
    apply(model, "full")
    config = model_data_config(model, input_size=recipe.image_size)
    transform = build_transform("vtab", config, train=False)
    train_set = upstream_dataset(recipe.samples, recipe.data_seed, recipe.image_size, "train", transform)
    val_set = upstream_dataset(recipe.val_samples, recipe.data_seed, recipe.image_size, "val", transform)
    data_s = time.perf_counter() - start
    train_config = TrainConfig.from_dict({**recipe.train_settings(), "progress": progress})
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
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    save_file(state, str(weights), metadata={"name": name, "architecture": recipe.architecture})
    record = {
        "name": name,
        "description": recipe.description,
        "architecture": recipe.architecture,
        "model_kwargs": recipe.model_kwargs,
        "parameters": sum(v.numel() for v in state.values()),
        "head": {"classes": list(UPSTREAM_CLASSES), "num_classes": len(UPSTREAM_CLASSES)},
        "input": {"size": recipe.image_size, "mean": list(config["mean"]), "std": list(config["std"])},
        "recipe": {
            "upstream": {
                "samples": recipe.samples,
                "val_samples": recipe.val_samples,
                "data_seed": recipe.data_seed,
                "image_size": recipe.image_size,
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
            "cpu_count": _cpu_count(),
        },
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "sha256": sha256_of(weights),
        "bytes": weights.stat().st_size,
        "command": f"snftune pretrain --model {name}",
    }
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
