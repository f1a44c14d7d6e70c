"""Pretrained weights from local files, read without unpickling code and checked to fit.

timm's own file loader unpickles ``.pth`` files (``weights_only=False``) and, when the class
count differs from the checkpoint's, loads non-strictly: a checkpoint of another architecture
then leaves the backbone random with only a log warning. Here every file is read as tensors
only, converted by the model family's own checkpoint filter (timm's ``checkpoint_filter_fn``:
original ViT layouts, position-embedding resizing), and loaded strictly except for the
classifier head, which is skipped only when its shape differs (another class count).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import WeightsUnavailableError

__all__ = ["read_state_dict", "load_weights"]

WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``.pth``/``.pt``/``.bin`` file holding
    only tensors and plain data (a training checkpoint's ``state_dict``/``model`` entry is
    taken, a ``module.`` prefix from DDP removed)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise many types for damaged or unsafe files
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise WeightsUnavailableError(
            f"{path} cannot be read as weights ({type(error).__name__}: {reason}); it is damaged, truncated, or "
            "holds objects that need pickle, which snftune never loads. Pass a .safetensors file or a .pth of tensors"
        ) from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} holds no state dict of tensors; pass a file of the model's weights")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _family_filter(model: nn.Module):
    """timm's ``checkpoint_filter_fn`` of the model's module, or None."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _head_keys(model: nn.Module) -> set[str]:
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if get_classifier is not None else None
    if not isinstance(head, nn.Module):
        return set()
    prefix = next((name for name, module in model.named_modules() if module is head), None)
    return {f"{prefix}.{name}" if prefix else name for name in head.state_dict()} if prefix is not None else set()


def _sample(keys: list[str], count: int = 4) -> str:
    shown = ", ".join(keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``model`` strictly, the classifier head excepted when its shape
    differs; raises :class:`WeightsUnavailableError` naming missing, unexpected or misshapen keys."""
    name = type(model).__name__
    filter_fn = _family_filter(model)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as error:  # a filter meets a checkpoint of another family
            raise WeightsUnavailableError(
                f"{source} does not fit {name}: timm's conversion failed ({type(error).__name__}: {error})"
            ) from None
    own = model.state_dict()
    head = _head_keys(model)
    state = {k: v for k, v in state.items() if not (k in head and k in own and own[k].shape != v.shape)}
    misshapen = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if misshapen or missing or unexpected:
        parts = [
            f"{len(missing)} missing ({_sample(missing)})" if missing else "",
            f"{len(unexpected)} unexpected ({_sample(unexpected)})" if unexpected else "",
            f"{len(misshapen)} of another shape ({_sample(misshapen, 2)})" if misshapen else "",
        ]
        raise WeightsUnavailableError(
            f"{source} does not fit {name}: "
            + "; ".join(p for p in parts if p)
            + ". Are these the weights of this architecture (and of its img_size, patch size, depth)?"
        )
    model.load_state_dict(state, strict=False)
