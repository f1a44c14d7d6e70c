"""``lipschitz.png``: the measures of an ``analysis.json``, one column per model, drawn with
matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_write

__all__ = ["plot_lipschitz", "short_site_name"]


def short_site_name(name: str) -> str:
    """A site's name for an axis: ``blocks.3.attn_site`` -> ``3.attn``, ``layers.2.blocks.1.mlp_site``
    -> ``2.1.mlp``, ``layer3.0.site`` -> ``3.0``."""
    parts = []
    for part in name.split("."):
        if part in ("blocks", "layers", "site"):
            continue
        parts.append(re.sub(r"^layer(\d+)$", r"\1", part).removesuffix("_site"))
    return ".".join(parts) or name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_constants(ax, sites: list[dict[str, Any]], xs: list[int]) -> None:
    for key, label, colour in (
        ("branch", "branch $K_l$", "tab:blue"),
        ("shortcut", "shortcut $K_l^\\phi$", "tab:orange"),
    ):
        means = [site[key]["mean"] for site in sites]
        maxima = [site[key]["max"] for site in sites]
        ax.plot(xs, means, marker="o", color=colour, label=f"{label} (mean)")
        ax.plot(xs, maxima, marker="^", linestyle=":", color=colour, label=f"{label} (max)")
    flows = [(x, site["flow_bound"]) for x, site in zip(xs, sites, strict=True) if site.get("flow_bound") is not None]
    if flows:
        ax.scatter(*zip(*flows, strict=True), marker="x", color="tab:red", zorder=3, label="flow's global bound")


def _draw_growth(ax, sites: list[dict[str, Any]], xs: list[int]) -> None:
    ax.plot(xs, [s["bound"]["max"] for s in sites], marker="s", color="tab:purple", label="bound (max)")
    ax.plot(xs, [s["bound"]["mean"] for s in sites], linestyle=":", color="tab:purple", label="bound (mean)")
    ax.plot(xs, [s["end_to_end"]["max"] for s in sites], marker="D", color="tab:brown", label="end-to-end (max)")
    ax.plot(xs, [s["end_to_end"]["mean"] for s in sites], linestyle=":", color="tab:brown", label="end-to-end (mean)")
    ax.plot(xs, [s["growth"]["max"] for s in sites], marker="o", color="tab:green", label="measured growth (max)")
    ax.plot(xs, [s["growth"]["mean"] for s in sites], linestyle=":", color="tab:green", label="measured growth (mean)")


def plot_lipschitz(analysis: dict[str, Any], path: str | Path) -> Path:
    """Per-site constants (top), error growth to the output beside its bound (middle) and CKA with
    the untouched backbone (bottom), one column per model, rows on shared axes."""
    models = analysis["models"]
    plt = _pyplot()
    columns = len(models)
    figure, axes = plt.subplots(
        3, columns, figsize=(3.6 * columns + 1.0, 9.0), sharey="row", sharex=True, squeeze=False
    )
    names = [short_site_name(site["name"]) for site in models[0]["sites"]]
    xs = list(range(len(names)))
    step = max(1, len(names) // 16)
    lowest_cka = min(0.9, *(site["cka"] - 0.05 for model in models for site in model["sites"]))
    for column, model in enumerate(models):
        top, middle, bottom = axes[:, column]
        sites = model["sites"]
        _draw_constants(top, sites, xs)
        _draw_growth(middle, sites, xs)
        bottom.plot(xs, [site["cka"] for site in sites], marker="o", color="tab:gray")
        top.set_title(f"{model['label']}\noutput CKA {model['pooled_cka']:.3f}", fontsize=10)
        for ax in (top, middle):
            ax.set_yscale("log")
        bottom.set_ylim(lowest_cka, 1.02)
        bottom.set_xticks(xs[::step], names[::step], rotation=90, fontsize=7)
        bottom.set_xlabel("residual site")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("local Lipschitz constant")
    axes[1, 0].set_ylabel("|dy| / |dx_l| at the output")
    axes[2, 0].set_ylabel("CKA with the backbone")
    for row in range(2):
        handles, labels = [], []
        for ax in axes[row]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        axes[row, -1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle(
        f"{analysis['backbone']['model']} on {analysis['data']}:{analysis['split']} ({analysis['samples']} images); "
        f"output = {analysis['output']}",
        fontsize=10,
    )
    figure.tight_layout()
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return written
