import copy
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import snftune
from snftune.backbones import UnsupportedModelError
from snftune.bench.params import count_tuned_parameters
from snftune.cli import main as cli_main
from snftune.methods import ShortcutFlow, SNFConfig, UnknownMethodError
from snftune.tuning import TunedFileError

from conftest import make_tiny

PAPER_COUNTS = {
    ("snf-shallow", "vit_base_patch16_224"): 36_864,
    ("snf-shallow", "vit_large_patch16_224"): 98_304,
    ("snf-shallow", "swin_base_patch4_window7_224"): 48_128,
    ("snf-shallow", "resnet50"): 30_208,
    ("snf-shallow", "resnet101"): 65_024,
    ("snf-deep", "vit_base_patch16_224"): 258_192,
    ("snf-deep", "vit_large_patch16_224"): 688_416,
    ("snf-deep", "swin_base_patch4_window7_224"): 337_184,
}


@pytest.mark.parametrize("method,model_name", sorted(PAPER_COUNTS))
def test_tuned_parameter_counts_match_the_paper(method, model_name):
    assert count_tuned_parameters(model_name, method) == PAPER_COUNTS[method, model_name]


def test_flow_length_and_bottleneck_counts_follow_the_paper_ablations():
    # Table 5 on ViT-B/16: 1/3/5/7-layer flows = J = 0/3/6/9 planar steps = 0.036/0.14/0.25/0.36M.
    counts = [count_tuned_parameters("vit_base_patch16_224", SNFConfig(planar_steps=j)) for j in (0, 3, 6, 9)]
    assert [round(c / 1e6, 2) for c in counts] == [0.04, 0.15, 0.26, 0.37]
    assert counts == [24 * (2 * 768 + j * (2 * 768 + 1)) for j in (0, 3, 6, 9)]
    # Table 7: a bottleneck MLP on the shortcut, 0.29M.
    assert count_tuned_parameters("vit_base_patch16_224", "snf-bottleneck") == 294_912


@pytest.mark.parametrize("method", ["snf-shallow", "snf-residual", "snf-bottleneck"])
def test_exact_identity_at_initialisation(tiny_kind, method):
    model, size = make_tiny(tiny_kind)
    reference = copy.deepcopy(model).eval()
    snftune.apply(model, method).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_snf_deep_starts_near_the_identity(tiny_kind):
    model, size = make_tiny(tiny_kind)
    reference = copy.deepcopy(model).eval()
    snftune.apply(model, "snf-deep").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        assert (model(x) - expected).abs().max() < 0.02 * expected.abs().max()


def test_flows_sit_on_the_configured_slot():
    model, _ = make_tiny("vit")
    snftune.apply(model, "snf-deep")
    sites = snftune.anatomy(model).sites
    assert all(isinstance(s.shortcut, ShortcutFlow) and s.shortcut.planar_steps == 6 for s in sites)
    assert all(isinstance(s.branch, torch.nn.Identity) for s in sites)
    residual, _ = make_tiny("vit")
    snftune.apply(residual, "snf", placement="residual", planar_steps=2)
    assert all(isinstance(s.branch, ShortcutFlow) for s in snftune.anatomy(residual).sites)


def test_only_flows_and_head_are_trainable(tiny_kind):
    model, _ = make_tiny(tiny_kind)
    snftune.apply(model, "snf-deep")
    head = {id(p) for p in model.get_classifier().parameters()}
    flows = {id(p) for m in model.modules() if isinstance(m, ShortcutFlow) for p in m.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == head | flows
    summary = snftune.trainable_summary(model)
    assert summary.tuned == sum(
        p.numel() for m in model.modules() if isinstance(m, ShortcutFlow) for p in m.parameters()
    )
    assert summary.head == sum(p.numel() for p in model.get_classifier().parameters())


def test_gradients_and_updates_reach_only_tuned_parameters(tiny_kind):
    model, size = make_tiny(tiny_kind)
    snftune.apply(model, "snf-deep")
    before = copy.deepcopy(model.state_dict())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        optimizer.step()
    tuned = set(snftune.tuned_tensors(model))
    for name, tensor in model.state_dict().items():
        changed = not torch.equal(tensor, before[name])
        if name in tuned and name.endswith((".shift", ".log_scale", ".u", ".w", ".b")):
            assert changed, f"tuned {name} did not move"
        elif name not in tuned:
            assert not changed, f"frozen {name} changed (BatchNorm statistics included)"


def _trained(kind: str, method: str, seed: int = 0):
    model, size = make_tiny(kind, seed=seed)
    snftune.apply(model, method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), size


@pytest.mark.parametrize("method", ["snf-shallow", "snf-deep", "snf-bottleneck"])
def test_save_then_load_on_a_fresh_model_is_bit_exact(tmp_path, tiny_kind, method):
    model, size = _trained(tiny_kind, method)
    path = snftune.save_tuned(model, tmp_path / "task.safetensors")
    fresh, _ = make_tiny(tiny_kind)
    snftune.load_tuned(fresh, path).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh.snftune_state.config == model.snftune_state.config
    assert set(snftune.tuned_tensors(fresh)) == set(snftune.tuned_tensors(model))


def test_tuned_file_holds_only_tuned_tensors_and_the_config(tmp_path):
    model, _ = _trained("resnet-bottleneck", "snf-deep")
    path = snftune.save_tuned(model, tmp_path / "task.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert keys == set(snftune.tuned_tensors(model))
    assert {"fc.weight", "fc.bias"} <= keys and not any(k.startswith("layer1.0.conv1") for k in keys)
    assert json.loads(metadata["config"])["planar_steps"] == 6 and metadata["label"] == "snf-deep"
    assert path.stat().st_size < 0.1 * sum(t.numel() * 4 for t in model.state_dict().values())


def test_load_into_a_model_tuned_with_the_same_method(tmp_path):
    model, size = _trained("vit", "snf-shallow")
    path = snftune.save_tuned(model, tmp_path / "a.safetensors")
    target, _ = make_tiny("vit")
    snftune.apply(target, "snf-shallow")
    snftune.load_tuned(target, path).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(target(x), model(x))


def test_unknown_method_is_named_with_the_known_ones():
    model, _ = make_tiny("vit")
    with pytest.raises(UnknownMethodError, match="unknown method 'snf-deeper'.*snf-deep"):
        snftune.apply(model, "snf-deeper")
    with pytest.raises(UnknownMethodError, match="no setting 'planar'"):
        snftune.apply(model, "snf-deep", planar=3)
    with pytest.raises(ValueError, match="placement must be one of"):
        SNFConfig(placement="branch")


def test_method_from_yaml_file(tmp_path):
    (tmp_path / "m.yaml").write_text("method: snf-deep\nplanar_steps: 3\n")
    assert snftune.resolve_config(str(tmp_path / "m.yaml")) == SNFConfig(planar_steps=3)
    (tmp_path / "bad.yaml").write_text("method: snf\nsteps: 3\n")
    with pytest.raises(UnknownMethodError, match="no setting 'steps'"):
        snftune.resolve_config(str(tmp_path / "bad.yaml"))


def test_unsupported_model_is_a_clear_error():
    with torch.device("meta"):
        model = timm.create_model("mixer_s16_224", num_classes=3)
    with pytest.raises(UnsupportedModelError, match="Block types found: .*MixerBlock"):
        snftune.apply(model, "snf-deep")


def test_applying_twice_is_refused():
    model, _ = make_tiny("vit")
    snftune.apply(model, "snf-shallow")
    with pytest.raises(ValueError, match="already tuned"):
        snftune.apply(model, "snf-deep")


def test_missing_tuned_file(tmp_path):
    model, _ = make_tiny("vit")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        snftune.load_tuned(model, tmp_path / "missing.safetensors")


def test_foreign_files_are_refused(tmp_path):
    model, _ = make_tiny("vit")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(TunedFileError, match="not a safetensors file"):
        snftune.load_tuned(model, tmp_path / "garbage.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TunedFileError, match="not written by snftune.save_tuned"):
        snftune.load_tuned(model, tmp_path / "plain.safetensors")


def test_file_for_another_backbone_is_refused(tmp_path):
    source, _ = _trained("resnet-bottleneck", "snf-shallow")
    path = snftune.save_tuned(source, tmp_path / "resnet.safetensors")
    vit, _ = make_tiny("vit")
    with pytest.raises(TunedFileError, match="made for backbone 'resnet26'.*architecture 'vit_tiny_patch16_224'"):
        snftune.load_tuned(vit, path)
    deeper = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=5)
    vit_file = snftune.save_tuned(_trained("vit", "snf-shallow")[0], tmp_path / "vit.safetensors")
    with pytest.raises(TunedFileError, match="same architecture with other shapes"):
        snftune.load_tuned(deeper, vit_file)


def test_file_for_another_method_or_head_is_refused(tmp_path):
    path = snftune.save_tuned(_trained("vit", "snf-deep")[0], tmp_path / "deep.safetensors")
    shallow, _ = make_tiny("vit")
    snftune.apply(shallow, "snf-shallow")
    with pytest.raises(TunedFileError, match="holds method .*planar_steps.: 6.*tuned with"):
        snftune.load_tuned(shallow, path)
    other_head, _ = make_tiny("vit", num_classes=7)
    with pytest.raises(TunedFileError, match=r"head\.(weight|bias).*is num_classes the same"):
        snftune.load_tuned(other_head, path)


def test_batchnorm_statistics_stay_frozen_in_train_mode():
    model, size = make_tiny("resnet-bottleneck")
    snftune.apply(model, "snf-shallow").train()
    stats = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k})
    model(torch.randn(4, 3, size, size))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert model.training and not model.bn1.training


def test_params_command_prints_the_paper_counts(capsys):
    assert cli_main(["params"]) == 0
    out = capsys.readouterr().out
    for count in ("36,864", "98,304", "48,128", "30,208", "65,024", "258,192", "688,416", "337,184"):
        assert count in out
    assert cli_main(["params", "--methods", "snf-shallow", "--models", "resnet50", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows == [
        {
            "method": "snf-shallow",
            "backbone": "resnet50",
            "model": "resnet50",
            "tuned_parameters": 30208,
            "millions": 0.030208,
            "note": "",
            "skipless_blocks": [],
        }
    ]


def test_a_method_that_does_not_fit_leaves_the_model_as_it_was():
    from snftune.methods.registry import NotApplicableError

    model, _ = make_tiny("resnet-basic")
    with pytest.raises(NotApplicableError):
        snftune.apply(model, "vpt-deep")
    assert all(p.requires_grad for p in model.parameters())
    assert getattr(model, "snftune_state", None) is None
    snftune.apply(model, "snf-shallow")
    assert snftune.trainable_summary(model).tuned == 2 * sum(s.channels for s in snftune.anatomy(model).sites)


def test_a_tuned_model_pickles_whole():
    import io

    model, size = _trained("resnet-bottleneck", "snf-deep")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copy_ = torch.load(buffer, weights_only=False).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(copy_(x), model(x))
    copy_.train()
    assert not copy_.bn1.training
