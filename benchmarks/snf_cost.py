"""Train-step cost of SNF against its limits, measured in one run.

For each variant (one fresh process each, so peak memory is its own) it prints the train
step time divided by the no-grad forward time of the same model and batch, and the peak
memory of the train steps (optimizer state included) above the memory held before them
(model and batch); on the CPU, from the process's peak resident size. A frozen backbone
needs only activation gradients, so its step should cost about two forwards; SNF-deep
should cost no more than SNF-shallow.

    python benchmarks/snf_cost.py                        # vit_small_patch16_224, batch 16, CPU
    python benchmarks/snf_cost.py --model vit_base_patch16_224 --batch-size 32 --device cuda
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
import time

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


def measure(variant: str, args: argparse.Namespace) -> dict:
    import timm
    import torch

    import snftune

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    method, overrides = VARIANTS[variant]
    model = timm.create_model(args.model, num_classes=args.num_classes)
    try:
        snftune.apply(model, method, **overrides)
    except snftune.methods.UnknownMethodError as error:
        return {"variant": variant, "skipped": str(error)}
    model.to(device)
    x = torch.randn(args.batch_size, 3, *model.pretrained_cfg["input_size"][1:], device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    clock = time.perf_counter if device.type == "cuda" or args.clock == "wall" else time.process_time

    def timed(fn) -> float:
        sync()
        start = clock()
        fn()
        sync()
        return clock() - start

    model.eval()  # dropout/drop-path off: the forward and the step compute the same function
    for _ in range(args.warmup):
        forward()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    for _ in range(args.warmup):
        train_step()
    # Interleaved, so that a change in machine load touches both sides of the ratio alike.
    forward_times, step_times = [], []
    for _ in range(args.repeats):
        forward_times.append(timed(forward))
        step_times.append(timed(train_step))
    forward_s, step_s = statistics.median(forward_times), statistics.median(step_times)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()) - base
    summary = snftune.trainable_summary(model)
    return {
        "variant": variant,
        "trainable": summary.tuned + summary.head,
        "forward_s": forward_s,
        "step_s": step_s,
        "step_over_forward": step_s / forward_s,
        "peak_bytes": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="on the CPU, time by the process's CPU time (robust to other load) or by wall time",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    passthrough = [a for a in sys.argv[1:] if a not in args.variants and a != "--variants"]
    results = {}
    for variant in args.variants:
        print(f"measuring {variant} ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--one", variant],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **MALLOC_ENV},
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])

    shallow = results.get("snf-shallow")
    print(
        f"{args.model}, batch {args.batch_size}, {args.device} ({platform.processor() or platform.machine()}, "
        f"{args.threads or 'default'} torch thread(s), {args.clock} clock), median of {args.repeats} "
        f"interleaved forward/step pairs after {args.warmup} warm-up"
    )
    print("| variant | trainable | step / forward | peak memory (MiB) | step vs SNF-shallow | memory vs SNF-shallow |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant, r in results.items():
        if "skipped" in r:
            print(f"| {variant} | skipped: {r['skipped']} | | | | |")
            continue
        versus = (
            f"{r['step_s'] / shallow['step_s']:.2f}x | {r['peak_bytes'] / shallow['peak_bytes']:.2f}x"
            if shallow and "skipped" not in shallow
            else "- | -"
        )
        print(
            f"| {variant} | {r['trainable']:,} | {r['step_over_forward']:.2f} | "
            f"{r['peak_bytes'] / 2**20:.0f} | {versus} |"
        )


if __name__ == "__main__":
    main()
