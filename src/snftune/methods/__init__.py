"""Tuning methods: one module each, registered by name."""

from .adapter import Adapter, AdapterConfig
from .adaptformer import AdaptFormerConfig
from .bitfit import BitFitConfig
from .common import Mergeable
from .convpass import Convpass, ConvpassConfig
from .difffit import BranchScale, DiffFitConfig
from .dora import DoRAConfig, DoRALinear
from .fact import FacTLinear, FacTTKConfig, FacTTTConfig
from .flows import ShortcutFlow
from .full import FullConfig
from .glora import GLoRAConfig, GLoRALinear
from .linear import LinearConfig
from .ln_tune import LNTuneConfig
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
from .repadapter import GroupwiseAdapter, RepAdaptedNorm, RepAdapterConfig
from .sidetune import SideTuneConfig
from .snf import SNFConfig
from .ssf import ScaleShift, SSFConfig
from .vpt import VPTConfig
from .vqt import QueryTokens, VQTConfig

__all__ = [
    "AdaptFormerConfig",
    "Adapter",
    "AdapterConfig",
    "BranchScale",
    "Convpass",
    "ConvpassConfig",
    "DiffFitConfig",
    "GroupwiseAdapter",
    "LNTuneConfig",
    "RepAdaptedNorm",
    "RepAdapterConfig",
    "BitFitConfig",
    "DoRAConfig",
    "DoRALinear",
    "FacTLinear",
    "FacTTKConfig",
    "FacTTTConfig",
    "FullConfig",
    "GLoRAConfig",
    "GLoRALinear",
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
    "QueryTokens",
    "VQTConfig",
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
