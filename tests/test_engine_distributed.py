"""DDP: two CPU processes (gloo, launched by torch.distributed.run) reach what one process
reaches with the same global batch. Tolerance: training loss and tuned tensors within 1e-4
(the gradient is averaged across ranks in another order of float additions), top-1 equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import snftune
from snftune.engine import TrainConfig, cleanup_distributed, setup_distributed, train

SRC = Path(snftune.__file__).absolute().parents[1]


def run(out: str) -> dict:
    """Trains the same tiny model on the same data; the process layout comes from the environment."""
    torch.set_num_threads(1)
    dist = setup_distributed("cpu")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=4)
    snftune.apply(model, "snf-deep")  # no BatchNorm, no dropout, no drop-path: nothing batch-dependent
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(44, 3, 32, 32, generator=generator), torch.arange(44) % 4
    held_out = TensorDataset(torch.randn(18, 3, 32, 32, generator=generator), torch.arange(18) % 4)
    # 44 samples, global batch 8: the last step holds 4 samples, split 2 + 2 over the ranks.
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0.5, accum_steps=2, workers=0, progress=False)
    try:
        return train(model, TensorDataset(images, labels), config, out, eval_set=held_out, dist=dist)
    finally:
        cleanup_distributed()


def test_two_processes_match_one_process(tmp_path):
    single = run(str(tmp_path / "one"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [__file__, str(tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert double["timing"]["world_size"] == 2
    assert double["top1"] == single["top1"]
    for mine, theirs in zip(single["history"], double["history"], strict=True):
        assert theirs["train_loss"] == pytest.approx(mine["train_loss"], abs=1e-4)
        assert theirs["eval_count"] == mine["eval_count"] == 18  # every sample counted once over the ranks
    one, two = load_file(tmp_path / "one" / "tuned.safetensors"), load_file(tmp_path / "two" / "tuned.safetensors")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, atol=1e-4, rtol=0)


if __name__ == "__main__":
    run(sys.argv[1])
