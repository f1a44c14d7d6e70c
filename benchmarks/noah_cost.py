"""NOAH's costs, measured in one run: a supernet train step against a train step of the largest
single subnet, and the search's time per candidate.

Variants, all in one process and timed round-robin (one train step of each per round, so a
change in machine load touches every ratio alike; medians over rounds):

- ``largest subnet``: the ``noah`` method with every module at the largest size in every block
  (plain modules, what a retrain of that subnet costs);
- ``supernet, random subnet``: ``noah-supernet`` as it trains (a random subnet drawn and
  activated before every step; on average smaller than the largest);
- ``supernet, largest fixed``: ``noah-supernet`` with its largest subnet and no sampling (the
  slicing's own overhead: the same arithmetic as ``largest subnet``).

Dropout is off in every variant so that they compute the same kind of function. Goal: the
supernet's step at most 1.3x the largest subnet's.

Search time per candidate: activating a subnet and scoring it (``snftune.engine.evaluate``)
on ``--val-size`` images (VTAB-1k's val200 by default), against a no-grad forward of the same
images through the plain largest subnet.

    python benchmarks/noah_cost.py                                       # the shipped backbone, batch 64
    python benchmarks/noah_cost.py --model vit_small_patch16_224 --batch-size 16
    python benchmarks/noah_cost.py --model vit_base_patch16_224 --batch-size 64 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics

import torch
from torch.utils.data import TensorDataset

import snftune
from snftune.engine import evaluate
from snftune.methods.noah import set_active_subnet, supernet_space
from snftune.methods.noah_subnets import NOAH_SIZES, subnet_parameters
from timing import add_clock_option, timer  # this folder's shared clock (the benchmarks run as scripts)

VARIANTS = ("largest subnet", "supernet, random subnet", "supernet, largest fixed")


def _backbone(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    pretrained = "random" if args.model.startswith("snftune-") else None
    return snftune.create_model(args.model, pretrained, num_classes=args.num_classes)


def _build(variant: str, args: argparse.Namespace, device: torch.device):
    """The variant's model (eval mode: no dropout, no drop-path) and its train-step closure."""
    model = _backbone(args)
    if variant == "largest subnet":
        blocks = len(model.blocks)
        largest = [max(args.sizes)] * blocks
        snftune.apply(model, "noah", prompt=largest, lora=largest, adapter=largest, dropout=0.0)
    else:
        sample = variant == "supernet, random subnet"
        snftune.apply(model, "noah-supernet", sizes=args.sizes, dropout=0.0, sample=sample)
    model.to(device).eval()
    if variant == "supernet, random subnet":
        model.noah_switch.train()  # draws a subnet before every forward, as in training
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[1:]
    size = getattr(model.patch_embed, "img_size", size)
    x = torch.randn(args.batch_size, 3, *size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return model, train_step, tuple(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snftune-vit-tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(NOAH_SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="rounds of timing")
    parser.add_argument("--candidates", type=int, default=5, help="subnets scored for the search's time")
    parser.add_argument("--val-size", type=int, default=200, help="images a candidate is scored on")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    add_clock_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timed = timer(device, args.clock)

    built = {variant: _build(variant, args, device) for variant in VARIANTS}
    for _, step, _ in built.values():
        for _ in range(args.warmup):
            step()
    rounds = [{variant: timed(step) for variant, (_, step, _) in built.items()} for _ in range(args.repeats)]
    step_s = {v: statistics.median(r[v] for r in rounds) for v in VARIANTS}
    ratio = {v: statistics.median(r[v] / r["largest subnet"] for r in rounds) for v in VARIANTS}

    # the search: activate a subnet, score it on val-size images; against a plain forward of them
    supernet, _, size = built["supernet, largest fixed"]
    plain = built["largest subnet"][0]
    images = torch.randn(args.val_size, 3, *size)
    val = TensorDataset(images, torch.randint(0, args.num_classes, (args.val_size,)))
    space, draw = supernet_space(supernet), random.Random(0).randrange
    candidates = [space.random(draw) for _ in range(args.candidates)]
    batch = args.batch_size

    def score(subnet) -> None:
        set_active_subnet(supernet, subnet)
        evaluate(supernet, val, batch_size=batch, device=device)

    def plain_forward() -> None:
        with torch.no_grad():
            for start in range(0, args.val_size, batch):
                plain(images[start : start + batch].to(device))

    score(candidates[0])
    per_candidate = [(timed(lambda s=s: score(s)), timed(plain_forward)) for s in candidates]
    candidate_s = statistics.median(c for c, _ in per_candidate)
    candidate_ratio = statistics.median(c / f for c, f in per_candidate)

    embed_dim = supernet.embed_dim
    where = "cuda: " + torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {platform.machine()}"
    clock = "wall" if device.type == "cuda" or args.clock == "wall" else "CPU-time"
    print(
        f"{args.model}, batch {args.batch_size}, sizes {args.sizes}, {where}, {args.threads or 'default'} torch "
        f"thread(s), {clock} clock; medians of {args.repeats} "
        f"round-robin rounds after {args.warmup} warm-up"
    )
    print("| variant | tuned parameters | train step (s) | vs largest subnet |")
    print("|---|---:|---:|---:|")
    for variant in VARIANTS:
        tuned = snftune.trainable_summary(built[variant][0]).tuned
        print(f"| {variant} | {tuned:,} | {step_s[variant]:.4f} | {ratio[variant]:.2f}x |")
    largest = subnet_parameters(space.largest(), embed_dim)
    print(
        f"\nsearch: {candidate_s:.3f} s per candidate ({args.val_size} images, median of {args.candidates} random "
        f"subnets) = {candidate_ratio:.2f}x a no-grad forward of them through the largest subnet ({largest:,} tuned)"
    )
    print(f"goal: supernet step <= 1.3x the largest subnet's: {ratio['supernet, random subnet']:.2f}x")


if __name__ == "__main__":
    main()
