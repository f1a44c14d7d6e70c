"""snftune: parameter-efficient tuning of vision backbones around SNF (CVPR 2023).

>>> import timm, snftune
>>> model = timm.create_model("vit_base_patch16_224", num_classes=100)
>>> snftune.apply(model, "snf-deep")
>>> print(snftune.trainable_summary(model))
>>> snftune.save_tuned(model, "task.safetensors")
"""

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

__version__ = "0.1.0"

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
