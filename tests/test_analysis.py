"""snftune.analysis: local Lipschitz constants against known maps, the error-propagation bound against
the measured growth, the site maps against the forward pass, CKA, flow inversion on real activations,
and ``snftune analyze`` / ``snftune plot lipschitz`` end to end with their one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import snftune
from snftune.analysis import (
    AnalysisSettings,
    SiteTrace,
    analyze_model,
    compare_models,
    flow_lipschitz_bound,
    gram_matrix,
    linear_cka,
    local_lipschitz,
    perturbation_growth,
)
from snftune.backbones import install_sites
from snftune.cli import main
from snftune.methods import ShortcutFlow

from conftest import TINY_MODELS, make_tiny

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8"]
TINY += ["--img-size", "32"]
FEW = ["--samples", "4", "--iterations", "4", "--threads", "1", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def matrix_with_singular_values(values: list[float], rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(columns, len(values), generator=generator, dtype=torch.float64))
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.t()


def perturbed(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Moves every tuned tensor away from its (identity) initialisation, so that measures see a real change."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in snftune.tuning.tuned_tensors(model).values():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def tuned_tiny(kind: str, method: str, std: float = 0.2) -> tuple[torch.nn.Module, int]:
    model, size = make_tiny(kind)
    snftune.apply(model, method)
    return perturbed(model, std), size


def test_the_estimate_for_a_linear_map_is_its_spectral_norm():
    a = matrix_with_singular_values([3.0, 2.0, 1.5, 0.5], 7, 9).float()
    assert torch.linalg.matrix_norm(a.double(), 2).item() == pytest.approx(3.0)
    x = torch.randn(3, 9)
    estimate = local_lipschitz(lambda t: t @ a.t(), x, iterations=100, tolerance=1e-9)
    assert torch.allclose(estimate, torch.full((3,), 3.0), atol=1e-3)

    random_matrix = torch.randn(12, 20, generator=torch.Generator().manual_seed(1))
    estimate = local_lipschitz(lambda t: t @ random_matrix.t(), torch.randn(2, 20), iterations=2000, tolerance=1e-9)
    assert torch.allclose(estimate, torch.linalg.matrix_norm(random_matrix, 2).expand(2), atol=1e-3)


def test_each_sample_gets_its_own_constant():
    a = matrix_with_singular_values([2.0, 1.0], 4, 4).float()
    scales = torch.tensor([1.0, 5.0, 0.25])

    estimate = local_lipschitz(
        lambda t: (t @ a.t()) * scales[:, None], torch.randn(3, 4), iterations=100, tolerance=1e-9
    )
    assert torch.allclose(estimate, 2.0 * scales, atol=1e-3)


def test_affine_flow_constant_is_max_scale_and_planar_bound_holds():
    torch.manual_seed(0)
    affine = ShortcutFlow(6, planar_steps=0)
    with torch.no_grad():
        affine.log_scale.copy_(torch.tensor([0.1, -0.3, 0.7, 0.2, 0.0, -1.0]))
    assert flow_lipschitz_bound(affine) == pytest.approx(math.exp(0.7))
    x = torch.randn(2, 5, 6)
    estimate = local_lipschitz(affine.forward_reference, x, iterations=200, tolerance=1e-9)
    assert torch.allclose(estimate, torch.full((2,), math.exp(0.7)), atol=1e-3)

    planar = ShortcutFlow(6, planar_steps=4, init_range=0.8)
    estimate = local_lipschitz(planar.forward_reference, torch.randn(8, 5, 6), iterations=200, tolerance=1e-9)
    assert (estimate <= flow_lipschitz_bound(planar) + 1e-6).all()
    assert estimate.max() > 1.0  # the planar steps do stretch


def test_for_a_composition_of_known_maps_the_growth_stays_under_the_product_bound():
    """Residual steps ``x + tanh(A_i x)``: Lipschitz at most ``1 + |A_i|`` (tanh' <= 1)."""
    norms = [2.0, 0.5, 3.0]
    matrices = [matrix_with_singular_values([n, n / 2, n / 4], 6, 6, seed=i).float() for i, n in enumerate(norms)]
    steps = [lambda t, a=a: t + torch.tanh(t @ a.t()) for a in matrices]

    def composed(t: torch.Tensor) -> torch.Tensor:
        for step in steps:
            t = step(t)
        return t

    x = torch.randn(64, 6)
    growth = perturbation_growth(composed, x, relative_size=1e-3, generator=torch.Generator().manual_seed(0))
    bound = math.prod(1 + n for n in norms)
    local_bound = torch.ones(64)
    t = x
    for step in steps:
        local_bound = local_bound * local_lipschitz(step, t, iterations=200, tolerance=1e-9)
        t = step(t)
    end_to_end = local_lipschitz(composed, x, iterations=200, tolerance=1e-9)
    assert (growth <= end_to_end * (1 + 1e-3)).all()
    assert (end_to_end <= local_bound * (1 + 1e-4)).all()
    assert (local_bound <= bound).all()


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_site_maps_reproduce_the_forward_pass(kind):
    model, size = tuned_tiny(kind, "snf-deep")
    trace = SiteTrace(model, torch.randn(2, 3, size, size))
    identity_after = [trace.transition_is_identity(index) for index in range(len(trace.sites))]
    if kind.startswith(("vit", "deit")):  # blocks pass the last site's output on untouched
        assert identity_after == [True] * (len(trace.sites) - 1) + [False]
    if kind.startswith("resnet"):  # a ReLU follows every site
        assert not any(identity_after)
    with torch.no_grad():
        for index in range(len(trace.sites)):
            x = trace.site_input(index)
            together = trace.shortcut_map(index)(x) + trace.branch_map(index)(x)
            torch.testing.assert_close(together, trace.site_outputs[index], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(trace.output_map(index)(x), trace.pooled, atol=1e-5, rtol=1e-5)
            if trace.is_last_in_block(index):
                block, _ = trace.position[index]
                following = trace.pooled if block + 1 == len(trace.blocks) else trace.calls[block + 1].args[0]
                torch.testing.assert_close(trace.transition_map(index)(trace.site_outputs[index]), following)


@pytest.mark.parametrize("kind", ["vit", "resnet-bottleneck", "swin"])
def test_measured_growth_is_within_the_bound_at_every_site(kind):
    model, size = tuned_tiny(kind, "snf-deep", std=0.05)
    sites = analyze_model(model, torch.randn(3, 3, size, size), AnalysisSettings(iterations=15)).sites
    for site in sites:
        assert site["growth_within_bound"] == 1.0, site["name"]
        assert 0 < site["growth"]["max"] <= site["end_to_end"]["max"] * (1 + 1e-3)
        assert site["end_to_end"]["max"] <= site["bound"]["max"]
        assert site["flow_bound"] >= site["shortcut"]["max"] * (1 - 1e-6)  # the global bound holds locally


def test_an_empty_or_affine_shortcut_is_measured_exactly():
    backbone, size = make_tiny("vit")
    install_sites(backbone)
    shallow, _ = tuned_tiny("vit", "snf-shallow")
    images = torch.randn(2, 3, size, size)
    for site in analyze_model(backbone, images, AnalysisSettings(iterations=2)).sites:
        assert site["shortcut"] == {"mean": 1.0, "max": 1.0} and site["flow_bound"] is None
    sites = analyze_model(shallow, images, AnalysisSettings(iterations=2)).sites
    for site, module in zip(sites, install_sites(shallow).sites, strict=True):
        assert site["shortcut"]["max"] == pytest.approx(module.shortcut.log_scale.exp().max().item())


def test_cka_of_a_model_with_itself_is_one_and_drift_lowers_it():
    x = torch.randn(40, 7, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))
    assert linear_cka(gram_matrix(x), gram_matrix(3.0 * x @ rotation)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(gram_matrix(x), gram_matrix(torch.randn(40, 7, dtype=torch.float64))) < 0.5

    backbone, size = make_tiny("vit")
    install_sites(backbone)
    tuned, _ = tuned_tiny("vit", "snf-shallow", std=0.5)
    images = torch.randn(6, 3, size, size)
    results = compare_models([("a", backbone), ("b", backbone), ("c", tuned)], images, AnalysisSettings(iterations=2))
    assert all(site["cka"] == pytest.approx(1.0, abs=1e-9) for model in results[:2] for site in model["sites"])
    assert results[1]["pooled_cka"] == pytest.approx(1.0, abs=1e-9)
    assert results[2]["sites"][-1]["cka"] < 0.999


def test_flows_invert_real_activations_and_other_slots_are_named():
    # Planar parameters of std 0.3 push some w.u near its -0.99 floor, where the step is nearly
    # singular and any float32 inverse amplifies the forward's rounding (1.4e-4 under torch 2.4):
    # that measures the conditioning, not the inverse. Trained flows stay much closer to identity.
    model, size = tuned_tiny("vit", "snf-deep", std=0.2)
    images = torch.randn(4, 3, size, size)
    sites = analyze_model(model, images, AnalysisSettings(iterations=2)).sites
    for site in sites:
        slot = site["shortcut_slot"]
        assert slot["kind"] == "flow" and slot["reconstruction_error"] < 1e-4
        assert slot["log_det"]["min"] <= slot["log_det"]["mean"] <= slot["log_det"]["max"]
        assert site["branch_slot"]["kind"] == "identity"

    shallow, _ = tuned_tiny("vit", "snf-shallow")
    for site, module in zip(
        analyze_model(shallow, images, AnalysisSettings(iterations=2)).sites, install_sites(shallow).sites, strict=True
    ):
        log_det = site["shortcut_slot"]["log_det"]
        assert log_det["min"] == pytest.approx(module.shortcut.log_scale.sum().item(), abs=1e-5)
        assert log_det["max"] == pytest.approx(log_det["min"], abs=1e-5)

    parallel, _ = tuned_tiny("vit", "adapter-parallel")
    slots = [site["shortcut_slot"] for site in analyze_model(parallel, images, AnalysisSettings(iterations=2)).sites]
    assert {slot["kind"] for slot in slots} == {"identity", "module"}
    assert any("Adapter has no inverse" in slot.get("note", "") for slot in slots)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("analysis") / "run"
    quick = [
        "--split",
        "val200",
        "--eval-split",
        "val200",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0.2",
        "--batch-size",
        "50",
        "--workers",
        "0",
    ]
    torch.set_num_threads(1)
    assert (
        main(
            [
                "train",
                *TINY,
                "--method",
                "snf-deep",
                "--data",
                "generated/shapes",
                *quick,
                "--no-progress",
                "--out",
                str(folder),
            ]
        )
        == 0
    )
    return folder


def test_analyze_writes_json_markdown_and_figure_and_plot_redraws_it(run_dir, tmp_path, capsys):
    lora, _ = make_tiny("vit", num_classes=8)
    snftune.apply(lora, "lora")
    perturbed(lora)
    snftune.save_tuned(lora, tmp_path / "lora.safetensors")
    out = tmp_path / "out"
    assert main(["analyze", str(run_dir), str(tmp_path / "lora.safetensors"), *FEW, "--out", str(out)]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert [m["label"] for m in analysis["models"]] == ["backbone", "snf-deep", "lora"]
    assert analysis["samples"] == 4 and analysis["data"] == "generated/shapes" and analysis["split"] == "val200"
    backbone, snf, lora_result = analysis["models"]
    assert len(snf["sites"]) == 4 and snf["sites"][0]["name"] == "blocks.0.attn_site"
    assert all(site["cka"] == pytest.approx(1.0) for site in backbone["sites"])
    assert all(site["shortcut_slot"]["kind"] == "flow" for site in snf["sites"])
    assert all(site["shortcut_slot"]["kind"] == "identity" for site in lora_result["sites"])
    assert lora_result["source"].endswith("lora.safetensors") and snf["method"]["planar_steps"] == 6
    markdown = (out / "analysis.md").read_text()
    assert "## snf-deep" in markdown and "| blocks.1.mlp_site |" in markdown and "flow: max error" in markdown
    assert Image.open(out / "lipschitz.png").size[0] > 600
    assert "wrote" in capsys.readouterr().out

    assert main(["plot", "lipschitz", str(out / "analysis.json"), "--out", str(tmp_path / "again.png")]) == 0
    assert Image.open(tmp_path / "again.png").size == Image.open(out / "lipschitz.png").size


def test_run_folders_of_two_backbones_are_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model_kwargs"]["depth"] = 1
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["analyze", str(run_dir), str(other), *FEW, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "analyze one backbone at a time" in err and "depth" in err
    assert main(["analyze", str(run_dir), "--pretrained", "orig_in21k", *FEW, "--out", str(tmp_path / "out")]) == 2
    assert "pretrained=random" in capsys.readouterr().err


def test_backbone_only_from_a_model_name(tmp_path):
    out = tmp_path / "resnet"
    args = [
        "analyze",
        "--model",
        "resnet10t",
        "--data",
        "generated/shapes",
        "--split",
        "val200",
        *FEW,
        "--out",
        str(out),
    ]
    assert main(args) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["backbone"]["family"] == "resnet" and len(analysis["models"]) == 1
    assert [site["name"] for site in analysis["models"][0]["sites"]] == [f"layer{i}.0.site" for i in range(1, 5)]


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    resnet, _ = make_tiny("resnet-basic", num_classes=8)
    snftune.apply(resnet, "snf-shallow")
    snftune.save_tuned(resnet, tmp_path / "resnet.safetensors")
    (tmp_path / "not.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"models": []}))
    data = ["--data", "generated/shapes", "--split", "val200"]
    return {
        "unsupported backbone": (
            ["analyze", "--model", "ghostnet_050", *data],
            "has no block type snftune supports",
        ),
        "tuned for another backbone": (
            ["analyze", str(tmp_path / "resnet.safetensors"), *TINY, *data],
            "was made for backbone",
        ),
        "bare file without a model": (["analyze", str(tmp_path / "resnet.safetensors"), *data], "pass --model"),
        "missing source": (["analyze", str(tmp_path / "nowhere"), *data], "does not exist"),
        "not JSON": (["plot", "lipschitz", str(tmp_path / "not.json")], "is not JSON"),
        "not an analysis": (["plot", "lipschitz", str(tmp_path / "other.json")], "is not an analysis.json"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unsupported backbone",
        "tuned for another backbone",
        "bare file without a model",
        "missing source",
        "not JSON",
        "not an analysis",
    ],
)
def test_bad_input_is_one_line_with_exit_2(case, tmp_path, capsys):
    args, message = bad_inputs(tmp_path)[case]
    out = [] if args[0] == "plot" else ["--out", str(tmp_path / "out"), *FEW]
    assert main([*args, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
