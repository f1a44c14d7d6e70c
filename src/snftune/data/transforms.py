"""Per-protocol image transforms, sized and normalised from the model's pretrained data config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .augment import bound_rand_augments
from .errors import DataError
from .protocols import ProtocolSettings, protocol_settings

DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_DEFAULT_MEAN,
    "std": IMAGENET_DEFAULT_STD,
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}


def model_data_config(model: torch.nn.Module, **overrides: Any) -> dict[str, Any]:
    """timm's ``resolve_data_config`` for ``model`` (its ``pretrained_cfg``), with keys overridden,
    e.g. ``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)`` for an ImageNet-normalised run."""
    config = dict(resolve_data_config({}, model=model))
    return _override(config, overrides)


def _override(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(DEFAULT_DATA_CONFIG))
    if unknown:
        raise DataError(f"unknown data config key(s) {unknown}; known: {sorted(DEFAULT_DATA_CONFIG)}")
    config = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    size = config["input_size"]
    if isinstance(size, int):
        config["input_size"] = (3, size, size)
    elif len(size) == 2:
        config["input_size"] = (3, *size)
    return config


def _interp(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        raise DataError(f"unknown interpolation {name!r}; use bicubic, bilinear or nearest") from None


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))]


class ToRGB:
    """Any PIL mode (L, P, RGBA, CMYK, …) to RGB, so every step after it sees three 8-bit channels."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transform(
    protocol: str,
    data_config: dict[str, Any] | None = None,
    train: bool = True,
    settings: ProtocolSettings | None = None,
    **overrides: Any,
) -> Callable:
    """The train or eval transform of ``protocol`` (PIL image -> normalised tensor).

    ``data_config`` is timm's ``resolve_data_config`` dict (``input_size``, ``mean``, ``std``, …;
    None = timm's ImageNet defaults at 224). ``overrides`` replace keys of it (``mean``, ``std``,
    ``input_size``, ``interpolation``). Sizes scale with ``input_size``: the FGVC/NOAH 256->224
    resize-and-crop becomes ``round(H * 256/224)`` -> ``H``. The interpolation is the protocol's
    (bicubic; bilinear for FGVC) unless overridden.

    Every pipeline starts by converting the image to RGB, whatever its mode. The few-shot/DG
    training pipeline is timm's ``create_transform`` (as NOAH's), with its RandAugment bounded by
    :mod:`snftune.data.augment` so that no magnitude draw can hand Pillow an invalid argument.
    """
    settings = settings or protocol_settings(protocol)
    config = _override(dict(data_config or DEFAULT_DATA_CONFIG), overrides)
    interpolation = overrides.get("interpolation") or settings.interpolation
    return T.Compose([ToRGB(), *_protocol_steps(protocol, settings, config, interpolation, train)])


def _protocol_steps(
    protocol: str, settings: ProtocolSettings, config: dict[str, Any], interpolation: str, train: bool
) -> list[Callable]:
    _, height, width = config["input_size"]
    size, mean, std = (height, width), config["mean"], config["std"]
    mode = _interp(interpolation)
    resize = round(height * settings.test_resize_ratio)
    if protocol == "vtab":
        return [T.Resize(size, interpolation=mode), *_tail(mean, std)]
    if protocol in ("fgvc", "folder"):
        if train:
            crop = [T.Resize(resize, interpolation=mode), T.RandomCrop(size), T.RandomHorizontalFlip()]
        else:
            crop = [T.Resize(resize, interpolation=mode), T.CenterCrop(size)]
        return [*crop, *_tail(mean, std)]
    if protocol in ("fewshot", "dg"):
        if train:
            timm_pipeline = create_transform(
                input_size=(3, *size),
                is_training=True,
                auto_augment=settings.auto_augment,
                interpolation=interpolation,
                mean=tuple(mean),
                std=tuple(std),
                re_prob=settings.random_erase,
            )
            return bound_rand_augments(list(timm_pipeline.transforms))
        return [T.Resize(resize, interpolation=mode), T.CenterCrop(size), *_tail(mean, std)]
    raise DataError(f"unknown protocol {protocol!r}; known: vtab, fgvc, fewshot, dg, folder")
