"""Vectorised numpy drawing primitives for the generated suite: coordinates, noise, shapes, textures.

Everything works on a batch: arrays are (n, R, R) for masks/fields and (n, R, R, 3) for images,
in coordinates where x (right) and y (down) span [-1, 1] across the image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

TAU = 2 * np.pi


@cache
def grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, each (1, res, res)."""
    c = ((np.arange(res) + 0.5) / res * 2 - 1).astype(np.float32)
    return c[None, None, :].repeat(res, 1), c[None, :, None].repeat(res, 2)


def col(a: np.ndarray) -> np.ndarray:
    """Per-sample values (n,) broadcast against (n, R, R)."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


@cache
def _interp_matrix(res: int, g: int) -> np.ndarray:
    p = (np.arange(res) + 0.5) / res * (g - 1)
    i0 = np.clip(np.floor(p).astype(int), 0, g - 2)
    w = p - i0
    m = np.zeros((res, g), dtype=np.float32)
    m[np.arange(res), i0] = 1 - w
    m[np.arange(res), i0 + 1] = w
    return m


def smooth_noise(rng: np.random.Generator, n: int, res: int, g: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise on a g x g lattice: values in [0, 1], (n, res, res)."""
    m = _interp_matrix(res, g)
    return np.einsum("ra,nab,cb->nrc", m, rng.random((n, g, g), dtype=np.float32), m, optimize=True)


def background(rng: np.random.Generator, n: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-colour gradient with low-frequency noise; returns the image and its mean colour (n, 3)."""
    x, y = grid(res)
    c1, c2 = rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)
    angle = rng.uniform(0, TAU, n)
    t = 0.5 + 0.35 * (col(np.cos(angle)) * x + col(np.sin(angle)) * y)
    t = 0.6 * t + 0.4 * smooth_noise(rng, n, res, 4)
    img = c1[:, None, None, :] * (1 - t[..., None]) + c2[:, None, None, :] * t[..., None]
    return img, img.mean(axis=(1, 2))


def contrasting(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    """Random colours (n, 3) whose luminance differs from ``against`` by at least ~0.3."""
    fg = rng.random(against.shape, dtype=np.float32)
    lum = lambda c: c @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # noqa: E731
    dark = lum(against) > 0.5
    too_close = np.abs(lum(fg) - lum(against)) < 0.3
    fg[too_close & dark] *= 0.35
    fg[too_close & ~dark] = 0.65 + 0.35 * fg[too_close & ~dark]
    return fg


def local(res: int, cx, cy, scale, angle, aspect=1.0) -> tuple[np.ndarray, np.ndarray]:
    """Object coordinates (u, v): the object spans [-1, 1] in both, rotated by ``angle``."""
    x, y = grid(res)
    dx, dy = x - col(cx), y - col(cy)
    cos, sin = col(np.cos(angle)), col(np.sin(angle))
    u = (cos * dx + sin * dy) / col(scale)
    v = (-sin * dx + cos * dy) / (col(scale) * col(np.broadcast_to(aspect, np.shape(cx))))
    return u, v


def _polygon(sides: int) -> Callable:
    def inside(u, v):
        sector = TAU / sides
        theta = np.mod(np.arctan2(v, u), sector) - sector / 2
        return np.hypot(u, v) * np.cos(theta) < np.cos(sector / 2)

    return inside


def _heart(u, v):
    x, y = 1.15 * u, -1.15 * v + 0.25
    return (x * x + y * y - 1) ** 3 - x * x * y**3 < 0


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    # downstream objects
    "circle": lambda u, v: u * u + v * v < 1,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.8,
    "triangle": _polygon(3),
    "star": lambda u, v: np.hypot(u, v) < 0.55 + 0.4 * np.cos(5 * np.arctan2(v, u)),
    "cross": lambda u, v: ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95)),
    "ring": lambda u, v: (u * u + v * v < 1) & (u * u + v * v > 0.36),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) < 1,
    "arrow": lambda u, v: (u > -0.8) & (np.abs(v) < 0.5 * (1 - u) / 1.8),
    # upstream objects
    "hexagon": _polygon(6),
    "pentagon": _polygon(5),
    "bowtie": lambda u, v: (np.abs(v) < np.abs(u) * 0.9) & (np.abs(u) < 0.9),
    "heart": _heart,
    "crescent": lambda u, v: (u * u + v * v < 1) & ((u - 0.45) ** 2 + v * v > 0.56),
    "semicircle": lambda u, v: (u * u + v * v < 1) & (v > -0.2),
    "lshape": lambda u, v: ((u > -0.8) & (u < -0.3) & (np.abs(v) < 0.9)) | ((v > 0.4) & (v < 0.9) & (np.abs(u) < 0.8)),
    "tshape": lambda u, v: ((np.abs(u) < 0.9) & (v > -0.9) & (v < -0.45)) | ((np.abs(u) < 0.25) & (np.abs(v) < 0.9)),
}


def shape_masks(kinds: list[str], kind_index: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Float masks (n, R, R) where sample i draws ``kinds[kind_index[i]]``."""
    mask = np.zeros(u.shape, dtype=np.float32)
    for k, kind in enumerate(kinds):
        sel = kind_index == k
        if sel.any():
            mask[sel] = SHAPES[kind](u[sel], v[sel])
    return mask


def sample_glyphs(glyphs: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of per-sample glyph bitmaps (n, h, w) in [0, 1] at (u, v) in [-1, 1]; 0 outside."""
    n, h, w = glyphs.shape
    gx, gy = (u + 1) / 2 * w - 0.5, (v + 1) / 2 * h - 0.5
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    fx, fy = gx - x0, gy - y0
    idx = np.arange(n)[:, None, None]
    out = np.zeros(u.shape, dtype=np.float32)
    for dx, dy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xs, ys = x0 + dx, y0 + dy
        valid = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        out += weight * valid * glyphs[idx, np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)]
    return out


def _sharpen(t: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + col(k) * (t - 0.5), 0, 1)


def texture_field(kind: str, rng: np.random.Generator, n: int, res: int) -> np.ndarray:
    """A texture of family ``kind`` as values in [0, 1], (n, res, res), random scale/orientation/phase."""
    x, y = grid(res)
    angle = rng.uniform(0, TAU, n)
    u = col(np.cos(angle)) * x + col(np.sin(angle)) * y
    v = -col(np.sin(angle)) * x + col(np.cos(angle)) * y
    freq = col(rng.uniform(2.0, 5.0, n) * np.pi)
    phase = col(rng.uniform(0, TAU, n))
    sharp = rng.uniform(1.0, 3.0, n)
    cx, cy = col(rng.uniform(-0.7, 0.7, n)), col(rng.uniform(-0.7, 0.7, n))
    r, theta = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    if kind == "stripes":
        t = 0.5 + 0.5 * np.sin(freq * u + phase)
    elif kind == "checker":
        t = 0.5 + 0.5 * np.sin(freq * u + phase) * np.sin(freq * v)
        sharp = sharp * 2
    elif kind == "dots":
        du, dv = np.mod(freq * u / TAU + phase, 1) - 0.5, np.mod(freq * v / TAU, 1) - 0.5
        t = (du * du + dv * dv < col(rng.uniform(0.03, 0.1, n))).astype(np.float32)
    elif kind == "rings":
        t = 0.5 + 0.5 * np.sin(1.5 * freq * r + phase)
    elif kind == "waves":
        t = 0.5 + 0.5 * np.sin(freq * u + col(rng.uniform(0.8, 2.0, n)) * np.sin(freq * v) + phase)
    elif kind == "blobs":
        t = smooth_noise(rng, n, res, 5)
        sharp = sharp * 3
    elif kind == "grain":
        t = smooth_noise(rng, n, res, max(res // 3, 4))
        sharp = sharp * 2
    elif kind == "crosshatch":
        t = np.maximum(np.sin(freq * u + phase), np.sin(freq * (u * 0.2 + v))) * 0.5 + 0.5
        sharp = sharp * 2
    elif kind == "gridlines":
        t = (np.minimum(np.abs(np.sin(freq * u / 2 + phase)), np.abs(np.sin(freq * v / 2))) < 0.25).astype(np.float32)
    elif kind == "spiral":
        t = 0.5 + 0.5 * np.sin(freq * r + 3 * theta + phase)
    elif kind == "bricks":
        row = np.floor(freq * v / TAU * 1.5)
        du = np.mod(freq * u / TAU + 0.5 * row + phase, 1)
        dv = np.mod(freq * v / TAU * 1.5, 1)
        t = ((du > 0.1) & (dv > 0.15)).astype(np.float32)
    elif kind == "spokes":
        t = 0.5 + 0.5 * np.sin(np.round(col(rng.uniform(4, 10, n))) * theta + phase)
    elif kind == "speckle":
        t = (rng.random((n, res, res), dtype=np.float32) > 0.94).astype(np.float32)
    else:
        raise KeyError(kind)
    return _sharpen(t.astype(np.float32), sharp)


TEXTURES = (
    "stripes",
    "checker",
    "dots",
    "rings",
    "waves",
    "blobs",
    "grain",
    "crosshatch",
    "gridlines",
    "spiral",
    "bricks",
    "spokes",
    "speckle",
)


def colourise(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a field in [0, 1] to a two-colour image with random colours."""
    n = t.shape[0]
    c1 = rng.random((n, 3), dtype=np.float32)
    c2 = contrasting(rng, c1)
    return c1[:, None, None, :] + (c2 - c1)[:, None, None, :] * t[..., None]


def paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``img`` with ``colour`` (n, 3) blended in by ``mask`` (n, R, R) in [0, 1]; one temporary only."""
    out = colour[:, None, None, :] - img
    out *= mask[..., None]
    out += img
    return out


def finish(img: np.ndarray, rng: np.random.Generator, size: int, noise: float = 0.03) -> np.ndarray:
    """Box-downsample the supersampled float image to ``size`` and quantise to uint8 with pixel noise."""
    n, res = img.shape[0], img.shape[1]
    f = res // size
    img = img.reshape(n, size, f, size, f, 3).mean(axis=(2, 4))
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
