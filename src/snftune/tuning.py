"""The public tuning API: apply a method, check what is trainable, save and load tuned weights.

Modelled on HF PEFT's habits: ``apply`` edits the model in place and leaves only the
method's parameters and the classifier head trainable; ``save_tuned`` writes only those
tensors (kilobytes per task) with the method config in the file's metadata, so
``load_tuned`` can rebuild the method on a fresh backbone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_write
from .backbones import anatomy, install_sites
from .errors import SnftuneError
from .methods.common import Mergeable
from .methods.registry import (
    MethodConfig,
    capabilities,
    config_from_dict,
    method_for,
    refuse_unsupported_family,
    resolve_config,
)

__all__ = [
    "TuningState",
    "TrainableSummary",
    "TunedFileError",
    "apply",
    "head_parameter_names",
    "tuned_tensors",
    "trainable_summary",
    "save_tuned",
    "load_tuned",
    "read_tuned_tensors",
    "merge",
    "unmerge",
    "NotMergeableError",
]

FORMAT_VERSION = "1"


class TunedFileError(SnftuneError, ValueError):
    """A tuned-weights file that does not fit the model (or is not one)."""


@dataclass
class TuningState:
    """What ``apply`` did to a model; kept on the model as ``model.snftune_state``."""

    config: MethodConfig
    label: str
    architecture: str
    fingerprint: str


class FrozenStatsBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Marker base: BatchNorm whose running statistics stay frozen in train mode."""

    def train(self, mode: bool = True) -> nn.Module:
        super().train(False)
        return self


_FROZEN_STATS_CLASSES: dict[type, type] = {}


def _freeze_norm_statistics(model: nn.Module) -> None:
    """Keeps every BatchNorm in eval mode, whatever ``model.train()`` later says.

    A frozen backbone's BatchNorm would otherwise overwrite its pretrained running
    statistics in train mode, and a tuned-only checkpoint would silently lose the change.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, FrozenStatsBatchNorm):
            cls = type(module)
            if cls not in _FROZEN_STATS_CLASSES:
                name = f"FrozenStats{cls.__name__}"
                # Module-level and named, so that pickling a whole tuned model finds the class.
                frozen = type(name, (FrozenStatsBatchNorm, cls), {"__module__": __name__, "__qualname__": name})
                globals()[name] = _FROZEN_STATS_CLASSES[cls] = frozen
            module.__class__ = _FROZEN_STATS_CLASSES[cls]
            module.train(False)


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classifier head's parameters (timm's ``get_classifier()``)."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return []
    head = get_classifier()
    prefix = next((name for name, module in model.named_modules() if module is head), None)
    if prefix is None:
        return []
    return [f"{prefix}.{name}" if prefix else name for name, _ in head.named_parameters()]


def _backbone_fingerprint(model: nn.Module) -> str:
    """A hash of the backbone's tensor names and shapes, the classifier head excluded."""
    head = {name.rsplit(".", 1)[0] for name in head_parameter_names(model)}
    entries = [
        f"{name}:{tuple(tensor.shape)}"
        for name, tensor in model.state_dict().items()
        if name.rsplit(".", 1)[0] not in head
    ]
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]


def apply(model: nn.Module, method: str | MethodConfig, **overrides: Any) -> nn.Module:
    """Applies a tuning method to a timm model in place and returns it.

    The backbone is frozen; the method's parameters and the classifier head stay trainable.
    BatchNorm statistics are frozen unless the method trains the whole backbone.

    Args:
        model: a timm model of a supported family (ViT/DeiT, EVA, BEiT, Swin/Swin V2, ResNet,
            RegNet, ConvNeXt, EfficientNet/MobileNet; see the README's supported backbones).
        method: a method or preset name (``"snf-deep"``), a YAML file, or a config instance.
        **overrides: config fields to override, e.g. ``planar_steps=3``.
    """
    if getattr(model, "snftune_state", None) is not None:
        raise ValueError(
            f"this model is already tuned with '{model.snftune_state.label}'; "
            "create a fresh model to apply another method"
        )
    config = resolve_config(method, **overrides)
    label = method if isinstance(method, str) and not method.endswith((".yaml", ".yml")) else config.method
    spec = method_for(config)
    fingerprint = _backbone_fingerprint(model)
    trainable_before = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    try:
        if spec.capabilities.unsupported_families:
            refuse_unsupported_family(config, install_sites(model).family)
        spec.apply(model, config)
    except Exception:
        # Methods check that they fit before editing the model; leave the caller's flags as they were.
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable_before.get(name, False))
        raise
    head = set(head_parameter_names(model))
    for name, parameter in model.named_parameters():
        if name in head:
            parameter.requires_grad_(True)
    if not config.updates_norm_statistics:
        _freeze_norm_statistics(model)
    model.snftune_state = TuningState(config, label, _architecture(model), fingerprint)
    return model


def tuned_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a tuned checkpoint holds: every trainable parameter, plus the persistent
    buffers (e.g. BatchNorm statistics) of every module that owns a trainable parameter."""
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not any(p.requires_grad for p in own.values()):
            continue
        prefix = f"{module_name}." if module_name else ""
        for name, parameter in own.items():
            if parameter.requires_grad:
                tensors[prefix + name] = parameter
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                tensors[prefix + name] = buffer
    return tensors


@dataclass(frozen=True)
class TrainableSummary:
    """Trainable parameter counts; ``skipless_blocks`` names the blocks of a model with residual
    sites that have no residual connection (so no site: shortcut methods leave them as they are)."""

    method: str
    tuned: int
    head: int
    total: int
    skipless_blocks: tuple[str, ...] = ()

    def __str__(self) -> str:
        share = 100.0 * (self.tuned + self.head) / max(self.total, 1)
        text = (
            f"{self.method}: tuned {self.tuned:,} ({self.tuned / 1e6:.3f}M) + head {self.head:,} "
            f"= {self.tuned + self.head:,} trainable of {self.total:,} parameters ({share:.3f}%)"
        )
        if self.skipless_blocks:
            text += f"; {len(self.skipless_blocks)} blocks have no residual connection, so no site: " + ", ".join(
                self.skipless_blocks
            )
        return text


def _skipless_blocks(model: nn.Module) -> tuple[str, ...]:
    try:
        return tuple(anatomy(model).skipless_blocks)
    except ValueError:  # no sites installed: the method did not need them
        return ()


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Counts trainable parameters, separating the classifier head from the method's own."""
    head = set(head_parameter_names(model))
    tuned = head_count = total = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            if name in head:
                head_count += parameter.numel()
            else:
                tuned += parameter.numel()
    state = getattr(model, "snftune_state", None)
    return TrainableSummary(state.label if state else "untuned", tuned, head_count, total, _skipless_blocks(model))


def _require_state(model: nn.Module) -> TuningState:
    state = getattr(model, "snftune_state", None)
    if state is None:
        raise ValueError("this model was not tuned with snftune.apply; apply a method first")
    return state


def save_tuned(model: nn.Module, path: str | os.PathLike) -> Path:
    """Writes only the tuned tensors (head included) to a safetensors file, atomically.

    The file's metadata holds the method config, the label it was applied with, and the
    backbone's architecture and shape fingerprint, so that ``load_tuned`` can check them.
    """
    state = _require_state(model)
    path = Path(path)
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tuned_tensors(model).items()}
    metadata = {
        "snftune_format": FORMAT_VERSION,
        "method": state.config.method,
        "label": state.label,
        "config": json.dumps(state.config.to_dict(), sort_keys=True),
        "architecture": state.architecture,
        "fingerprint": state.fingerprint,
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), io_errors=(SafetensorError,))


def read_tuned_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The snftune metadata of a tuned-weights file, with clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuned-weights file {path} does not exist; pass the file written by save_tuned")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise TunedFileError(
            f"{path} is not a safetensors file ({error}); pass a file written by save_tuned"
        ) from error
    if "snftune_format" not in metadata:
        raise TunedFileError(
            f"{path} is a safetensors file without snftune metadata: it was not written by snftune.save_tuned"
        )
    if metadata["snftune_format"] != FORMAT_VERSION:
        raise TunedFileError(
            f"{path} has snftune format {metadata['snftune_format']}; this version reads {FORMAT_VERSION}"
        )
    recover = "its metadata was edited or cut; use the file as save_tuned wrote it, or train again"
    for key in ("method", "config", "architecture", "fingerprint"):
        if not metadata.get(key):
            raise TunedFileError(f"{path}: the snftune metadata has no '{key}'; {recover}")
    try:
        config = json.loads(metadata["config"])
    except ValueError:
        raise TunedFileError(f"{path}: the metadata's 'config' is not JSON; {recover}") from None
    if not isinstance(config, dict):
        raise TunedFileError(
            f"{path}: the metadata's 'config' is a JSON {type(config).__name__}, not an object; {recover}"
        )
    return metadata


def read_tuned_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The file's tensors, every one finite: NaN weights (a run that diverged, a damaged copy) would
    otherwise evaluate to a plausible chance-level top-1 and predict NaN probabilities without a word."""
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several types for damaged files
        raise TunedFileError(f"{path} is damaged or truncated ({error}); it cannot be loaded") from None
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise TunedFileError(
            f"{path} holds NaN or infinite weights ({', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}); "
            "the run that wrote it diverged or the file is damaged: train again (a lower --lr, --grad-clip)"
        )
    return tensors


def _check_fits(model: nn.Module, loaded: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The model's tuned tensors, after checking that ``loaded`` has exactly their names and shapes."""
    expected = tuned_tensors(model)
    missing, unexpected = sorted(set(expected) - set(loaded)), sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise TunedFileError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in loaded.items():
        if tensor.shape != expected[name].shape:
            hint = " (is num_classes the same?)" if name in head_parameter_names(model) else ""
            raise TunedFileError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}{hint}"
            )
    return expected


def load_tuned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restores tuned weights into ``model`` exactly, applying the file's method first if needed.

    Raises:
        FileNotFoundError: the file does not exist.
        TunedFileError: not an snftune file, or made for another backbone, method or head.
    """
    path = Path(path)
    metadata = read_tuned_metadata(path)
    config = config_from_dict(metadata["method"], json.loads(metadata["config"]))
    state = getattr(model, "snftune_state", None)
    architecture = state.architecture if state else _architecture(model)
    fingerprint = state.fingerprint if state else _backbone_fingerprint(model)
    if metadata["architecture"] != architecture or metadata["fingerprint"] != fingerprint:
        detail = (
            "the same architecture with other shapes (img_size, depth, patch size, ...)"
            if metadata["architecture"] == architecture
            else f"architecture '{architecture}'"
        )
        raise TunedFileError(
            f"{path} was made for backbone '{metadata['architecture']}' (fingerprint {metadata['fingerprint']}); "
            f"this model has {detail} (fingerprint {fingerprint}). Build the backbone the file was tuned on."
        )
    loaded = read_tuned_tensors(path)
    if state is None:
        # Check the file against a copy first: a file that does not fit must leave the model as it
        # was (untuned), so that loading the right file next still works.
        _check_fits(apply(copy.deepcopy(model), config), loaded, path)
        apply(model, config)
        model.snftune_state.label = metadata.get("label", config.method)
    elif state.config != config:
        raise TunedFileError(
            f"{path} holds method {config.to_json()}, but this model is tuned with {state.config.to_json()}"
        )
    expected = _check_fits(model, loaded, path)
    with torch.no_grad():
        for name, tensor in loaded.items():
            expected[name].copy_(tensor)
    return model


class NotMergeableError(SnftuneError, ValueError):
    """``snftune.merge`` on a model whose method did not declare itself mergeable."""


def _mergeable_layers(model: nn.Module, action: str) -> list[Mergeable]:
    """The layers of a tuned model that fold into their frozen weights, once its method's
    declaration (:class:`~snftune.Capabilities`) says it is mergeable."""
    state = getattr(model, "snftune_state", None)
    if state is None:
        raise NotMergeableError(f"only a model tuned with snftune.apply (or load_tuned) can be {action}d")
    declared = capabilities(state.config)
    if not declared.mergeable:
        raise NotMergeableError(f"'{state.label}' cannot be merged into the backbone: {declared.reason('mergeable')}")
    return [m for m in model.modules() if isinstance(m, Mergeable) and m.mergeable]


def merge(model: nn.Module) -> int:
    """Folds every update of a tuned model into its frozen layers (each layer's own ``merge()``);
    returns the layers merged. The outputs stay the same (to rounding) and inference costs what
    the backbone's does. Methods whose tuned tensors already live in the backbone's own layers
    (linear, bitfit, full) merge 0 layers. A method not declared mergeable is refused with its reason."""
    layers = _mergeable_layers(model, "merge")
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Undoes :func:`merge` exactly (each layer kept its original weights); returns the layers unmerged."""
    layers = _mergeable_layers(model, "unmerge")
    for layer in layers:
        layer.unmerge()
    return len(layers)
