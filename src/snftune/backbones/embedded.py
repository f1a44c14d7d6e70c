"""Backbones pretrained by this project and shipped inside the package, so that the demo,
the tests and a first try need no download.

Each embedded backbone is an architecture (:data:`EMBEDDED`: a timm model with its settings)
plus, once ``snftune pretrain`` has run (:mod:`snftune.pretraining` holds the recipe),
``weights/<name>.safetensors`` and ``weights/<name>.json`` (the recipe as run, the time it
took, the upstream accuracy and the weights' sha256). ``create_embedded`` builds the
architecture from the JSON, checks the hash and loads the weights; the classifier head is
fresh whenever the class count differs from the upstream one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import timm
from torch import nn

from .errors import WeightsUnavailableError
from .weights import load_weights, read_state_dict

__all__ = [
    "EMBEDDED",
    "EmbeddedBackbone",
    "create_embedded",
    "embedded_names",
    "is_embedded",
    "read_record",
    "sha256_of",
    "weights_dir",
]

RANDOM = "random"  # pretrained="random": the same architecture, randomly initialised


@dataclass(frozen=True)
class EmbeddedBackbone:
    """An embedded backbone's architecture: a timm model name and its settings."""

    architecture: str
    model_kwargs: dict[str, Any]
    image_size: int
    description: str = ""


EMBEDDED: dict[str, EmbeddedBackbone] = {
    "snftune-vit-tiny": EmbeddedBackbone(
        architecture="vit_tiny_patch16_224",
        model_kwargs={"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
        image_size=32,
        description="ViT, 32 px input, 4 px patches (64 tokens + class token), width 96, 4 blocks, 3 heads; "
        "pretrained on the generated upstream set (24 classes disjoint from the downstream tasks)",
    ),
}


def weights_dir() -> Path:
    """The folder of the shipped weights (inside the installed package)."""
    return Path(str(resources.files("snftune.backbones") / "weights"))


def embedded_names() -> list[str]:
    """Names of the embedded backbones (whether or not their weights have been built)."""
    return sorted(EMBEDDED)


def is_embedded(name: str) -> bool:
    return name in EMBEDDED


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
    model_kwargs = record["model_kwargs"] if record else EMBEDDED[name].model_kwargs
    architecture = record["architecture"] if record else EMBEDDED[name].architecture
    model = timm.create_model(
        architecture, pretrained=False, **_architecture_kwargs(name, {"model_kwargs": model_kwargs}, kwargs)
    )
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "snftune_embedded": name,
        "snftune_weights": pretrained or "shipped",
        "snftune_sha256": record["sha256"] if record and pretrained is None else None,
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
    load_weights(model, {k: v.float() for k, v in read_state_dict(path).items()}, str(path))
    return model


def _has_record(name: str) -> bool:
    return (weights_dir() / f"{name}.json").is_file()
