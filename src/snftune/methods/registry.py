"""Method registry: a name (``snf-deep``, ``lora``, ...) is all a user needs to pick a method.

A *method* is a config dataclass (a :class:`MethodConfig`) plus an ``apply(model, config)``
that edits a timm model in place. *Presets* are named settings of a method
(``snf-shallow`` is ``SNFConfig(planar_steps=0)``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..errors import SnftuneError
from ..inputs import load_yaml
from ..suggest import did_you_mean
from .mixed import mixed_parts as outermost_mixed_forms

__all__ = [
    "Capabilities",
    "MethodConfig",
    "Method",
    "UnknownMethodError",
    "MethodSettingsError",
    "NotApplicableError",
    "register_method",
    "method_for",
    "capabilities",
    "refuse_unsupported_family",
    "resolve_config",
    "config_from_dict",
    "method_names",
    "preset_names",
]


class UnknownMethodError(SnftuneError, ValueError):
    """A method name, preset or config field that snftune does not know."""


class MethodSettingsError(UnknownMethodError):
    """A method setting with a value the method rejects (e.g. ``planar_steps=-1``)."""


class NotApplicableError(SnftuneError, ValueError):
    """A method that does not fit the given backbone (e.g. prompt tokens on a ResNet)."""


@dataclass
class MethodConfig:
    """Base of every method config: plain data, validated in ``__post_init__``.

    Class attributes (not fields):
        method: the registry name stored in checkpoints.
        updates_norm_statistics: True when BatchNorm running statistics may keep updating
            in train mode (otherwise they are frozen, as the backbone is).
    """

    method: ClassVar[str] = ""
    updates_norm_statistics: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps({"method": self.method, **self.to_dict()}, sort_keys=True)


@dataclass(frozen=True)
class Capabilities:
    """What a method can do beyond training, declared when it registers.

    Attributes:
        mergeable: its update folds exactly into the frozen weights (``snftune.merge``), so
            inference costs what the backbone's does.
        servable: its tuned tensors have a per-sample form, so ``MultiTaskModel`` can serve it
            in a batch that mixes tasks.
        unsupported_families: backbone family name (``"resnet"``, ``"swin"``, ...) -> why the
            method does not apply there; every other family with residual sites is supported.
        why_not: ``"mergeable"``/``"servable"`` -> why that capability is False, in one sentence.
    """

    mergeable: bool = False
    servable: bool = False
    unsupported_families: Mapping[str, str] = field(default_factory=dict)
    why_not: Mapping[str, str] = field(default_factory=dict)

    def supports(self, family: str) -> bool:
        return family not in self.unsupported_families

    def reason(self, capability: str) -> str | None:
        """Why ``capability`` (``"mergeable"``, ``"servable"`` or a family name) is not available, or None."""
        if capability in ("mergeable", "servable"):
            return None if getattr(self, capability) else self.why_not.get(capability, "not declared by the method")
        return self.unsupported_families.get(capability)


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        mixed_parts: a tuned model -> the modules holding its tuned tensors, by path, each
            implementing :class:`~snftune.methods.mixed.MixedForm` (what ``MultiTaskModel``
            serves). Default: the outermost modules that implement it.
    """

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, MethodConfig], None]
    description: str
    capabilities: Capabilities = Capabilities()
    mixed_parts: Callable[[nn.Module], dict[str, nn.Module]] = outermost_mixed_forms


_METHODS: dict[str, Method] = {}
_PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {}


def register_method(
    config_cls: type[MethodConfig],
    apply: Callable[[nn.Module, MethodConfig], None],
    description: str,
    presets: dict[str, tuple[dict[str, Any], str]] | None = None,
    capabilities: Capabilities | None = None,
    mixed_parts: Callable[[nn.Module], dict[str, nn.Module]] | None = None,
) -> Method:
    """Registers ``config_cls.method`` and its presets ({name: (overrides, description)}).

    ``capabilities`` declares what the method can do beyond training (merge, serve, families);
    ``mixed_parts`` is needed only by a servable method whose tuned tensors are not held by
    modules of its own (see :class:`Method`).

    A name already taken by a method or a preset is refused, as HF PEFT refuses a duplicate
    adapter name: silently replacing a method would change what a saved config means.
    """
    name = config_cls.method
    if not name:
        raise ValueError(f"{config_cls.__name__} has no 'method' name (set method: ClassVar[str] = 'my-method')")
    presets = presets or {}
    for new in (name, *presets):
        if new in _METHODS or new in _PRESETS:
            raise ValueError(f"the method name '{new}' is already registered; choose another name")
    if name in presets:
        raise ValueError(f"preset '{name}' has the name of its own method")
    method = Method(
        name, config_cls, apply, description, capabilities or Capabilities(), mixed_parts or outermost_mixed_forms
    )
    _METHODS[name] = method
    for preset, (overrides, preset_description) in presets.items():
        _PRESETS[preset] = (name, overrides, preset_description)
    return method


def method_for(config: MethodConfig) -> Method:
    for method in _METHODS.values():
        if type(config) is method.config_cls:
            return method
    raise UnknownMethodError(f"{type(config).__name__} is not a registered method config")


def capabilities(name: str | MethodConfig) -> Capabilities:
    """What the method (or preset, or config) ``name`` declared it can do: merge, serve, families."""
    if isinstance(name, MethodConfig):
        return method_for(name).capabilities
    if name in _PRESETS:
        name = _PRESETS[name][0]
    if name not in _METHODS:
        raise unknown_method(name)
    return _METHODS[name].capabilities


def refuse_unsupported_family(config: MethodConfig, family: str) -> None:
    """Raises :class:`NotApplicableError` with the method's declared reason when it does not
    support the backbone family ``family`` (``snftune.apply`` calls it before the method edits the model)."""
    reason = method_for(config).capabilities.unsupported_families.get(family)
    if reason is not None:
        raise NotApplicableError(f"{config.method} does not fit {family}: {reason}")
def unknown_method(name: str) -> UnknownMethodError:
    """The error for a method name nobody registered: the nearest known name first, then all of them."""
    return UnknownMethodError(
        f"unknown method '{name}'{did_you_mean(name, method_names())}. Known methods: {', '.join(method_names())}"
    )


def method_names() -> list[str]:
    """Every name ``resolve_config`` accepts: methods and presets."""
    return sorted(set(_METHODS) | set(_PRESETS))


def preset_names() -> dict[str, str]:
    """Preset name -> description."""
    return {name: description for name, (_, _, description) in sorted(_PRESETS.items())}


def config_from_dict(method: str, values: dict[str, Any]) -> MethodConfig:
    """Builds a registered method's config, naming any field it does not have."""
    if method not in _METHODS:
        raise unknown_method(method)
    config_cls = _METHODS[method].config_cls
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UnknownMethodError(
            f"method '{method}' has no setting {', '.join(map(repr, unknown))}"
            f"{did_you_mean(unknown[0], fields) if len(unknown) == 1 else ''}. "
            f"Its settings: {', '.join(sorted(fields)) or 'none'}"
        )
    return _build(config_cls, values)


def _build(config_cls: type[MethodConfig], values: dict[str, Any]) -> MethodConfig:
    """``config_cls(**values)``, with a value that the config rejects reported as a method setting error."""
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as error:
        raise MethodSettingsError(f"method '{config_cls.method}': {error}") from error


def _load_config_file(path: Path) -> tuple[str, dict[str, Any]]:
    data = load_yaml(path, error=UnknownMethodError)
    if not isinstance(data, dict) or "method" not in data:
        raise UnknownMethodError(f"{path} must be a mapping with a 'method' key, e.g. 'method: snf-deep'")
    data = dict(data)
    return str(data.pop("method")), data


def resolve_config(method: str | MethodConfig, **overrides: Any) -> MethodConfig:
    """A config from a method name, a preset name, a YAML file, or a config instance.

    ``overrides`` replace fields of the resolved config; a field the method does not have
    raises :class:`UnknownMethodError` naming it.
    """
    if isinstance(method, MethodConfig):
        method_for(method)
        return config_from_dict(method.method, {**method.to_dict(), **overrides}) if overrides else method
    if not isinstance(method, str):
        raise UnknownMethodError(f"a method is a name or a MethodConfig, not {type(method).__name__}")
    if method.endswith((".yaml", ".yml")):
        path = Path(method)
        if not path.is_file():
            raise UnknownMethodError(f"method file {path} does not exist")
        method, file_values = _load_config_file(path)
        overrides = {**file_values, **overrides}
    if method in _PRESETS:
        name, preset_values, _ = _PRESETS[method]
        return config_from_dict(name, {**preset_values, **overrides})
    if method in _METHODS:
        return config_from_dict(method, overrides)
    raise unknown_method(method)
