"""Serving many tuned tasks in one batch: every sample's output equals its own task's model.

The reference for every check is the single-task model a user would build: a fresh copy of
the backbone with the task's file loaded by ``load_tuned``. Tuned tensors are perturbed away
from their initialisation (LoRA's zero ``B``, the identity flow) so that every method changes
the outputs. The per-sample modules are also checked one by one against the method modules
whose equations they batch.
"""

from __future__ import annotations

import copy
import csv
import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm.layers import LayerNorm2d
from torch import nn

import snftune
from snftune.backbones import anatomy
from snftune.cli import main
from snftune.data import resolve_task
from snftune.methods import Adapter, DoRALinear, GLoRAConfig, GLoRALinear, LoRALinear, ShortcutFlow
from snftune.methods.adapter import MixedAdapter
from snftune.methods.convpass import Convpass, ConvpassConfig, MixedConvpass
from snftune.methods.dora import MixedDoRA
from snftune.methods.flows import MixedShortcutFlow
from snftune.methods.glora import MixedGLoRA
from snftune.methods.ln_tune import MixedLayerNorm, TunedLayerNorm
from snftune.methods.lora import MixedLoRA
from snftune.methods.mixed import TaskRouting
from snftune.runs import build_backbone, input_config, resolve_settings, write_run_config
from snftune.serving import MultiTaskModel, ServingError
from snftune.tuning import TunedFileError

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _backbone(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=5)
    if kind == "swin":
        return timm.create_model(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            window_size=4,
            depths=(1, 1, 2, 1),
            embed_dim=16,
            num_heads=(1, 2, 2, 4),
            num_classes=5,
        )
    if kind == "convnext":
        return timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5)
    if kind == "beit":
        return timm.create_model(
            "beit_base_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2, num_classes=5
        )
    return timm.create_model("resnet18", channels=(16, 32, 64, 128), num_classes=5)


def backbone(kind: str = "vit") -> nn.Module:
    """A fresh copy of one seeded backbone: the same frozen weights on every call."""
    return copy.deepcopy(_backbone(kind))


def tuned_file(folder: Path, kind: str, method: str, options: dict, classes: int, seed: int) -> Path:
    """A tuned file whose tensors are moved away from their initialisation."""
    model = backbone(kind)
    model.reset_classifier(classes)
    snftune.apply(model, method, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return snftune.save_tuned(model, folder / f"{seed}-{method}.safetensors")


def single_task_logits(kind: str, path: Path, classes: int, images: torch.Tensor) -> torch.Tensor:
    model = backbone(kind)
    model.reset_classifier(classes)
    snftune.load_tuned(model, path)
    with torch.no_grad():
        return model.eval()(images)


def check_against_single_task_models(tmp_path: Path, kind: str, cases: list[tuple[str, dict, int]]) -> None:
    """Builds a MultiTaskModel of ``cases`` and compares a shuffled mixed batch, row by row."""
    files = {f"{i}-{m}": tuned_file(tmp_path, kind, m, o, k, seed=i) for i, (m, o, k) in enumerate(cases)}
    model = MultiTaskModel(backbone(kind), files)
    per_task = 3
    torch.manual_seed(1)
    images = torch.randn(per_task * len(cases), 3, 32, 32)
    ids = (torch.arange(images.shape[0]) % len(cases))[torch.randperm(images.shape[0])]
    with torch.no_grad():
        output = model(images, ids)
    assert output.logits.shape == (images.shape[0], max(k for _, _, k in cases))
    for task, (method, _, classes) in enumerate(cases):
        rows = (ids == task).nonzero().flatten()
        expected = single_task_logits(kind, files[f"{task}-{method}"], classes, images[rows])
        torch.testing.assert_close(output.logits[rows, :classes], expected, atol=ATOL, rtol=0, msg=method)
        assert output.mask[rows].sum(1).eq(classes).all()
        assert torch.isneginf(output.logits[rows, classes:]).all()


# ------------------------------------------------------------------ every method against its own model

METHOD_CASES = {
    "snf": [
        ("snf-shallow", {}, 3),
        ("snf-deep", {}, 7),
        ("snf", {"planar_steps": 2, "placement": "residual"}, 4),
        ("snf-bottleneck", {"bottleneck_width": 4}, 5),
    ],
    "bitfit": [("bitfit", {}, 3), ("bitfit", {}, 6)],
    "lora": [
        ("lora", {"rank": 4, "alpha": 2.0}, 3),
        ("lora-qkv", {}, 5),
        ("lora-all", {"rank": [3, 0]}, 2),
        ("lora", {"targets": ["k", "fc2"]}, 4),
    ],
    "adapter": [
        ("adapter", {}, 3),
        ("adapter-parallel", {"position": "both", "activation": "relu", "scale": 0.1, "width": [4, 8]}, 6),
        ("adapter", {"position": "attn", "activation": "silu", "width": 2}, 2),
    ],
    "vpt": [
        ("vpt-shallow", {"length": 3}, 4),
        ("vpt-deep", {"length": [2, 5]}, 5),
        ("vpt-deep", {"length": [0, 4]}, 3),
        ("vpt-deep", {"length": 1}, 2),
    ],
    "linear": [("linear", {}, 9), ("linear", {}, 2)],
    "ln-tune": [("ln-tune", {}, 3), ("ln-tune", {}, 6)],
    "difffit": [("difffit", {}, 4), ("difffit", {}, 2)],
    "convpass": [
        ("convpass", {}, 3),
        ("convpass", {"width": 4, "scale": 0.1, "xavier_init": True}, 5),
        ("convpass", {"width": 2, "scale": 10.0, "dropout": 0.0}, 2),
    ],
    "repadapter": [
        ("repadapter", {}, 3),
        ("repadapter", {"width": 4, "groups": 4, "scale": 0.5}, 4),
        ("repadapter", {"width": 6, "groups": 1, "dropout": 0.0}, 2),
    ],
    "fact": [
        ("fact-tt", {}, 3),
        ("fact-tk", {"rank": 4, "scale": 2.0}, 5),
        ("fact-tt", {"rank": 2, "targets": ["attn"]}, 2),
        ("fact-tk", {"targets": ["mlp"]}, 4),
    ],
    "dora": [
        ("dora", {"rank": 4, "alpha": 2.0}, 3),
        ("dora", {"targets": ["qkv", "fc2"]}, 5),
        ("dora", {"rank": [2, 0], "targets": ["k", "v", "proj", "fc1"]}, 2),
    ],
    "glora": [
        ("glora", {}, 3),
        ("glora", {"a": "lora", "b": "vector", "c": "lora", "d": "constant", "e": "none", "rank": 2}, 5),
        # B as a constant adds it times the sum of LayerNorm'd inputs (about 0): float32 rounding then
        # moves a task's own logits by ~4e-5, so that form is checked in float64 below.
        ("glora", {"a": "constant", "b": "none", "c": "none", "d": "none", "e": "constant"}, 2),
        ("glora", {"a": "none", "b": "none", "c": "vector", "d": "vector", "e": "vector"}, 4),
        ("glora", {"a": "lora", "b": "lora", "rank": 3}, 6),
    ],
    "vqt": [
        ("vqt", {"tokens": 2}, 3),
        ("vqt", {"tokens": 4, "normalise": False}, 5),
        ("vqt", {}, 2),
    ],
}


@pytest.mark.parametrize("family", sorted(METHOD_CASES))
def test_each_method_mixed_batch_equals_single_task_models(tmp_path, family):
    check_against_single_task_models(tmp_path, "vit", METHOD_CASES[family])


def test_mixed_method_batch_equals_single_task_models(tmp_path):
    cases = [case for family in sorted(METHOD_CASES) for case in METHOD_CASES[family][:2]]
    check_against_single_task_models(tmp_path, "vit", cases)


def test_swin_mixed_batch_equals_single_task_models(tmp_path):
    # Swin's attention sees a batch of windows: LoRA and BitFit route them to their sample's task.
    cases = [("snf-deep", {}, 3), ("snf-residual", {}, 4), ("adapter", {}, 5), ("bitfit", {}, 2), ("lora-all", {}, 6)]
    check_against_single_task_models(tmp_path, "swin", cases)


def test_field_methods_nest_with_others_at_shared_places(tmp_path):
    # One norm read by LN-tune, RepAdapter, SSF and Convpass's bypass; biases of DiffFit and BitFit;
    # a branch slot with DiffFit's scale and a sequential adapter; a shortcut slot with Convpass and
    # a parallel adapter; a qkv layer with LoRA; VPT's prompt region in every Convpass and LN-tune
    # row (the final norm strips it first): each kind changes its own tasks' rows only.
    cases = [
        ("vpt-deep", {"length": 3}, 4),
        ("ln-tune", {}, 3),
        ("repadapter", {}, 4),
        ("ssf", {}, 2),
        ("convpass", {}, 5),
        ("difffit", {}, 3),
        ("bitfit", {}, 6),
        ("adapter", {}, 2),
        ("adapter-parallel", {}, 4),
        ("lora", {}, 3),
        ("snf-deep", {}, 5),
    ]
    check_against_single_task_models(tmp_path, "vit", cases)


def test_field_methods_mixed_with_the_baselines_equal_single_task_models(tmp_path):
    # FacT and DoRA beside LoRA on the same qkv layers, GLoRA over them, VQT's queries sharing the
    # prompt region of VPT tasks of other lengths.
    cases = [
        ("fact-tt", {}, 3),
        ("lora", {"rank": 4}, 4),
        ("dora", {"targets": ["qkv", "fc1"]}, 5),
        ("snf-deep", {}, 2),
        ("glora", {"a": "lora", "rank": 2}, 6),
        ("vqt", {"tokens": 3}, 4),
        ("adapter", {}, 3),
        ("vpt-deep", {"length": [5, 1]}, 5),
        ("fact-tk", {"rank": 4}, 2),
        ("vqt", {"tokens": 6}, 3),
    ]
    check_against_single_task_models(tmp_path, "vit", cases)


def test_field_methods_on_swin_and_convnext_equal_single_task_models(tmp_path):
    # Swin's (B, H, W, C) maps (Convpass convolves them whole) and its patch-merging norms;
    # ConvNeXt's channels-first LayerNorm2d and its depthwise convolutions' biases.
    swin = [("convpass", {"width": 4}, 3), ("repadapter", {}, 4), ("difffit", {}, 2), ("ln-tune", {}, 5)]
    check_against_single_task_models(tmp_path, "swin", [*swin, ("lora-all", {}, 3), ("snf-deep", {}, 2)])
    convnext = [("ln-tune", {}, 3), ("difffit", {}, 4), ("adapter", {}, 2), ("bitfit", {}, 5)]
    check_against_single_task_models(tmp_path, "convnext", convnext)


def test_swin_field_methods_mixed_batch_equals_single_task_models(tmp_path):
    # DoRA and GLoRA on Swin's windowed attention and MLPs, beside the baselines on the same layers.
    cases = [
        ("dora", {}, 3),
        ("snf-deep", {}, 4),
        ("glora", {}, 5),
        ("lora-all", {}, 2),
        ("adapter", {}, 3),
        ("dora", {"rank": 2, "targets": ["q", "proj", "fc2"]}, 4),
    ]
    check_against_single_task_models(tmp_path, "swin", cases)


def test_resnet_mixed_batch_equals_single_task_models(tmp_path):
    # Channels-first maps, and BitFit on BatchNorm whose frozen statistics the files carry.
    cases = [
        ("snf-deep", {}, 3),
        ("snf-shallow", {}, 4),
        ("adapter", {}, 5),
        ("bitfit", {}, 2),
        ("snf-bottleneck", {}, 3),
    ]
    check_against_single_task_models(tmp_path, "resnet", cases)


# ------------------------------------------------------------------ per-sample modules against the method modules


# Batches with samples of tasks that have no module here (the module works on its tasks' rows
# only), and batches whose every sample has one (it works on the whole batch).
BATCHES = {"some-tasks-without": [0, 1, 2, 3, 1, 0], "every-task-with": [3, 1, 0, 0, 1, 3]}


def _randomise(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def _route(routing: TaskRouting, batch: list[int], module: nn.Module | Callable, x: torch.Tensor) -> torch.Tensor:
    with routing.route(torch.tensor(batch), torch.device("cpu")), torch.no_grad():
        return module(x)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("channel_dim, shape", [(-1, (6, 5, 16)), (1, (6, 16, 3, 3))])
def test_mixed_flow_equals_each_tasks_shortcut_flow(channel_dim, shape, batch):
    flows = {
        task: ShortcutFlow(16, steps, channel_dim, dtype=torch.float64) for task, steps in ((0, 0), (1, 6), (3, 2))
    }
    for task, flow in flows.items():
        _randomise(flow, task)
    routing = TaskRouting()
    mixed = MixedShortcutFlow(flows, num_tasks=4, routing=routing)
    x = torch.randn(shape, dtype=torch.float64)
    y = _route(routing, BATCHES[batch], mixed, x)
    for row, task in enumerate(BATCHES[batch]):
        if task not in flows:
            assert torch.equal(y[row], x[row])  # a task without a flow here: exactly the identity
            continue
        flow = flows[task]
        torch.testing.assert_close(y[row : row + 1], flow(x[row : row + 1]), atol=1e-12, rtol=0)
        torch.testing.assert_close(y[row : row + 1], flow.forward_reference(x[row : row + 1]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_mixed_adapter_equals_each_tasks_adapter(batch):
    adapters = {
        0: Adapter(16, 8, -1, "gelu", dtype=torch.float64),
        1: Adapter(16, 3, -1, "relu", scale=0.1, dtype=torch.float64),
        3: Adapter(16, 5, -1, "silu", bias=False, dtype=torch.float64),
    }
    for task, adapter in adapters.items():
        _randomise(adapter, task)
    routing = TaskRouting()
    mixed = MixedAdapter(adapters, num_tasks=4, routing=routing)
    x = torch.randn(6, 7, 16, dtype=torch.float64)
    y = _route(routing, BATCHES[batch], mixed, x)
    for row, task in enumerate(BATCHES[batch]):
        expected = adapters[task](x[row : row + 1]) if task in adapters else x[row : row + 1]
        torch.testing.assert_close(y[row : row + 1], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("norm_type, shape", [(nn.LayerNorm, (6, 5, 16)), (LayerNorm2d, (6, 16, 3, 3))])
def test_mixed_layer_norm_equals_each_tasks_norm(norm_type, shape, batch):
    frozen = norm_type(16).double()
    _randomise(frozen, 9)
    norms = {task: copy.deepcopy(frozen) for task in (0, 1, 3)}
    for task, norm in norms.items():
        _randomise(norm, task)
    names = {0: ["weight", "bias"], 1: ["weight", "bias"], 3: ["bias"]}
    with torch.no_grad():
        norms[3].weight.copy_(frozen.weight)  # task 3 tunes the shift alone
    routing = TaskRouting()
    tuned = {task: TunedLayerNorm(norm, names[task]) for task, norm in norms.items()}
    mixed = MixedLayerNorm(tuned, num_tasks=4, routing=routing, base=frozen)
    x = torch.randn(shape, dtype=torch.float64)
    y = _route(routing, BATCHES[batch], mixed, x)
    with torch.no_grad():
        untuned = frozen(x)
    for row, task in enumerate(BATCHES[batch]):
        if task not in norms:
            assert torch.equal(y[row], untuned[row])  # a task without a norm here: the frozen output exactly
            continue
        with torch.no_grad():
            torch.testing.assert_close(y[row : row + 1], norms[task](x[row : row + 1]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("shape, prefix", [((6, 10, 16), 1), ((6, 9, 16), 0), ((6, 3, 3, 16), 0)])
def test_mixed_convpass_equals_each_tasks_convpass(shape, prefix, batch):
    norm = nn.LayerNorm(16).double()
    _randomise(norm, 9)
    settings = {0: ConvpassConfig(width=4), 1: ConvpassConfig(width=2, scale=0.1), 3: ConvpassConfig(width=3, scale=10)}
    bypasses = {
        task: Convpass(16, config, norm, (3, 3), prefix, dtype=torch.float64) for task, config in settings.items()
    }
    for task, bypass in bypasses.items():
        _randomise(bypass.eval(), task)
    routing = TaskRouting()
    mixed = MixedConvpass(bypasses, num_tasks=4, routing=routing, base=nn.Identity(), norm=norm)
    x = torch.randn(shape, dtype=torch.float64)
    y = _route(routing, BATCHES[batch], mixed, x)
    for row, task in enumerate(BATCHES[batch]):
        if task not in bypasses:
            assert torch.equal(y[row], x[row])  # a task without a bypass here: exactly the identity
            continue
        with torch.no_grad():
            torch.testing.assert_close(y[row : row + 1], bypasses[task](x[row : row + 1]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("chunked", [True, False], ids=["q-and-v-chunks", "chunks-and-whole-layer"])
def test_mixed_lora_equals_each_tasks_lora_linear(chunked, batch):
    base = nn.Linear(12, 36).double()
    layers = {
        0: LoRALinear(copy.deepcopy(base), 4, 8.0, chunks=3, updated=(0, 2)),
        1: LoRALinear(copy.deepcopy(base), 3, 2.0, chunks=3, updated=(2,)),
        3: LoRALinear(copy.deepcopy(base), 2, 1.0, chunks=3, updated=(0,))
        if chunked
        else LoRALinear(copy.deepcopy(base), 2, 1.0),
    }
    for task, layer in layers.items():
        _randomise(layer, task)
        layer.base_layer.load_state_dict(base.state_dict())
    routing = TaskRouting()
    mixed = MixedLoRA(layers, num_tasks=4, routing=routing, base=base)
    assert (mixed.chunks, mixed.kept.tolist()) == ((3, [0, 2]) if chunked else (1, [0]))  # k is never computed
    x = torch.randn(6, 5, 12, dtype=torch.float64)
    y = _route(routing, BATCHES[batch], mixed, x)
    with torch.no_grad():
        for row, task in enumerate(BATCHES[batch]):
            expected = layers[task](x[row : row + 1]) if task in layers else layers[0].base_layer(x[row : row + 1])
            torch.testing.assert_close(y[row : row + 1], expected, atol=1e-12, rtol=0)


def check_mixed_layer(mixed_kind: type, layers: dict[int, nn.Module], base: nn.Linear, batch: str) -> None:
    """``mixed_kind`` over ``layers`` (each wrapping a copy of ``base``, randomised) gives every row its
    task's layer's output, and rows of tasks without one ``base``'s, in float64."""
    for task, layer in layers.items():
        _randomise(layer, task)
        layer.base_layer.load_state_dict(base.state_dict())
    routing = TaskRouting()
    mixed = mixed_kind(layers, num_tasks=4, routing=routing, base=base)
    x = torch.randn(6, 5, base.in_features, dtype=torch.float64)
    y = _route(routing, BATCHES[batch], mixed, x)
    with torch.no_grad():
        for row, task in enumerate(BATCHES[batch]):
            expected = layers[task](x[row : row + 1]) if task in layers else base(x[row : row + 1])
            torch.testing.assert_close(y[row : row + 1], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_mixed_dora_equals_each_tasks_dora_linear(batch):
    # Tasks with other chunks (q and v; v; the whole layer): the gain of each is its own, 1 elsewhere.
    base = nn.Linear(12, 36).double()
    layers = {
        0: DoRALinear(copy.deepcopy(base), 4, 8.0, chunks=3, updated=(0, 2)),
        1: DoRALinear(copy.deepcopy(base), 3, 2.0, chunks=3, updated=(2,)),
        3: DoRALinear(copy.deepcopy(base), 2, 1.0),
    }
    check_mixed_layer(MixedDoRA, layers, base, batch)


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_mixed_glora_equals_each_tasks_glora_linear(batch):
    base = nn.Linear(12, 10).double()
    forms = {
        0: GLoRAConfig(),
        1: GLoRAConfig(a="lora", b="constant", c="lora", d="constant", e="none", rank=3),
        3: GLoRAConfig(a="constant", b="vector", c="none", d="none", e="constant", rank=2),
    }
    layers = {task: GLoRALinear(copy.deepcopy(base), config) for task, config in forms.items()}
    check_mixed_layer(MixedGLoRA, layers, base, batch)


# ------------------------------------------------------------------ outputs, prompts, task ids


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    return {
        "snf": tuned_file(folder, "vit", "snf-deep", {}, 3, seed=0),
        "vpt": tuned_file(folder, "vit", "vpt-deep", {"length": 4}, 6, seed=1),
    }


def test_output_pads_to_the_widest_head_and_accepts_task_names(vit_files):
    model = MultiTaskModel(backbone(), vit_files)
    assert (
        model.task_names == ["snf", "vpt"] and model.num_classes == [3, 6] and model.methods == ["snf-deep", "vpt-deep"]
    )
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        by_name = model(images, ["vpt", "snf", "vpt"])
        by_index = model(images, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(by_name.logits, by_index.logits, atol=0, rtol=0)
    assert [row.numel() for row in by_name.per_sample()] == [6, 3, 6]
    assert by_name.mask.tolist()[1] == [True] * 3 + [False] * 3
    probabilities = by_name.logits.softmax(-1)
    torch.testing.assert_close(probabilities[1, :3], by_name.per_sample()[1].softmax(-1))
    assert probabilities[1, 3:].eq(0).all()


def test_a_batch_without_prompt_tasks_carries_no_prompt_region(vit_files):
    model = MultiTaskModel(backbone(), vit_files)
    tokens = []
    model.backbone.blocks[0].register_forward_hook(lambda module, args, out: tokens.append(out.shape[1]))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images, ["snf", "snf"])
        model(images, ["snf", "vpt"])
    assert tokens == [17, 17 + 4]  # 16 patches + class token; then 4 prompt slots for every sample


def test_bad_task_ids_are_refused(vit_files):
    model = MultiTaskModel(backbone(), vit_files)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(KeyError, match="unknown task 'dtd'; the tasks are snf, vpt"):
        model(images, ["snf", "dtd"])
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        model(images, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="3 task ids for a batch of 2 images"):
        model(images, [0, 1, 0])
    with pytest.raises(RuntimeError, match="inference only"):
        model.train()


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("method", ["full", "sidetune"])
def test_unsupported_methods_are_refused_in_one_line(tmp_path, vit_files, method):
    path = tuned_file(tmp_path, "vit", method, {}, 4, seed=5)
    fresh = backbone()
    with pytest.raises(ServingError) as error:
        MultiTaskModel(fresh, {**vit_files, "other": path})
    message = str(error.value)
    assert "\n" not in message and f"tuned with '{method}'" in message and "cannot be served" in message
    with pytest.raises(ValueError, match="no residual sites"):
        anatomy(fresh)  # every file is checked before the backbone is touched


@pytest.mark.parametrize("method", ["fact-tt", "dora", "glora"])
def test_a_qkv_whose_biases_timm_keeps_apart_is_refused_with_the_parts_reason(tmp_path, method):
    # BEiT's attention adds its q/v biases itself, bypassing a per-sample module at attn.qkv.
    path = tuned_file(tmp_path, "beit", method, {}, 3, seed=0)
    with pytest.raises(ServingError, match="blocks.0.attn.qkv: .* whose biases timm keeps in the attention"):
        MultiTaskModel(backbone("beit"), {"beit": path})


def test_files_for_another_backbone_are_refused(tmp_path, vit_files):
    deeper = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=5)
    snftune.apply(deeper, "snf-shallow")
    other = snftune.save_tuned(deeper, tmp_path / "deeper.safetensors")
    with pytest.raises(TunedFileError, match="made for backbone 'vit_tiny_patch16_224'.*other shapes"):
        MultiTaskModel(backbone(), {**vit_files, "deeper": other})
    with pytest.raises(TunedFileError, match="made for backbone 'vit_tiny_patch16_224'.*architecture 'resnet18'"):
        MultiTaskModel(backbone("resnet"), {"snf": vit_files["snf"]})


def test_a_tuned_backbone_and_other_batchnorm_statistics_are_refused(tmp_path, vit_files):
    tuned = backbone()
    snftune.apply(tuned, "snf-shallow")
    with pytest.raises(ServingError, match="already tuned with 'snf-shallow'"):
        MultiTaskModel(tuned, vit_files)
    path = tuned_file(tmp_path, "resnet", "bitfit", {}, 3, seed=0)
    other_weights = backbone("resnet")
    with torch.no_grad():
        other_weights.bn1.running_mean.add_(1.0)
    with pytest.raises(ServingError, match="bn1.running_mean with other values than the backbone's"):
        MultiTaskModel(other_weights, {"bitfit": path})


# ------------------------------------------------------------------ snftune predict


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory) -> dict[str, Path]:
    """A run folder (SNF on generated/shapes, 8 named classes), a bare LoRA file (6 classes) and 5 images,
    all on the shipped snftune-vit-tiny."""
    folder = tmp_path_factory.mktemp("predict")
    resolved = resolve_settings({"model": "snftune-vit-tiny", "method": "snf-deep", "data": "generated/shapes"})
    run = folder / "shapes-run"
    write_run_config(run, resolved)
    for method, classes, path in (
        ("snf-deep", 8, run / "tuned.safetensors"),
        ("lora", 6, folder / "terrain.safetensors"),
    ):
        model = snftune.create_model("snftune-vit-tiny", num_classes=classes)
        snftune.apply(model, method)
        generator = torch.Generator().manual_seed(classes)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        snftune.save_tuned(model, path)
    images = folder / "images" / "nested"
    images.mkdir(parents=True)
    dataset = resolve_task("generated/shapes").dataset("val200")
    for i in range(5):
        dataset[i][0].save(images / f"{i}.png")
    return {"run": run, "bare": folder / "terrain.safetensors", "images": folder / "images", "folder": folder}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_top_k_names_and_probabilities_of_every_task(predict_inputs, capsys):
    out = predict_inputs["folder"] / "predictions.csv"
    args = ["predict", "--tuned", str(predict_inputs["run"]), f"terrain={predict_inputs['bare']}"]
    code = main(
        [*args, "--images", str(predict_inputs["images"]), "--out", str(out), "--top-k", "3", "--batch-size", "4"]
    )
    assert code == 0
    assert "10 predictions (5 images x 2 tasks: shapes-run (snf-deep), terrain (lora))" in capsys.readouterr().out
    rows = _read_csv(out)
    assert [(r["image"], r["task"]) for r in rows[:3]] == [
        ("nested/0.png", "shapes-run"),
        ("nested/0.png", "terrain"),
        ("nested/1.png", "shapes-run"),
    ]
    assert len(rows) == 10 and list(rows[0])[-1] == "probability_3"

    # Each task's own model on the same images, through the evaluation transform of its run.
    resolved = resolve_settings({"model": "snftune-vit-tiny", "method": "snf-deep", "data": "generated/shapes"})
    names = resolve_task("generated/shapes").class_names
    for task, path, classes, labels in (
        ("shapes-run", predict_inputs["run"] / "tuned.safetensors", 8, names),
        ("terrain", predict_inputs["bare"], 6, None),
    ):
        model = build_backbone(resolved.settings, drop_path=0.0)
        model.reset_classifier(classes)
        snftune.load_tuned(model, path)
        transform = snftune.data.build_transform("vtab", input_config(model, resolved.settings), train=False)
        dataset = resolve_task("generated/shapes").dataset("val200", transform=transform)
        images = torch.stack([dataset[i][0] for i in range(5)])
        with torch.no_grad():
            top = model.eval()(images).softmax(-1).topk(3)
        for i, row in enumerate(r for r in rows if r["task"] == task):
            expected = [labels[c] if labels else str(c) for c in top.indices[i].tolist()]
            assert [row[f"class_{k}"] for k in (1, 2, 3)] == expected
            got = [float(row[f"probability_{k}"]) for k in (1, 2, 3)]
            assert got == pytest.approx(top.values[i].tolist(), abs=1e-5)


def test_predict_leaves_cells_empty_past_a_tasks_class_count(predict_inputs):
    out = predict_inputs["folder"] / "wide.csv"
    listing = predict_inputs["folder"] / "list.txt"
    listing.write_text("images/nested/0.png 3\nimages/nested/1.png\n")
    args = ["predict", "--tuned", str(predict_inputs["bare"]), "--model", "snftune-vit-tiny"]
    assert main([*args, "--images", str(listing), "--out", str(out), "--top-k", "7"]) == 0
    rows = _read_csv(out)
    assert [r["image"] for r in rows] == ["images/nested/0.png", "images/nested/1.png"]
    assert all(r["class_6"] and not r["class_7"] and not r["probability_7"] for r in rows)
    assert sum(float(rows[0][f"probability_{k}"]) for k in range(1, 7)) == pytest.approx(1.0, abs=1e-5)


def test_predict_keeps_to_a_runs_class_subset(predict_inputs, tmp_path):
    run = tmp_path / "subset-run"
    shutil.copytree(predict_inputs["run"], run)
    record = yaml.safe_load((run / "config.yaml").read_text())
    record["task"]["class_subset"] = [1, 4, 6]  # as ImageNet-A/-R runs record theirs
    (run / "config.yaml").write_text(yaml.safe_dump(record))
    out = tmp_path / "subset.csv"
    assert main(["predict", "--tuned", str(run), "--images", str(predict_inputs["images"]), "--out", str(out)]) == 0
    names = resolve_task("generated/shapes").class_names
    for row in _read_csv(out):
        assert {row[f"class_{k}"] for k in (1, 2, 3)} == {names[1], names[4], names[6]}
        assert not row["class_4"]
        assert sum(float(row[f"probability_{k}"]) for k in (1, 2, 3)) == pytest.approx(1.0, abs=1e-5)


def test_predict_bad_inputs_exit_2_with_one_line(predict_inputs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3)
    snftune.apply(other, "snf-shallow")
    mismatched = snftune.save_tuned(other, tmp_path / "other.safetensors")
    run, images, out = str(predict_inputs["run"]), str(predict_inputs["images"]), str(tmp_path / "p.csv")
    cases = {
        "does not exist": ["--tuned", str(tmp_path / "missing.safetensors"), "--images", images],
        "holds no image files": ["--tuned", run, "--images", str(empty)],
        "pass --model": ["--tuned", str(predict_inputs["bare"]), "--images", images],
        "made for backbone": ["--tuned", run, str(mismatched), "--images", images],
    }
    for expected, args in cases.items():
        assert main(["predict", *args, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("snftune predict: error: ") and expected in err and err.count("\n") == 1
    assert not Path(out).exists()


def test_predict_refuses_run_folders_of_different_backbones(predict_inputs, tmp_path, capsys):
    resolved = resolve_settings(
        {"model": "snftune-vit-tiny", "pretrained": "random", "method": "linear", "data": "generated/terrain"}
    )
    run = tmp_path / "random-run"
    write_run_config(run, resolved)
    model = snftune.create_model("snftune-vit-tiny", pretrained="random", num_classes=6)
    snftune.apply(model, "linear")
    snftune.save_tuned(model, run / "tuned.safetensors")
    args = ["predict", "--tuned", str(predict_inputs["run"]), str(run), "--images", str(predict_inputs["images"])]
    assert main([*args, "--out", str(tmp_path / "p.csv")]) == 2
    assert "were tuned on different backbones (pretrained None and 'random')" in capsys.readouterr().err
