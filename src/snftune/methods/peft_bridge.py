"""HF PEFT's tuners as further baselines: ``snftune.apply(model, "peft:ia3")``.

An outside check on our own methods: the chosen PEFT tuner is injected into the timm model
in place (``peft.inject_adapter_in_model``, no ``PeftModel`` wrapper), targeting timm module
names (``qkv``, ``fc2``, ...). PEFT leaves only its adapter tensors trainable and
``snftune.apply`` then re-enables the classifier head, so PEFT's ``modules_to_save`` is not
needed; saving and loading go through ``save_tuned``/``load_tuned`` like any method. PEFT is
optional: applying without it raises :class:`PeftUnavailableError` naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

from torch import nn

from ..errors import MissingExtraError
from .registry import Capabilities, MethodConfig, NotApplicableError, UnknownMethodError, register_method

DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "lora_alpha": 8, "target_modules": ["qkv"]},
    "ia3": {"target_modules": ["qkv", "fc2"], "feedforward_modules": ["fc2"]},
    "loha": {"r": 8, "alpha": 8, "target_modules": ["qkv"]},
    "lokr": {"r": 8, "alpha": 8, "target_modules": ["qkv"]},
}
"""Per tuner, the PEFT config fields used unless ``options`` sets them (timm module names)."""


class PeftUnavailableError(MissingExtraError):
    """HF PEFT is not installed."""

    package = "HF PEFT"
    used_by = "the 'peft' methods"
    extra = "peft"


def import_peft() -> ModuleType:
    try:
        return importlib.import_module("peft")
    except ImportError:
        raise PeftUnavailableError() from None


def _check_tuner(tuner: str) -> None:
    import_peft()
    tuners = importlib.import_module("peft.mapping").PEFT_TYPE_TO_CONFIG_MAPPING
    if tuner.upper() not in tuners:
        raise UnknownMethodError(
            f"PEFT has no tuner '{tuner}'. Its tuners: {', '.join(sorted(t.lower() for t in tuners))}"
        )


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | set) else value


@dataclass
class PeftBridgeConfig(MethodConfig):
    """A PEFT tuner and its settings.

    Attributes:
        tuner: PEFT's name of the tuner, any case (``lora``, ``ia3``, ``loha``, ``lokr``, ...).
        options: fields of that tuner's PEFT config, over :data:`DEFAULT_OPTIONS` (tuners
            without defaults get ``target_modules=["qkv"]``).
    """

    method: ClassVar[str] = "peft"

    tuner: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tuner, str) or not self.tuner:
            raise ValueError(f"tuner must be a PEFT tuner name such as 'lora' or 'ia3', got {self.tuner!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping of PEFT config fields, got {type(self.options).__name__}")
        self.tuner = self.tuner.lower()
        self.options = {key: _jsonable(value) for key, value in self.options.items()}
        # Without PEFT the config stays readable (e.g. from a tuned file); applying it names the install line.
        with contextlib.suppress(PeftUnavailableError):
            _check_tuner(self.tuner)

    def peft_options(self) -> dict[str, Any]:
        defaults = DEFAULT_OPTIONS.get(self.tuner, {"target_modules": ["qkv"]})
        return {**defaults, **self.options}


def build_peft_config(config: PeftBridgeConfig) -> Any:
    """PEFT's config object for ``config`` (raises if PEFT is missing or the tuner unknown)."""
    _check_tuner(config.tuner)
    return import_peft().get_peft_config({"peft_type": config.tuner.upper(), **config.peft_options()})


def apply_peft(model: nn.Module, config: PeftBridgeConfig) -> None:
    """Injects the PEFT tuner into ``model`` in place."""
    peft_config = build_peft_config(config)
    try:
        import_peft().inject_adapter_in_model(peft_config, model)
    except ValueError as error:
        raise NotApplicableError(
            f"PEFT's {config.tuner} does not fit {type(model).__name__} with {config.peft_options()}: {error}"
        ) from error


register_method(
    PeftBridgeConfig,
    apply_peft,
    "HF PEFT tuners injected into the timm model (optional: pip install 'snftune[peft]')",
    presets={
        f"peft:{name}": ({"tuner": name}, f"HF PEFT's {name} on {DEFAULT_OPTIONS[name]}") for name in DEFAULT_OPTIONS
    },
    capabilities=Capabilities(
        why_not={
            "mergeable": "PEFT's layers merge through PEFT itself (merge_and_unload), whose unmerge is not exact",
            "servable": "PEFT's layers have no per-sample form in snftune (PEFT's own mixed batches need a PeftModel)",
        },
    ),
)
