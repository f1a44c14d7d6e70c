"""Engine: schedule, data order, determinism, accumulation, learning, checkpoints and resume,
metrics, on a 2-block ViT at 32 px and in-memory tensors (CPU, one thread)."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from torch.utils.data import Dataset, TensorDataset

import snftune
from snftune.engine import CHECKPOINT_NAME, ConfigError, ResumeError, TrainConfig, WarmupCosine, evaluate, train
from snftune.engine.checkpoint import atomic_torch_save, load_checkpoint
from snftune.engine.sampling import StepBatchSampler, steps_per_epoch
from snftune.tuning import load_tuned, tuned_tensors

NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(method: str = "snf-shallow", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=NUM_CLASSES, **kwargs
    )
    return snftune.apply(model, method)


def prototype_data(n: int, seed: int, noise: float = 1.0) -> TensorDataset:
    """Noisy copies of one random image per class: learnable in a few steps."""
    prototypes = torch.randn(NUM_CLASSES, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = prototypes[labels] + noise * torch.randn(n, 3, 32, 32, generator=generator)
    return TensorDataset(images, labels)


def config(**overrides) -> TrainConfig:
    values = dict(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0.5, workers=0, progress=False, seed=0)
    return TrainConfig(**{**values, **overrides})


def tensors_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in tuned_tensors(model).items()}


# --- schedule and settings -----------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    schedule = WarmupCosine(base_lr=1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert schedule(0) == pytest.approx(1e-6)
    assert schedule(5) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert schedule(10) == pytest.approx(1e-3)  # the peak, right after warm-up
    assert schedule(55) == pytest.approx((1e-3 + 1e-5) / 2)  # half way through the cosine
    assert schedule(100) == pytest.approx(1e-5)
    values = [schedule(s) for s in range(10, 101)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert WarmupCosine(1.0, 10)(0) == pytest.approx(1.0)  # no warm-up: starts at the peak


def test_config_names_unknown_settings_and_bad_values():
    with pytest.raises(ConfigError, match="'learning_rate'.*known: epochs"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="report"):
        TrainConfig(report="best-on-val")
    with pytest.raises(ConfigError, match="not divisible by accum_steps"):
        TrainConfig(batch_size=10, accum_steps=3)


# --- data order ------------------------------------------------------------------------------------


def _epoch(sampler: StepBatchSampler, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_sampler_splits_each_global_batch_over_ranks_and_micro_batches():
    n, batch = 37, 8
    single = _epoch(StepBatchSampler(n, batch, seed=3), epoch=1)
    assert len(single) == steps_per_epoch(n, batch) == 5  # 4 full batches + the partial one of 5
    layouts = [StepBatchSampler(n, batch, seed=3, rank=r, world_size=2, accum_steps=2) for r in range(2)]
    shards = [_epoch(s, epoch=1) for s in layouts]
    for step, expected in enumerate(single):
        micro = [m for shard in shards for m in shard[2 * step : 2 * step + 2]]
        assert sorted(x for m in micro for x in m) == sorted(expected)  # same samples, same sample seeds
    assert _epoch(StepBatchSampler(n, batch, seed=3), epoch=2) != single  # a new order every epoch
    assert _epoch(StepBatchSampler(n, batch, seed=3), epoch=1, start=2) == single[2:]  # resume skips steps
    # A last batch too small to give every rank a sample per micro-batch is dropped.
    assert steps_per_epoch(33, 8, world_size=2, accum_steps=2) == 4


# --- determinism, accumulation, learning ----------------------------------------------------------------


def test_same_seed_and_settings_give_identical_numbers(tmp_path):
    data, held_out = prototype_data(48, seed=1), prototype_data(32, seed=2)
    runs = []
    for name, workers in (("a", 0), ("b", 2)):  # loading in worker processes changes nothing
        model = tiny_model("snf-deep", drop_path_rate=0.1)  # drop-path: randomness inside the model too
        settings = config(mixup=0.8, cutmix=1.0, workers=workers)
        metrics = train(model, data, settings, tmp_path / name, eval_set=held_out)
        runs.append((metrics, tensors_of(model)))
    (first, tensors_a), (second, tensors_b) = runs
    assert first["history"] == second["history"]
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    other = tiny_model("snf-deep", drop_path_rate=0.1)
    train(other, data, config(mixup=0.8, cutmix=1.0, seed=1), tmp_path / "c", eval_set=held_out)
    assert not all(torch.equal(tensors_a[k], v) for k, v in tensors_of(other).items())


def test_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path):
    data = prototype_data(40, seed=1)
    results = []
    for accum in (1, 2, 4):
        model = tiny_model("snf-deep")
        metrics = train(model, data, config(batch_size=8, accum_steps=accum), tmp_path / f"accum{accum}")
        results.append((metrics["train_loss"], tensors_of(model)))
    loss, reference = results[0]
    for other_loss, tensors in results[1:]:
        assert other_loss == pytest.approx(loss, abs=1e-5)
        for name, tensor in tensors.items():
            torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=1e-4)


def test_training_learns_a_small_task(tmp_path):
    data, held_out = prototype_data(64, seed=1), prototype_data(64, seed=2)
    model = tiny_model("snf-shallow")
    before = evaluate(model, held_out, batch_size=64)
    metrics = train(model, data, config(epochs=4, label_smoothing=0.1), tmp_path, eval_set=held_out)
    first, last = metrics["history"][0]["train_loss"], metrics["history"][-1]["train_loss"]
    assert last < 0.5 * first
    assert metrics["top1"] > 90.0 > before["top1"]  # chance is 25%
    assert metrics["top1"] == metrics["final"]["top1"] == metrics["history"][-1]["top1"]


# --- outputs ------------------------------------------------------------------------------------------------


def test_run_folder_holds_metrics_tuned_weights_and_a_json_lines_log(tmp_path):
    data, held_out = prototype_data(32, seed=1), prototype_data(16, seed=2)
    model = tiny_model()
    metrics = train(
        model, data, config(eval_every=2, epochs=3, log_every=2), tmp_path, eval_set=held_out, eval_split="val"
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["top1"] == metrics["top1"] and written["reported"] == "final"
    assert "best" not in written  # a best-on-evaluation figure only when asked for
    assert written["reported_as"] == "top-1 on 'val' after the final epoch (3)"
    assert written["tuned_parameters"] == snftune.trainable_summary(model).tuned > 0
    assert [h["epoch"] for h in written["history"] if "top1" in h] == [2, 3]  # every 2 epochs, and the last
    assert written["settings"]["train"]["epochs"] == 3
    assert not (tmp_path / CHECKPOINT_NAME).exists()  # metrics.json marks the run finished
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines][:2] == ["start", "train"]
    assert {"loss", "lr", "images_per_s"} <= set(lines[1])
    assert sum(line["event"] == "epoch" for line in lines) == 3 and lines[-1]["event"] == "end"
    fresh = tiny_model(seed=0)  # the same backbone; the head and flow come from the file
    load_tuned(fresh, tmp_path / "tuned.safetensors")
    assert evaluate(fresh, held_out)["top1"] == pytest.approx(metrics["top1"])


def test_report_best_is_labelled_as_selected_on_the_evaluation_split(tmp_path):
    data, held_out = prototype_data(32, seed=1), prototype_data(16, seed=2)
    metrics = train(tiny_model(), data, config(epochs=3, report="best"), tmp_path, eval_set=held_out, eval_split="test")
    accuracies = [h["top1"] for h in metrics["history"]]
    assert metrics["reported"] == "best" and metrics["top1"] == max(accuracies)
    assert metrics["best"]["selected_on"] == "test" and "selected on 'test' itself" in metrics["reported_as"]
    assert metrics["final"]["top1"] == accuracies[-1]  # the final figure stays next to it


def test_evaluate_restricts_predictions_to_a_class_subset():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # always prefers class 0, then 3, then 2
            return torch.tensor([[5.0, 0.0, 1.0, 2.0]]).expand(len(x), -1)

    data = TensorDataset(torch.zeros(6, 1), torch.tensor([3, 3, 3, 2, 2, 0]))
    assert evaluate(Fixed(), data)["top1"] == pytest.approx(100 / 6)
    restricted = evaluate(Fixed(), data, class_subset=[2, 3])  # class 0 cannot be predicted
    assert restricted["top1"] == pytest.approx(50.0) and restricted["count"] == 6


# --- checkpoints and resume ----------------------------------------------------------------------------------


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save({"step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails half way)
        atomic_torch_save({"step": 2, "bad": lambda: None}, path)
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


class Crashing(Dataset):
    """Raises after ``limit`` loads: a run dying mid-epoch (a disk error, a pre-empted job)."""

    def __init__(self, dataset: Dataset, limit: int) -> None:
        self.dataset, self.limit, self.loads = dataset, limit, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.loads += 1
        if self.loads > self.limit:
            raise OSError("simulated crash")
        return self.dataset[index]


def test_a_crashed_run_resumes_mid_epoch_to_the_same_numbers(tmp_path):
    data, held_out = prototype_data(40, seed=1), prototype_data(16, seed=2)
    settings = config(epochs=3, checkpoint_every=2, mixup=0.5)
    reference_model = tiny_model("snf-deep", drop_path_rate=0.1)
    reference = train(reference_model, data, settings, tmp_path / "reference", eval_set=held_out)

    crashed = tmp_path / "crashed"
    with pytest.raises(OSError, match="simulated crash"):  # 5 steps per epoch: dies in epoch 2, step 4
        train(
            tiny_model("snf-deep", drop_path_rate=0.1), Crashing(data, 8 * 8 + 3), settings, crashed, eval_set=held_out
        )
    position = load_checkpoint(crashed / CHECKPOINT_NAME)["position"]
    assert position == {"epoch": 1, "step": 3}  # global step 8 = epoch 2, after its third step
    model = tiny_model("snf-deep", drop_path_rate=0.1)  # the same frozen backbone, as pretrained weights give
    with torch.no_grad():
        for tensor in tuned_tensors(model).values():
            tensor.add_(1.0)  # the tuned tensors must come from the checkpoint
    resumed = train(model, data, settings, crashed, eval_set=held_out, resume=True)
    assert resumed["history"] == reference["history"]
    reference_tensors = tensors_of(reference_model)
    assert all(torch.equal(t, reference_tensors[k]) for k, t in tensors_of(model).items())
    events = [json.loads(line)["event"] for line in (crashed / "log.jsonl").read_text().splitlines()]
    assert events.count("epoch") == 3 and events.count("start") == 1  # nothing logged twice


def test_resume_refuses_other_settings(tmp_path):
    data = prototype_data(40, seed=1)
    with pytest.raises(OSError):
        train(tiny_model(), Crashing(data, 20), config(checkpoint_every=1), tmp_path)
    with pytest.raises(ResumeError, match=r"lr: 0.01 -> 0.1"):
        train(tiny_model(), data, config(checkpoint_every=1, lr=0.1), tmp_path, resume=True)


def test_loss_that_diverges_stops_the_run_with_a_hint(tmp_path):
    data = prototype_data(16, seed=1)
    data.tensors = (data.tensors[0] * math.inf, data.tensors[1])
    with pytest.raises(FloatingPointError, match="lower --lr"):
        train(tiny_model(), data, config(epochs=1), tmp_path)
