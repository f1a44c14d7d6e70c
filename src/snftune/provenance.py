"""Where a number came from: the weights (file and sha256, or hub tag), the model's input size
and normalisation, a fingerprint of the data, the method and training settings, the seed, the
versions, the git commit and the device. Written as ``provenance.json`` in every run folder and
carried into ``metrics.json`` and the result tables, so that two tables can be compared on what
made them before anyone compares their accuracies (``snftune bench --compare``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import timm
import torch

from .backbones.factory import looks_like_path
from .data import Task
from .data.fingerprint import task_fingerprint

__all__ = ["PROVENANCE_NAME", "common_fields", "differences", "environment", "flatten", "run_provenance"]

PROVENANCE_NAME = "provenance.json"


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached by (path, size, mtime): a grid hashes its weights once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def weights_identity(model: torch.nn.Module, pretrained: str | None) -> dict[str, Any]:
    """Which weights the backbone holds: a local file with its sha256, a hub tag, the embedded
    backbone's shipped file, or random initialisation."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    embedded = cfg.get("snftune_embedded")
    if embedded and pretrained is None:
        return {"source": "embedded", "name": embedded, "sha256": cfg.get("snftune_sha256")}
    if pretrained is None or pretrained == "random":
        return {"source": "random"}
    if looks_like_path(pretrained):
        return {"source": "file", "path": str(pretrained), "sha256": file_sha256(pretrained)}
    return {"source": "hub", "tag": cfg.get("tag") or pretrained, "hf_hub_id": cfg.get("hf_hub_id")}


@functools.lru_cache(maxsize=1)
def _git() -> dict[str, Any] | None:
    """The commit of the checkout snftune runs from, if it runs from one."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": bool(status.strip())}


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, the git commit (from a checkout) and the device."""
    from . import __version__

    chosen = torch.device(device or "cpu")
    name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else platform.processor() or platform.machine()
    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "snftune": __version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "git": _git(),
        "device": {"type": chosen.type, "name": name},
    }


def run_provenance(
    model: torch.nn.Module,
    pretrained: str | None,
    data_config: dict[str, Any],
    task: Task,
    splits: list[str],
    method: dict[str, Any],
    train: dict[str, Any],
    device: torch.device | str | None,
    autocast: str | None = None,
) -> dict[str, Any]:
    """The provenance record of one run (``splits``: the splits it reads, and only those;
    ``autocast``: the autocast dtype the run uses, ``"bfloat16"``/``"float16"``, None for float32)."""
    return {
        "weights": weights_identity(model, pretrained),
        "model": {
            "architecture": (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__),
            "input_size": list(data_config["input_size"]),
            "mean": [float(v) for v in data_config["mean"]],
            "std": [float(v) for v in data_config["std"]],
            "interpolation": data_config.get("interpolation"),
        },
        "data": task_fingerprint(task, [s for s in splits if s]),
        "method": method,
        "train": train,
        "autocast": autocast,
        "seed": train.get("seed"),
        **environment(device),
    }


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    if not isinstance(record, dict):
        return {prefix: record}
    flat: dict[str, Any] = {}
    for key, value in record.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def common_fields(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The flattened fields whose values every record shares."""
    flats = [flatten(record) for record in records]
    if not flats:
        return {}
    return {key: value for key, value in flats[0].items() if all(flat.get(key) == value for flat in flats[1:])}


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The flattened keys whose values differ between two records: key -> (a's, b's)."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
