"""Linear probing on cached features: the frozen backbone runs once per image, not once per epoch.

When every trainable parameter belongs to the classifier head, training changes nothing
before the head: the backbone's pooled features (timm's ``forward_features`` then
``forward_head(pre_logits=True)``) are the same every epoch for a deterministic transform. They
are computed once per image of the training and evaluation splits, with the backbone in eval
mode, as evaluation computes them (drop-path and dropout off; VPT's linear probing keeps its
frozen encoder in eval mode too), and :func:`~snftune.engine.trainer.train` then trains the
model with its forward replaced by the head alone on those features. The optimiser, the
schedule, the seeded data order, checkpoints, resumption, ``metrics.json`` and
``tuned.safetensors`` are the engine's own, on the model itself, so the tuned file is the one
an end-to-end run writes.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from ..errors import SnftuneError
from ..tuning import head_parameter_names
from .acceleration import amp_dtype, autocast
from .config import TrainConfig
from .distributed import DistInfo
from .trainer import train

__all__ = [
    "FeatureCacheError",
    "FeatureCacheWarning",
    "extract_features",
    "head_on_features",
    "train_head_on_features",
    "trains_head_only",
]

_PARITY_TOLERANCE = 1e-4  # |head(features) - model(images)|, relative to the logits' scale


class FeatureCacheError(SnftuneError, RuntimeError):
    """The model's logits are not its classifier applied to its pooled features."""


class FeatureCacheWarning(UserWarning):
    """Linear probing could not use cached features and trains end to end."""


def trains_head_only(model: nn.Module) -> bool:
    """Whether the model's trainable parameters are all (and only) its classifier head's:
    decided from the parameters that require gradients, not from the method's name."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return bool(trainable) and trainable <= set(head_parameter_names(model))


@contextmanager
def head_on_features(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model(features)`` is ``model.get_classifier()(features)``: the engine
    trains and evaluates the model itself (its parameters, names and tuned file unchanged)."""
    classifier = model.get_classifier()
    model.forward = classifier.forward  # an instance attribute shadows the class's forward
    try:
        yield model
    finally:
        del model.forward


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, one intra-op thread while the head trains: its products are a few thousand
    multiply-adds, and synchronising threads costs more than the arithmetic (a step of a 192 x 8
    head on a batch of 64 took 1.0 ms with two threads on a busy 2-core machine, 0.05 ms with one)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    dtype: torch.dtype | None = None,
) -> TensorDataset:
    """``(pooled features, label)`` of every sample of ``dataset``, in order, as float32 on the CPU.

    The model runs in eval mode (its mode is restored after). The first batch checks that the
    classifier applied to the features gives the model's logits; :class:`FeatureCacheError` when
    it does not (a model whose head is more than its classifier).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # draws nothing from the run's random streams
    )
    classifier = model.get_classifier()
    finish = getattr(dataset, "batch_transform", None)
    features, labels = [], []
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            if finish is not None:
                images = finish(images)
            with autocast(device, dtype):
                tokens = model.forward_features(images)
                pooled = model.forward_head(tokens, pre_logits=True)
                if not features:
                    _check_parity(classifier(pooled).float(), model.forward_head(tokens).float())
            features.append(pooled.float().cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        model.train(was_training)
    cached = TensorDataset(torch.cat(features), torch.cat(labels))
    cached.draws_randomness = False  # read without seeding (engine/sampling.py)
    return cached


def _check_parity(from_features: torch.Tensor, logits: torch.Tensor) -> None:
    scale = logits.abs().max().item() + 1.0
    error = (from_features - logits).abs().max().item()
    if not error <= _PARITY_TOLERANCE * scale:
        raise FeatureCacheError(
            f"the classifier applied to the pooled features differs from the model's logits by {error:.3g}; "
            "this model's head does more than its classifier, so its features cannot stand in for its images"
        )


def train_head_on_features(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    eval_set: Dataset | None = None,
    dist: DistInfo | None = None,
    record: dict[str, Any] | None = None,
    **train_options: Any,
) -> dict[str, Any]:
    """:func:`~snftune.engine.trainer.train` for a model that trains its head only, on features
    computed once (see the module's notes). Takes ``train``'s arguments; ``record["inputs"]``
    says what the head was trained on (it reaches ``log.jsonl`` and ``metrics.json``).
    """
    if not trains_head_only(model):
        raise ValueError("train_head_on_features needs a model whose only trainable parameters are its head's")
    dist = dist or DistInfo()
    device = dist.device
    model.to(device)
    start = time.perf_counter()
    options = {
        "batch_size": config.eval_batch_size or config.batch_size,
        "device": device,
        "workers": config.workers,
        "dtype": amp_dtype(config, device),
    }
    try:
        train_features = extract_features(model, train_set, **options)
    except FeatureCacheError as error:
        warnings.warn(f"{error}; training end to end instead", FeatureCacheWarning, stacklevel=2)
        return train(model, train_set, config, out_dir, eval_set=eval_set, dist=dist, record=record, **train_options)
    eval_features = extract_features(model, eval_set, **options) if eval_set is not None else None
    seconds = time.perf_counter() - start
    inputs = {
        "kind": "cached features",
        "feature_dim": int(train_features.tensors[0].shape[1]),
        "images": len(train_features) + (len(eval_features) if eval_features is not None else 0),
        "extract_s": round(seconds, 3),
        "backbone": "eval mode (drop-path and dropout off), run once per image",
    }
    if dist.is_main:
        tqdm.write(
            f"linear probing on cached features: the frozen backbone encoded {inputs['images']:,} images once "
            f"({seconds:.1f}s); the head trains on them (--no-feature-cache trains end to end)"
        )
    # The features are in memory: worker processes would only add copying.
    config = copy.copy(config)
    config.workers = 0
    with head_on_features(model), _one_cpu_thread(device):
        return train(
            model,
            train_features,
            config,
            out_dir,
            eval_set=eval_features,
            dist=dist,
            record={**(record or {}), "inputs": inputs},
            **train_options,
        )
