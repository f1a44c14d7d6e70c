"""snftune: parameter-efficient tuning of vision backbones around SNF (CVPR 2023).

>>> import snftune
>>> model = snftune.create_model("snftune-vit-tiny", num_classes=8)  # shipped weights, offline
>>> snftune.apply(model, "snf-deep")
>>> print(snftune.trainable_summary(model))
>>> snftune.save_tuned(model, "task.safetensors")

The names below are imported on first use (module ``__getattr__``, PEP 562), so that
``import snftune`` and ``snftune --help`` do not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Capabilities": ".methods",
    "MethodConfig": ".methods",
    "MultiTaskModel": ".serving",
    "SNFConfig": ".methods",
    "SnftuneError": ".errors",
    "ShortcutFlow": ".methods",
    "TunedFileError": ".tuning",
    "anatomy": ".backbones",
    "apply": ".tuning",
    "capabilities": ".methods",
    "create_model": ".backbones",
    "load_tuned": ".tuning",
    "merge": ".tuning",
    "method_names": ".methods",
    "resolve_config": ".methods",
    "save_tuned": ".tuning",
    "trainable_summary": ".tuning",
    "tuned_tensors": ".tuning",
    "unmerge": ".tuning",
}
"""Public name -> the subpackage that defines it."""

__all__ = [
    "Capabilities",
    "MethodConfig",
    "MultiTaskModel",
    "SNFConfig",
    "SnftuneError",
    "ShortcutFlow",
    "TunedFileError",
    "anatomy",
    "apply",
    "capabilities",
    "create_model",
    "load_tuned",
    "merge",
    "method_names",
    "resolve_config",
    "save_tuned",
    "trainable_summary",
    "tuned_tensors",
    "unmerge",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'snftune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from .backbones import anatomy, create_model
    from .errors import SnftuneError
    from .methods import (
        Capabilities,
        MethodConfig,
        ShortcutFlow,
        SNFConfig,
        capabilities,
        method_names,
        resolve_config,
    )
    from .serving import MultiTaskModel
    from .tuning import TunedFileError, apply, load_tuned, merge, save_tuned, trainable_summary, tuned_tensors, unmerge
