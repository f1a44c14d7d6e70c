"""Our LoRA against HF PEFT's LoRA on the same timm ViT: same outputs, and the train-step time ratio.

PEFT targets whole modules, so it cannot update only the query and value chunks of timm's
fused ``qkv``; both sides here target whole layers that both support (default: the fused
``qkv``, one rank-r update each). After copying our LoRA weights into PEFT's (with a random,
non-zero ``B``), both models must give the same outputs. Then one train step (forward,
cross-entropy, backward, AdamW step) is timed for each, alternating between the two in one
run: warm-up steps, then the median of ``--steps``.

    PYTHONPATH=src /work/venv-peft/bin/python benchmarks/lora_vs_peft.py --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

import snftune
from snftune.methods import LoRALinear


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", nargs="+", default=["qkv"], choices=["qkv", "proj", "fc1", "fc2"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def build(args: argparse.Namespace, method: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img_size, num_classes=10)
    return snftune.apply(model, method, **overrides).to(args.device)


def copy_lora_weights(ours: nn.Module, theirs: nn.Module) -> int:
    """Gives ours a random non-zero B and copies (A, B) into PEFT's layer of the same name."""
    torch.manual_seed(1)
    theirs_by_name = dict(theirs.named_modules())
    copied = 0
    with torch.no_grad():
        for name, layer in ours.named_modules():
            if isinstance(layer, LoRALinear):
                nn.init.normal_(layer.lora_B, std=0.02)
                peft_layer = theirs_by_name[name]
                peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
                peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
                copied += 1
    return copied


def cpu_name() -> str:
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "cpu")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = tuple(args.targets)
    ours = build(args, "lora", targets=targets, rank=args.rank, alpha=float(args.rank))
    theirs = build(
        args, "peft", tuner="lora", options={"r": args.rank, "lora_alpha": args.rank, "target_modules": list(targets)}
    )
    copied = copy_lora_weights(ours, theirs)
    counts = snftune.trainable_summary(ours).tuned, snftune.trainable_summary(theirs).tuned
    assert counts[0] == counts[1], f"trainable counts differ: ours {counts[0]}, PEFT {counts[1]}"

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=generator).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=generator).to(args.device)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        difference = (ours(x) - theirs(x)).abs().max().item()
    assert difference < 1e-4, f"outputs differ by {difference}"

    ours.train(), theirs.train()
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for name, model in (("ours", ours), ("peft", theirs))
    }
    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for step in range(args.warmup + args.steps):
        order = (("ours", ours), ("peft", theirs)) if step % 2 == 0 else (("peft", theirs), ("ours", ours))
        for name, model in order:
            seconds = train_step(model, optimizers[name], x, y)
            if step >= args.warmup:
                times[name].append(seconds)

    median = {name: statistics.median(values) for name, values in times.items()}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(
        f"{args.model} at {args.img_size}px, batch {args.batch}, LoRA rank {args.rank} on {', '.join(targets)} "
        f"({copied} layers, {counts[0]:,} tuned parameters each); {args.device} ({device}), "
        f"{torch.get_num_threads()} threads; warm-up {args.warmup}, median of {args.steps} steps"
    )
    print(f"outputs after copying weights: max |ours - peft| = {difference:.2e}")
    for name in ("ours", "peft"):
        print(f"train step {name}: median {median[name] * 1e3:.1f} ms (min {min(times[name]) * 1e3:.1f} ms)")
    print(f"ratio ours / peft = {median['ours'] / median['peft']:.3f} (below 1: ours faster)")


if __name__ == "__main__":
    main()
