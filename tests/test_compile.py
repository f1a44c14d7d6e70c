"""torch.compile, gradient checkpointing and --threads, through the CLI and on the models snftune tunes.

Compiling with inductor takes minutes per model on a 2-core CPU, so the tests compile with
``aot_eager``: dynamo captures the forward and AOTAutograd traces the backward, the graphs
inductor would receive, then eager kernels run them. ``benchmarks/method_cost.py --compile``
and ``benchmarks/gpu_check.sh`` run inductor.
"""

from __future__ import annotations

import json

import pytest
import torch

import snftune
from snftune.cli import main
from snftune.methods import ShortcutFlow

from conftest import make_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = [
    "train", "--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=2", "patch_size=8",
    "--img-size", "32",
    "--data", "generated/shapes", "--split", "val200", "--eval-split", "val200", "--epochs", "1",
    "--warmup-epochs", "0", "--batch-size", "50", "--workers", "0", "--no-progress",
]  # fmt: skip


def test_the_fused_flow_and_a_tuned_vit_compile_without_graph_breaks() -> None:
    for flow, shape in ((ShortcutFlow(16, 3), (2, 5, 16)), (ShortcutFlow(16, 3, channel_dim=1), (2, 16, 4, 4))):
        explained = torch._dynamo.explain(flow)(torch.randn(shape, requires_grad=True))
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    model, size = make_tiny("vit")
    snftune.apply(model, "snf-deep")
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, size, size))
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def train_losses(folder, *extra: str, method: str = "snf-deep") -> list[float]:
    assert main([*TRAIN, "--method", method, "--out", str(folder), *extra]) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    return [metrics["history"][0]["train_loss"], metrics["history"][0]["eval_loss"]]


def test_compile_and_grad_checkpointing_train_to_the_eager_loss(tmp_path, capsys) -> None:
    """The same run eager, compiled and with gradient checkpointing: the same training and
    evaluation loss. Checkpointing recomputes the same arithmetic (exact); compiling may
    reorder it (within 1e-5 relative). The thread count is said once, at the start."""
    eager = train_losses(tmp_path / "eager")  # default threads: the idle cores, at most torch's (1 here)
    assert capsys.readouterr().out.count("torch CPU threads: 1 (one per idle core; --threads sets it)") == 1
    assert train_losses(tmp_path / "checkpointed", "--grad-checkpointing", "--threads", "1") == eager
    assert "torch CPU threads: 1 (--threads)" in capsys.readouterr().out
    assert train_losses(tmp_path / "compiled", "--compile", "aot_eager") == pytest.approx(eager, rel=1e-5)
    settings = json.loads((tmp_path / "compiled" / "metrics.json").read_text())["settings"]["train"]
    assert settings["compile"] == "aot_eager" and not settings["grad_checkpointing"]


@pytest.mark.parametrize("kind, method", [("vit", "snf-deep"), ("vit", "vpt-deep"), ("resnet-basic", "snf-deep")])
def test_grad_checkpointing_recomputes_the_blocks_snftune_installed(kind: str, method: str) -> None:
    """timm's checkpoint_seq calls the blocks with residual sites: each runs again in the backward."""
    model, size = make_tiny(kind)
    snftune.apply(model, method)
    blocks = [m for m in model.modules() if type(m).__name__.endswith("SiteBlock")]
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):  # pre-hooks: a recomputation stops once it has what it needs
        block.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
    model.set_grad_checkpointing(True)
    model.train()(torch.randn(2, 3, size, size)).sum().backward()
    assert blocks and calls == [2] * len(blocks)


def test_an_unknown_compile_backend_and_zero_threads_are_refused_in_one_line(tmp_path, capsys) -> None:
    assert main([*TRAIN, "--method", "snf-deep", "--compile", "fast", "--out", str(tmp_path / "a")]) == 2
    assert "compile must be one of inductor, aot_eager, eager, cudagraphs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse refuses it, by the run key's own rule
        main([*TRAIN, "--method", "snf-deep", "--threads", "0", "--out", str(tmp_path / "b")])
    assert exited.value.code == 2
    assert "--threads: must be a whole number in [1, 4096], got '0'" in capsys.readouterr().err
