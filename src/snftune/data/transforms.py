"""Per-protocol image transforms, sized and normalised from the model's pretrained data config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from timm.data.transforms import MaybeToTensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .augment import bound_rand_augments
from .errors import DataError
from .lists import to_rgb
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
        return img if img.mode == "RGB" else to_rgb(img, f"of mode {img.mode}")

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
    if protocol in ("fewshot", "dg", "other"):
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
    raise DataError(f"unknown protocol {protocol!r}; known: vtab, fgvc, fewshot, dg, other, folder")


# ---------------------------------------------------------------- what a pipeline does per call

#: Steps that map a PIL image to a PIL image the same way every time: their output can be
#: computed once and kept (``snftune.data.image_cache``).
GEOMETRY_STEPS: tuple[type, ...] = (ToRGB, T.Resize, T.CenterCrop)
#: Steps that turn an image into the model's input the same way every time.
TENSOR_STEPS: tuple[type, ...] = (T.ToTensor, MaybeToTensor, T.Normalize)


def transform_steps(transform: Callable | list[Callable] | None) -> list[Callable]:
    """The steps of a ``Compose`` or a list (a lone callable is one step; None is no step)."""
    if transform is None:
        return []
    if isinstance(transform, list):
        return list(transform)
    return list(transform.transforms) if isinstance(transform, T.Compose) else [transform]


def is_deterministic(transform: Callable | list[Callable] | None) -> bool:
    """Whether ``transform`` maps an image to the same output on every call.

    Decided by the steps' types, not by calling it: a step this module does not know (a random
    crop, RandAugment, a user's function) counts as random, so a feature or image cache is
    never built on an output that should have changed from epoch to epoch.
    """
    return all(isinstance(step, GEOMETRY_STEPS + TENSOR_STEPS) for step in transform_steps(transform))


def split_cacheable(transform: Callable | None) -> tuple[list[Callable], list[Callable]]:
    """``(prefix, rest)``: the leading :data:`GEOMETRY_STEPS` of ``transform`` and the steps after.

    Running ``rest`` on the prefix's output gives exactly what ``transform`` gives, because the
    prefix draws no random number and ``rest`` sees the same pixels. VTAB: ``[ToRGB, Resize]``,
    then to tensor; FGVC training: ``[ToRGB, Resize(shorter side)]``, then the random crop and
    flip; evaluation: ``[ToRGB, Resize, CenterCrop]``. The few-shot/DG training pipeline starts
    with a random resized crop of the original image, so its prefix is ``[ToRGB]`` alone.
    """
    steps = transform_steps(transform)
    cut = 0
    while cut < len(steps) and isinstance(steps[cut], GEOMETRY_STEPS):
        cut += 1
    return steps[:cut], steps[cut:]


class ToInputBatch:
    """``ToTensor`` then ``Normalize`` for a batch of uint8 (B, H, W, 3) pixels, on the device that
    holds them: the same float32 operations, element by element, as the two steps image by
    image, so the same numbers. A loader that ships pixels moves 4x fewer bytes than one that
    ships float tensors, and the device does the arithmetic.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected uint8 pixels of shape (B, H, W, 3), got {pixels.dtype} {tuple(pixels.shape)}")
        batch = pixels.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div_(255)
        if self.mean is None or self.std is None:
            return batch
        mean = torch.as_tensor(self.mean, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
        return batch.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def split_batch_tail(steps: list[Callable]) -> tuple[list[Callable], ToInputBatch | None]:
    """``(per_image, batch_step)``: when ``steps`` end with ``ToTensor`` (optionally followed by
    ``Normalize``), those become one :class:`ToInputBatch`; otherwise ``(steps, None)``."""
    if steps and isinstance(steps[-1], T.Normalize) and len(steps) >= 2:
        to_tensor, normalize = steps[-2], steps[-1]
        if isinstance(to_tensor, (T.ToTensor, MaybeToTensor)):
            return steps[:-2], ToInputBatch(normalize.mean, normalize.std)
    if steps and isinstance(steps[-1], (T.ToTensor, MaybeToTensor)):
        return steps[:-1], ToInputBatch()
    return steps, None
