"""Tuning methods: one module each, registered by name."""

from .adapter import Adapter, AdapterConfig
from .bitfit import BitFitConfig
from .common import Mergeable
from .flows import ShortcutFlow
from .full import FullConfig
from .linear import LinearConfig
from .lora import LoRAConfig, LoRALinear
from .mixed import MixedForm, MixedModule, TaskRouting, channel_view, replace_each
from .noah import NoahConfig, NoahSupernetConfig
from .noah_subnets import Subnet, SubnetSpace
from .peft_bridge import PeftBridgeConfig, PeftUnavailableError
from .registry import (
    Capabilities,
    MethodConfig,
    MethodSettingsError,
    NotApplicableError,
    UnknownMethodError,
    capabilities,
    config_from_dict,
    method_for,
    method_names,
    preset_names,
    register_method,
    resolve_config,
)
from .sidetune import SideTuneConfig
from .snf import SNFConfig
from .ssf import ScaleShift, SSFConfig
from .vpt import VPTConfig

__all__ = [
    "Adapter",
    "AdapterConfig",
    "BitFitConfig",
    "FullConfig",
    "LinearConfig",
    "LoRAConfig",
    "LoRALinear",
    "MethodConfig",
    "MixedForm",
    "MixedModule",
    "TaskRouting",
    "channel_view",
    "replace_each",
    "NoahConfig",
    "NoahSupernetConfig",
    "NotApplicableError",
    "MethodSettingsError",
    "PeftBridgeConfig",
    "PeftUnavailableError",
    "SNFConfig",
    "SSFConfig",
    "ScaleShift",
    "ShortcutFlow",
    "SideTuneConfig",
    "Subnet",
    "SubnetSpace",
    "UnknownMethodError",
    "VPTConfig",
    "Capabilities",
    "capabilities",
    "config_from_dict",
    "Mergeable",
    "method_for",
    "method_names",
    "preset_names",
    "register_method",
    "resolve_config",
]
