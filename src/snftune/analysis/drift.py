"""Feature drift: linear CKA between two models' representations of the same images.

Linear centred kernel alignment (Kornblith et al., ICML 2019) of representations ``X`` and
``Y`` (one row per image, any widths) compares their Gram matrices ``K = X X^T`` and
``L = Y Y^T`` after centring (``H K H``, ``H = I - 11^T / n``)::

    CKA(K, L) = <HKH, HLH>_F / (|HKH|_F |HLH|_F)

1 when the two representations differ only by a rotation and a uniform scale, lower as they
drift apart. Working on Gram matrices lets representations of different widths be compared
(VPT adds prompt tokens) and keeps only an n x n matrix per site.
"""

from __future__ import annotations

import torch

__all__ = ["gram_matrix", "linear_cka"]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``X X^T`` in float64, for ``features`` with one row (any shape after dim 0) per image."""
    flat = features.flatten(1).double()
    return flat @ flat.t()


def _centred(gram: torch.Tensor) -> torch.Tensor:
    return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()


def linear_cka(gram_x: torch.Tensor, gram_y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n images, given their n x n Gram matrices."""
    if gram_x.shape != gram_y.shape:
        raise ValueError(f"Gram matrices of {gram_x.shape[0]} and {gram_y.shape[0]} images: CKA needs the same images")
    kx, ky = _centred(gram_x), _centred(gram_y)
    denominator = (kx.norm() * ky.norm()).item()
    return (kx * ky).sum().item() / denominator if denominator > 0 else 0.0
