"""Train-step cost of SNF against its limits, measured in one run.

Times: one process holds every variant and measures them round-robin (a forward and a train
step of each variant per round), so a change in machine load touches every ratio alike; it
prints each variant's train step time over its own no-grad forward time, and its step time
over SNF-shallow's in the same round (medians over rounds). Memory: one fresh process per
variant, the peak of its train steps (optimizer state included) above the memory held before
them (model and batch); on the CPU, from the process's peak resident size. A frozen backbone
needs only activation gradients, so its step should cost about two forwards; SNF-deep
should cost no more than SNF-shallow.

    python benchmarks/snf_cost.py                        # vit_small_patch16_224, batch 16, CPU
    python benchmarks/snf_cost.py --model vit_base_patch16_224 --batch-size 32 --device cuda
    python benchmarks/snf_cost.py --model convnext_tiny              # any supported family
    python benchmarks/snf_cost.py --model eva02_small_patch14_224
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

from timing import add_clock_option, timer  # this folder's shared clock (the benchmarks run as scripts)

VARIANTS = {
    "linear": ("linear", {}),
    "snf-shallow": ("snf-shallow", {}),
    "snf-deep": ("snf-deep", {}),
    "snf-deep (plain steps)": ("snf-deep", {"memory_efficient": False}),
    "full": ("full", {}),
}

# A fixed mmap threshold makes glibc return every large freed block to the OS, so the
# resident size before the train steps is a clean baseline for their peak (ru_maxrss).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build(variant: str, args: argparse.Namespace):
    """The variant's model, and its no-grad forward and train-step closures."""
    import timm
    import torch

    import snftune

    torch.manual_seed(0)
    device = torch.device(args.device)
    method, overrides = VARIANTS[variant]
    model = timm.create_model(args.model, num_classes=args.num_classes)
    snftune.apply(model, method, **overrides)
    model.to(device).eval()  # dropout/drop-path off: the forward and the step compute the same function
    x = torch.randn(args.batch_size, 3, *model.pretrained_cfg["input_size"][1:], device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    summary = snftune.trainable_summary(model)
    return summary.tuned + summary.head, forward, train_step


def _setup(args: argparse.Namespace):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timed = timer(device, args.clock)

    return torch, device, timed


def measure_memory(variant: str, args: argparse.Namespace) -> dict:
    torch, device, _ = _setup(args)
    trainable, forward, train_step = _build(variant, args)
    forward()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    for _ in range(args.warmup + 1):
        train_step()
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()) - base
    return {"variant": variant, "trainable": trainable, "peak_bytes": peak}


def measure_times(args: argparse.Namespace) -> dict:
    _, _, timed = _setup(args)
    built = {variant: _build(variant, args) for variant in args.variants}
    for _, forward, train_step in built.values():
        for _ in range(args.warmup):
            forward()
            train_step()
    rounds = []
    for _ in range(args.repeats):
        rounds.append({v: (timed(forward), timed(step)) for v, (_, forward, step) in built.items()})
    times = {}
    for variant in args.variants:
        times[variant] = {
            "forward_s": statistics.median(r[variant][0] for r in rounds),
            "step_s": statistics.median(r[variant][1] for r in rounds),
            "step_over_forward": statistics.median(r[variant][1] / r[variant][0] for r in rounds),
            "step_over_shallow": (
                statistics.median(r[variant][1] / r["snf-shallow"][1] for r in rounds)
                if "snf-shallow" in built
                else None
            ),
        }
    return times


def _run_child(args_list: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args_list],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **MALLOC_ENV},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    add_clock_option(parser)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--times-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args)))
        return
    if args.times_only:
        print(json.dumps(measure_times(args)))
        return

    common = [
        f"--model={args.model}",
        f"--batch-size={args.batch_size}",
        f"--num-classes={args.num_classes}",
        f"--device={args.device}",
        f"--warmup={args.warmup}",
        f"--repeats={args.repeats}",
        f"--threads={args.threads}",
        f"--clock={args.clock}",
    ]
    memory = {}
    for variant in args.variants:
        print(f"peak memory of {variant} ...", file=sys.stderr, flush=True)
        memory[variant] = _run_child([*common, f"--memory-of={variant}"])
    print("train step and forward times, all variants round-robin ...", file=sys.stderr, flush=True)
    times = _run_child([*common, "--times-only", "--variants", *args.variants])

    shallow_peak = memory.get("snf-shallow", {}).get("peak_bytes")
    print(
        f"{args.model}, batch {args.batch_size}, {args.device} ({platform.processor() or platform.machine()}, "
        f"{args.threads or 'default'} torch thread(s), {args.clock} clock), medians of {args.repeats} "
        f"round-robin rounds after {args.warmup} warm-up"
    )
    print("| variant | trainable | step / forward | step vs SNF-shallow | peak memory (MiB) | memory vs SNF-shallow |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant in args.variants:
        t, m = times[variant], memory[variant]
        versus_step = "-" if t["step_over_shallow"] is None else f"{t['step_over_shallow']:.2f}x"
        versus_memory = "-" if not shallow_peak else f"{m['peak_bytes'] / shallow_peak:.2f}x"
        print(
            f"| {variant} | {m['trainable']:,} | {t['step_over_forward']:.2f} | {versus_step} | "
            f"{m['peak_bytes'] / 2**20:.0f} | {versus_memory} |"
        )


if __name__ == "__main__":
    main()
