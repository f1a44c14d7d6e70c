"""Builds timm models by name, with weights from a local file or a hub tag."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import timm
from torch import nn

from ..suggest import closest
from .embedded import create_embedded, embedded_names, is_embedded
from .errors import UnknownModelError, WeightsUnavailableError
from .weights import load_weights, read_state_dict

__all__ = ["UnknownModelError", "WeightsUnavailableError", "create_model", "looks_like_path", "require_known_model"]

WEIGHT_SUFFIXES = (".npz", ".pth", ".pt", ".bin", ".safetensors")


def looks_like_path(pretrained: str) -> bool:
    return pretrained.endswith(WEIGHT_SUFFIXES) or "/" in pretrained or "\\" in pretrained


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline_mode() -> Iterator[None]:
    """Makes the hub client read only its local cache, instead of retrying a dead network."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def require_known_model(name: str) -> None:
    """Refuses, before anything is built, a name that is neither shipped nor a timm model
    (``hf-hub:``/``local-dir:`` names are timm's to resolve)."""
    if not (is_embedded(name) or ":" in name or timm.is_model(name)):
        raise unknown_model(name)


def unknown_model(name: str) -> UnknownModelError:
    """The error for a name neither shipped nor in timm: the nearest shipped backbone first (a newcomer's
    likeliest target, and one timm's listing never shows), else the nearest timm name."""
    shipped = closest(name, embedded_names())
    if shipped is not None:
        hint = f"did you mean '{shipped}' (shipped with snftune, works offline)?"
    else:
        near = closest(name, timm.list_models())
        pattern = f"*{name.split('_')[0]}*"
        hint = (f"did you mean '{near}'? " if near else "") + (
            f"Shipped: {', '.join(embedded_names())}; timm's names: "
            f"python -c \"import timm; print(timm.list_models('{pattern}'))\""
        )
    return UnknownModelError(f"timm has no model '{name}'; {hint}")


def create_model(name: str, pretrained: str | None = None, **kwargs) -> nn.Module:
    """A timm model by name.

    Args:
        name: a timm model name, e.g. ``vit_base_patch16_224``.
        pretrained: ``None`` for random initialisation; a local weights file (``.npz`` as
            the original ViT release, ``.pth``/``.bin``/``.safetensors`` state dicts); or a
            hub tag (``"hub"`` for timm's default tag, or e.g. ``"orig_in21k"``), which needs
            network access.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ...).

    An embedded backbone's name (``snftune-vit-tiny``, see :mod:`snftune.backbones.embedded`)
    loads the weights shipped in the package (``pretrained=None``), or ``pretrained="random"``.
    """
    if is_embedded(name):
        return create_embedded(name, pretrained, **kwargs)
    require_known_model(name)
    if pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            problem = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise WeightsUnavailableError(
                f"weights file {path} {problem}. Pass the path of a local .npz/.pth/.safetensors file."
            )
        if path.suffix == ".npz":  # the original ViT release: timm's own reader (numpy, no pickle)
            overlay = {"file": str(path), "custom_load": True}
            try:
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
            except (RuntimeError, KeyError, ValueError, OSError) as error:
                raise WeightsUnavailableError(f"could not load {path} into {name}: {error}") from error
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights(model, read_state_dict(path), str(path))
        return model
    full_name = name if pretrained == "hub" else f"{name}.{pretrained}"
    offline = contextlib.nullcontext() if _hub_reachable() else _hub_offline_mode()
    try:
        with offline:
            return timm.create_model(full_name, pretrained=True, **kwargs)
    except Exception as error:  # hub clients raise many types when offline
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights for '{full_name}' from the hub ({type(error).__name__}: "
            f"{error}). Without network access, download the file elsewhere and pass its local path "
            "instead, e.g. --pretrained /path/to/ViT-B_16.npz."
        ) from error
