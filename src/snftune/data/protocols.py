"""Training settings of each protocol as plain data, for the engine to read and result tables to cite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import DataError


@dataclass(frozen=True)
class ProtocolSettings:
    """Optimiser, schedule and augmentation numbers of one protocol.

    The data layer uses ``auto_augment``, ``random_erase``, ``interpolation`` and ``test_resize_ratio``
    in :func:`build_transform`; the rest (mixup, cutmix, label smoothing, drop path, schedule) is
    for the engine. ``source`` says where the numbers come from.
    """

    protocol: str
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 100
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    scheduler: str = "cosine"
    batch_size: int = 64
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
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
    source="VTAB-1k recipe for ViT-B/16 (DATA.md): AdamW, cosine, direct bicubic resize, no augmentation.",
)
_NOAH = replace(
    _VTAB,
    lr=5e-3,
    mixup=0.8,
    cutmix=1.0,
    label_smoothing=0.1,
    auto_augment="rand-m9-mstd0.5-inc1",
    source="NOAH (DATA.md): lr, RandAugment, mixup, cutmix, label smoothing, test resize 256/crop 224; "
    "the other numbers follow the VTAB recipe.",
)
_FGVC = replace(
    _VTAB,
    protocol="fgvc",
    interpolation="bilinear",
    source="VPT transforms (DATA.md): resize 256, random crop 224 + flip / centre crop 224; optimiser "
    "numbers follow the VTAB recipe, tune them on train -> val.",
)
_SETTINGS = {
    "vtab": _VTAB,
    "fgvc": _FGVC,
    "fewshot": replace(_NOAH, protocol="fewshot"),
    "dg": replace(_NOAH, protocol="dg"),
    "folder": replace(_FGVC, protocol="folder", source="User data: the FGVC pipeline and the VTAB recipe."),
}


def protocol_settings(protocol: str, **overrides: Any) -> ProtocolSettings:
    """The settings of ``protocol`` (``vtab``, ``fgvc``, ``fewshot``, ``dg``, ``folder``).

    Keyword arguments override fields, e.g. ``protocol_settings("vtab", lr=5e-4)``.
    """
    if protocol not in _SETTINGS:
        raise DataError(f"unknown protocol {protocol!r}; known: {', '.join(_SETTINGS)}")
    settings = _SETTINGS[protocol]
    return ProtocolSettings.from_dict({**settings.to_dict(), **overrides}) if overrides else settings
