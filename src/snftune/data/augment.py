"""timm's RandAugment with every operation's argument held inside the range Pillow accepts.

timm draws each operation's magnitude from N(m, mstd) when a policy has ``mstd > 0``, clips it to
[0, 10] (or [0, mmax]) and maps it to the operation's argument. Some of those arguments are not
valid Pillow input: at magnitude 10 ``PosterizeIncreasing`` asks to keep 0 bits (``Posterize`` does
at magnitudes below 2.5, and with ``mmax`` above 10 posterize asks for negative bits). Pillow before
13 turned 0 bits into a black image; Pillow 13 raises ``ValueError: bits must be between or equal
to 1 and 8``. Under the few-shot/DG policy ``rand-m9-mstd0.5-inc1`` the magnitude reaches 10 in
2.3% of draws, so about 1.5 in 1,000 training images crashed the run.

The policy built here is timm's own (the same operations, probabilities, magnitudes and random
draws), with each operation's argument clamped to :data:`ARG_LIMITS`: where timm asks for 0 bits,
posterize keeps 1 bit. An operation without a known range is refused when the policy is built,
so a new timm operation cannot slip past the clamp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from timm.data.auto_augment import AugmentOp, RandAugment, rand_augment_transform

from .errors import DataError

_ANY = (-math.inf, math.inf)

#: The argument range Pillow (and the meaning of the operation) allows, per timm operation name.
ARG_LIMITS: dict[str, tuple[float, float]] = {
    "AutoContrast": _ANY,
    "Equalize": _ANY,
    "Invert": _ANY,
    "Rotate": _ANY,  # degrees
    "Posterize": (1, 8),  # bits kept per channel: ImageOps.posterize accepts 1..8
    "PosterizeIncreasing": (1, 8),
    "PosterizeOriginal": (1, 8),
    "Solarize": (0, 256),  # threshold; 256 inverts nothing
    "SolarizeIncreasing": (0, 256),
    "SolarizeAdd": (0, 128),  # added to pixels below 128
    "Color": (0, math.inf),  # enhancement factors: 0 = grey/flat/black/blurred, 1 = unchanged
    "ColorIncreasing": (0, math.inf),
    "Contrast": (0, math.inf),
    "ContrastIncreasing": (0, math.inf),
    "Brightness": (0, math.inf),
    "BrightnessIncreasing": (0, math.inf),
    "Sharpness": (0, math.inf),
    "SharpnessIncreasing": (0, math.inf),
    "ShearX": _ANY,
    "ShearY": _ANY,
    "TranslateX": _ANY,
    "TranslateY": _ANY,
    "TranslateXRel": _ANY,
    "TranslateYRel": _ANY,
    "Desaturate": (0, 1),
    "GaussianBlur": (0, math.inf),  # radius
    "GaussianBlurRand": (0, math.inf),
}


def _clamped_level(
    level_fn: Callable[[float, dict[str, Any]], tuple], low: float, high: float, magnitude: float, hparams: dict
) -> tuple:
    return tuple(min(high, max(low, arg)) for arg in level_fn(magnitude, hparams))


def bound_operation(op: AugmentOp) -> AugmentOp:
    """Clamp ``op``'s argument to its :data:`ARG_LIMITS` range (in place); returns ``op``."""
    if op.name not in ARG_LIMITS:
        raise DataError(
            f"RandAugment operation {op.name!r} has no known argument range, so it could hand Pillow an "
            f"invalid value; known operations: {', '.join(ARG_LIMITS)}. Add its range to "
            "snftune.data.augment.ARG_LIMITS or use a timm version whose operations are all known."
        )
    if op.level_fn is not None and not _is_bounded(op.level_fn):
        op.level_fn = partial(_clamped_level, op.level_fn, *ARG_LIMITS[op.name])
    return op


def _is_bounded(level_fn: Callable) -> bool:
    return isinstance(level_fn, partial) and level_fn.func is _clamped_level


def bounded_rand_augment(config: str, hparams: dict[str, Any] | None = None) -> RandAugment:
    """timm's ``rand_augment_transform(config, hparams)`` with every operation bounded,
    e.g. ``bounded_rand_augment("rand-m9-mstd0.5-inc1")``."""
    policy = rand_augment_transform(config, dict(hparams) if hparams else None)
    for op in policy.ops:
        bound_operation(op)
    return policy


def bound_rand_augments(transforms: list[Callable]) -> list[Callable]:
    """Bound the operations of every RandAugment among ``transforms`` (e.g. the steps of a
    pipeline from timm's ``create_transform``); the list is returned for chaining."""
    for transform in transforms:
        if isinstance(transform, RandAugment):
            for op in transform.ops:
                bound_operation(op)
    return transforms
