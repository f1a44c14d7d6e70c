"""The GPU's mixed-precision path, run on the CPU: CPU autocast supports bfloat16 and float16,
so every method's forward and backward under autocast is tested here, not first on a GPU.

Tolerances measured on these models (relative L2 error against float32): the fused flow's
parameter gradients are within 0.6% in bfloat16 and 0.06% in float16; whole tiny models' logits
within a few percent in bfloat16 (8 bits of mantissa through every matmul).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

import snftune
from snftune.backbones import UnsupportedModelError
from snftune.cli import main
from snftune.data import build_transform, resolve_task
from snftune.engine import TrainConfig, evaluate, train
from snftune.engine.acceleration import AccelerationError, amp_dtype, autocast, grad_scaler
from snftune.engine.features import extract_features
from snftune.methods import NotApplicableError, ShortcutFlow
from snftune.serving import MultiTaskModel

from conftest import make_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

LOW = (torch.bfloat16, torch.float16)
FLOW_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def flow_gradients(flow: ShortcutFlow, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
    flow.zero_grad()
    y = flow(x)
    y.backward(grad)
    return y, {name: p.grad.clone() for name, p in flow.named_parameters()}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("channel_dim, shape", [(-1, (4, 50, 64)), (1, (2, 64, 8, 8))], ids=["tokens", "maps"])
def test_fused_flow_takes_low_precision_input_and_float32_gradient(dtype, channel_dim, shape) -> None:
    """Under autocast the flow sees a bfloat16/float16 input while the gradient arriving from the
    float32 residual stream is float32 (or the reverse): the backward must mix them, and give
    each parameter its gradient in its own dtype, close to float32's."""
    torch.manual_seed(0)
    flow = ShortcutFlow(64, planar_steps=4, channel_dim=channel_dim, init_range=0.3)
    x, grad = torch.randn(shape), torch.randn(shape)
    y32, reference = flow_gradients(flow, x, grad)
    for x_low, grad_low in ((x.to(dtype), grad), (x.to(dtype), grad.to(dtype)), (x, grad.to(dtype))):
        with torch.autocast("cpu", dtype=dtype):
            y, grads = flow_gradients(flow, x_low, grad_low)
        assert y.dtype == x_low.dtype
        assert relative_error(y, y32) < FLOW_TOLERANCE[dtype]
        for name, g in grads.items():
            assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
            assert relative_error(g, reference[name]) < FLOW_TOLERANCE[dtype], name


# ---------------------------------------------------------------- every method on every family

KINDS = ("vit", "swin", "resnet-basic", "convnext", "eva02", "beit", "swinv2", "regnet", "efficientnet")
OPTIONS = {"noah": dict(prompt=[2, 1], lora=[2, 4], adapter=[4, 0])}  # NOAH's per-block sizes (2 blocks)
# Logits under autocast, relative to float32's, in eval mode. bfloat16 keeps 8 bits of mantissa:
# measured up to 2.7% on these models, 16% on MobileNetV3 (hard-swish and squeeze-excite through
# depthwise convolutions); float16 keeps 11 bits: measured up to 1.5%.
LOGIT_TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.02}
LOOSER_FAMILIES = {"efficientnet": 0.25}


@functools.cache
def _tiny(kind: str) -> tuple[nn.Module, int]:
    return make_tiny(kind, num_classes=8)  # generated/shapes has 8 classes


def tuned_tiny(kind: str, method: str) -> tuple[nn.Module, int]:
    model, size = _tiny(kind)
    model = copy.deepcopy(model)
    try:
        snftune.apply(model, method, **OPTIONS.get(method, {}))
    except (NotApplicableError, UnsupportedModelError) as error:
        pytest.skip(f"{method} does not apply to {kind}: {error}")
    return model, size


def method_cases() -> list:
    peft_missing = importlib.util.find_spec("peft") is None
    return [
        pytest.param(method, kind, id=f"{method}-{kind}")
        for method in snftune.method_names()
        if not (method.startswith("peft") and peft_missing)
        for kind in KINDS
    ]


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> dict:
    """One SGD step under autocast: the unscaled gradients. float16 goes through a GradScaler, as
    the trainer does: the first tries may overflow at its initial scale of 2**16, and it halves the
    scale and skips those steps until the gradients are finite."""
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    scaler = grad_scaler(images.device, dtype)
    before = [p.detach().clone() for p in parameters]
    for _ in range(20):
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same drop-path / random subnet draws in every run
        with autocast(images.device, dtype):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        if scaler is None:
            loss.backward()
            optimizer.step()
            break
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() == scale:  # the step was taken
            break
    else:
        raise AssertionError("the GradScaler skipped 20 steps: the float16 gradients never became finite")
    assert any(not torch.equal(a, p) for a, p in zip(before, parameters, strict=True)), "the step moved nothing"
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def eval_logits(model: nn.Module, images: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.no_grad(), autocast(images.device, dtype):
        return model.eval()(images).float()


CUDA = torch.cuda.is_available()
# The CUDA cases exist only where CUDA does (one skipped test below says so elsewhere), so that
# the CPU suite does not list a hundred skipped cases; `pytest -m cuda` selects them on a GPU.
DEVICES = ["cpu", *([pytest.param("cuda", marks=pytest.mark.cuda)] if CUDA else [])]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA: the per-method CUDA cases are not generated")
def test_auto_chooses_bfloat16_on_a_cuda_card_that_has_it() -> None:
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert amp_dtype(TrainConfig(amp="auto"), torch.device("cuda")) == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method, kind", method_cases())
def test_one_training_step_under_autocast(method: str, kind: str, device: str) -> None:
    """Every registered method on every family it applies to: logits close to float32's, and
    after one step under bfloat16 and float16 autocast (the latter through a GradScaler), a
    finite gradient, in the parameter's own dtype, on every tuned parameter that float32 reaches."""
    model, size = tuned_tiny(kind, method)
    model.to(device)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    labels = torch.tensor([0, 3], device=device)
    reference = eval_logits(model, images, None)
    for dtype in LOW:  # before any train-mode pass, which moves BatchNorm statistics where they train
        tolerance = LOOSER_FAMILIES.get(kind, LOGIT_TOLERANCE[dtype])
        assert relative_error(eval_logits(model, images, dtype), reference) < tolerance, dtype
    probe = copy.deepcopy(model).train()
    torch.manual_seed(0)
    probe(images).sum().backward()  # which tuned parameters float32 reaches (NOAH's supernet draws a subnet)
    reached = {name for name, p in probe.named_parameters() if p.grad is not None}
    assert reached
    for dtype in LOW:
        step_model = copy.deepcopy(model)
        gradients = train_step(step_model, images, labels, dtype)
        assert set(gradients) == reached, dtype
        for name, gradient in gradients.items():
            parameter = step_model.get_parameter(name)
            assert gradient.dtype == parameter.dtype and torch.isfinite(gradient).all(), (dtype, name)


# ---------------------------------------------------------------- evaluation, features, serving, CLI


@functools.cache
def _shapes_val() -> Dataset:
    task = resolve_task("generated/shapes", None)
    model, _ = _tiny("vit")
    return task.dataset("val200", transform=build_transform(task.protocol, input_config_of(model), train=False))


def input_config_of(model: nn.Module) -> dict:
    return {"input_size": (3, 32, 32), "mean": model.pretrained_cfg["mean"], "std": model.pretrained_cfg["std"]}


def small_eval_set(count: int = 24) -> Dataset:
    return Subset(_shapes_val(), range(count))


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_evaluation_and_feature_extraction_under_autocast(dtype: torch.dtype) -> None:
    model, _ = tuned_tiny("vit", "snf-deep")
    dataset = small_eval_set()
    reference = evaluate(model, dataset, batch_size=12)
    result = evaluate(model, dataset, batch_size=12, dtype=dtype)
    assert result["count"] == reference["count"] == len(dataset)
    assert result["loss"] == pytest.approx(reference["loss"], rel=LOGIT_TOLERANCE[dtype])
    assert abs(result["correct"] - reference["correct"]) <= 2  # a near-tie may flip
    probe, _ = tuned_tiny("vit", "linear")
    features32 = extract_features(probe, dataset, batch_size=12, device=torch.device("cpu"))
    features = extract_features(probe, dataset, batch_size=12, device=torch.device("cpu"), dtype=dtype)
    assert features.tensors[0].dtype == torch.float32  # stored in float32 whatever the autocast
    assert relative_error(features.tensors[0], features32.tensors[0]) < LOGIT_TOLERANCE[dtype]
    assert torch.equal(features.tensors[1], features32.tensors[1])


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_multitask_model_under_autocast(tmp_path, dtype: torch.dtype) -> None:
    files = {}
    methods = ("snf-deep", "lora", "vpt-deep", "adapter", "ln-tune", "difffit", "convpass", "repadapter")
    for method in methods:
        model, _ = tuned_tiny("vit", method)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn_like(parameter))
        files[method] = snftune.save_tuned(model, tmp_path / f"{method}.safetensors")
    serving = MultiTaskModel(copy.deepcopy(_tiny("vit")[0]), files).eval()
    ids = [*range(len(methods)), *reversed(range(len(methods)))]
    images = torch.randn(len(ids), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = serving(images, ids).logits
        with autocast(torch.device("cpu"), dtype):
            output = serving(images, ids)
    assert torch.equal(output.mask, reference.isfinite())
    assert relative_error(output.logits[output.mask], reference[output.mask]) < LOGIT_TOLERANCE[dtype]


def test_amp_settings_autocast_on_the_cpu_or_are_refused(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert amp_dtype(TrainConfig(amp="auto"), cpu) is None  # auto: float32 on the CPU
    assert amp_dtype(TrainConfig(amp="off"), cpu) is None
    assert amp_dtype(TrainConfig(amp="bf16"), cpu) == torch.bfloat16
    assert amp_dtype(TrainConfig(amp="fp16"), cpu) == torch.float16
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(AccelerationError, match="^--amp bf16: torch has no autocast for cpu; use --amp off$"):
        amp_dtype(TrainConfig(amp="bf16"), cpu)


def test_train_amp_bf16_through_the_cli_records_the_autocast_used(tmp_path, capsys) -> None:
    common = [
        "train", "--model", "vit_tiny_patch16_224", "--pretrained", "random", "--img-size", "32",
        "--model-kwargs", "depth=2", "patch_size=8",
        "--method", "snf-deep", "--data", "generated/shapes", "--split", "val200", "--eval-split", "val200",
        "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "50", "--workers", "0", "--no-progress",
        "--threads", "1",
    ]  # fmt: skip
    assert main([*common, "--amp", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    assert "torch CPU threads: 1 (--threads)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    provenance = json.loads((tmp_path / "bf16" / "provenance.json").read_text())
    assert metrics["autocast"] == provenance["autocast"] == "bfloat16" and math.isfinite(metrics["train_loss"])
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as patch:
        patch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
        assert main([*common, "--amp", "fp16", "--out", str(tmp_path / "refused")]) == 2
    assert capsys.readouterr().err.strip().endswith("--amp fp16: torch has no autocast for cpu; use --amp off")
    assert not (tmp_path / "refused").exists()  # refused before anything was written


def test_the_trainer_runs_float16_through_its_gradient_scaler(tmp_path) -> None:
    model, size = tuned_tiny("vit", "snf-deep")
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(3))
    data = TensorDataset(images, torch.arange(8) % 4)
    config = TrainConfig(epochs=3, batch_size=4, warmup_epochs=0, workers=0, amp="fp16", progress=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    metrics = train(model, data, config, tmp_path, eval_set=data)
    moved = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert moved  # the scaler found a scale at which the steps were taken
    assert metrics["autocast"] == "float16" and all(math.isfinite(h["train_loss"]) for h in metrics["history"])
    assert math.isfinite(metrics["history"][-1]["eval_loss"])
