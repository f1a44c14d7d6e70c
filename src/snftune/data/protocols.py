"""Each protocol's settings as plain data: how images are prepared, and how its training
differs from the engine's defaults (which are the VTAB-1k recipe), for the run to apply and
result tables to cite. See docs/protocols.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import DataError


@dataclass(frozen=True)
class ProtocolSettings:
    """How one protocol prepares images and trains.

    ``train`` holds the training settings (names of :class:`snftune.engine.TrainConfig`) in
    which the protocol differs from the engine's defaults, the VTAB-1k recipe (AdamW, lr 1e-3,
    weight decay 1e-4, batch 64, 100 epochs, 10 warm-up epochs from 1e-6, cosine to 1e-5).
    :func:`build_transform` reads ``auto_augment``, ``random_erase``, ``interpolation`` and
    ``test_resize_ratio``; ``drop_path`` is a model setting. ``source`` says where the numbers
    come from.
    """

    protocol: str
    train: dict[str, Any] = field(default_factory=dict)
    drop_path: float = 0.1
    auto_augment: str | None = None
    random_erase: float = 0.0
    interpolation: str = "bicubic"
    test_resize_ratio: float = 256 / 224
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtocolSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown protocol setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


_VTAB = ProtocolSettings(
    protocol="vtab",
    source="VTAB-1k recipe for ViT-B/16 (VPT, NOAH, SSF): AdamW, cosine, direct bicubic resize, no augmentation.",
)
_NOAH = replace(
    _VTAB,
    train={"lr": 5e-3, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1},
    auto_augment="rand-m9-mstd0.5-inc1",
    source="NOAH's few-shot and domain-generalisation recipe: lr, RandAugment, mixup, cutmix, label smoothing, "
    "test resize 256/crop 224; the other numbers follow the VTAB recipe.",
)
_FGVC = replace(
    _VTAB,
    protocol="fgvc",
    interpolation="bilinear",
    source="VPT's FGVC transforms: resize 256, random crop 224 + flip / centre crop 224; optimiser "
    "numbers follow the VTAB recipe, tune them on train -> val.",
)
_SETTINGS = {
    "vtab": _VTAB,
    "fgvc": _FGVC,
    "fewshot": replace(_NOAH, protocol="fewshot"),
    "dg": replace(_NOAH, protocol="dg"),
    "other": replace(
        _NOAH,
        protocol="other",
        source="Other visual recognition tasks (ImageNet-1k 16-shot, CIFAR-100 full): NOAH's recipe, as for the "
        "ImageNet 16-shot source of domain generalisation.",
    ),
    "folder": replace(_FGVC, protocol="folder", source="User data: the FGVC pipeline and the VTAB recipe."),
}


def protocol_settings(protocol: str, **overrides: Any) -> ProtocolSettings:
    """The settings of ``protocol`` (``vtab``, ``fgvc``, ``fewshot``, ``dg``, ``other``, ``folder``).

    Keyword arguments override fields, e.g. ``protocol_settings("vtab", train={"lr": 5e-4})``.
    """
    if protocol not in _SETTINGS:
        raise DataError(f"unknown protocol {protocol!r}; known: {', '.join(_SETTINGS)}")
    settings = _SETTINGS[protocol]
    return ProtocolSettings.from_dict({**settings.to_dict(), **overrides}) if overrides else settings


PROTOCOLS: tuple[str, ...] = tuple(_SETTINGS)
"""Every protocol's name."""
