"""What each tuning method costs at the real size: one training step of ViT-B/16 at 224 px
(random weights), per method, in float32 and under bfloat16 autocast, eager and compiled.

For every method: the time of one optimiser step (forward, backward, AdamW) and the memory the
step holds, each also as a ratio to linear probing's and to full fine-tuning's in the same run.
Memory on the CPU is counted, not sampled: the bytes autograd saves for the backward pass
(activations, each storage once, the frozen weights excluded) plus the tuned parameters'
gradients and AdamW's two moments; on CUDA it is the peak allocated above the model and batch.
Compiled steps (inductor) report time only on the CPU (saved-tensor hooks do not reach
compiled graphs). The H100 column is an estimate on paper (see ``--h100-tflops``), not a
measurement.

    python benchmarks/method_cost.py                                   # every method, fp32 + bf16, eager
    python benchmarks/method_cost.py --compile --methods linear full snf-deep lora vpt-deep
    python benchmarks/method_cost.py --device cuda --batch-size 64 --dtypes bf16 --compile
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import snftune
from snftune.engine.acceleration import autocast, compiled, use_threads
from timing import add_clock_option, timer  # this folder's shared clock (the benchmarks run as scripts)

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# One ViT-B/16 training step at 224 px: the forward is 17.6 GFLOPs per image (timm's profile);
# full fine-tuning's backward twice that (activation and weight gradients).
FULL_STEP_GFLOPS = 3 * 17.6


def default_methods() -> list[str]:
    """Every registered method but NOAH's (it needs a searched subnet; its supernet is measured)
    and PEFT's when peft is not installed."""
    peft = importlib.util.find_spec("peft") is not None
    return [m for m in snftune.method_names() if m != "noah" and (peft or not m.startswith("peft"))]


def step_memory(model: torch.nn.Module, step) -> int:
    """Bytes saved for the backward (each storage once, parameters excluded) + gradients + AdamW state."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    tuned = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return sum(saved.values()) + 3 * tuned


def measure(base, method: str, dtype, compile_it: bool, args) -> dict:
    device = torch.device(args.device)
    model = copy.deepcopy(base)
    snftune.apply(model, method)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    runner = compiled(model) if compile_it else model
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 100, (args.batch_size,), device=device)

    def step() -> None:
        with autocast(device, dtype):
            logits = runner(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed = timer(device, args.clock)
    compile_s = time.perf_counter()
    for _ in range(args.warmup):
        step()
    compile_s = time.perf_counter() - compile_s
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    counted: list[int] = []
    if device.type == "cpu" and not compile_it:  # counting saved tensors costs nothing next to a step
        times = [timed(lambda: counted.append(step_memory(model, step))) for _ in range(args.steps)]
    else:
        times = [timed(step) for _ in range(args.steps)]
    memory = torch.cuda.max_memory_allocated() - before if device.type == "cuda" else max(counted, default=None)
    return {
        "method": method,
        "dtype": "bf16" if dtype else "fp32",
        "mode": "compiled" if compile_it else "eager",
        "step_s": statistics.median(times),
        "memory_mb": memory / 2**20 if memory is not None else None,
        "tuned": sum(p.numel() for p in trainable),
        "warmup_wall_s": compile_s,
    }


def ratio(value, reference) -> str:
    return f"{value / reference:.2f}" if value is not None and reference else "-"


def h100_estimate(row: dict, full: dict, args) -> float | None:
    """Images/s on one H100, on paper: this step's time scaled by the ratio of the H100's usable
    bf16 rate (--h100-tflops) to the rate this machine reached on full fine-tuning's step."""
    if not full:
        return None
    machine_tflops = FULL_STEP_GFLOPS * args.batch_size / full["step_s"] / 1000
    return args.batch_size / (row["step_s"] * machine_tflops / args.h100_tflops)


def table(rows: list[dict], args) -> str:
    lines = [
        "| method | dtype | mode | step (s) | × linear | × full | memory (MB) | × linear | × full | "
        "H100 img/s (estimate) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        same = {r["method"]: r for r in rows if (r["dtype"], r["mode"]) == (row["dtype"], row["mode"])}
        linear, full = same.get("linear"), same.get("full")
        estimate = h100_estimate(row, full, args) if row["dtype"] == "bf16" and args.device == "cpu" else None
        memory = row["memory_mb"]
        lines.append(
            f"| {row['method']} | {row['dtype']} | {row['mode']} | {row['step_s']:.2f} | "
            f"{ratio(row['step_s'], linear and linear['step_s'])} | {ratio(row['step_s'], full and full['step_s'])} | "
            f"{f'{memory:.0f}' if memory is not None else '-'} | "
            f"{ratio(memory, linear and linear['memory_mb'])} | {ratio(memory, full and full['memory_mb'])} | "
            f"{f'{estimate:,.0f}' if estimate else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", help="default: every registered method (NOAH's supernet for noah)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--compile", action="store_true", help="also measure each method through torch.compile")
    parser.add_argument("--no-eager", dest="eager", action="store_false", help="with --compile: compiled only")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiling happens there)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (the median is reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per idle core)")
    parser.add_argument(
        "--h100-tflops",
        type=float,
        default=150.0,
        help="usable bf16 TFLOP/s of one H100 for the on-paper estimate (default 150: ~15%% of its 989 dense "
        "peak, about what ViT-B/16 training reaches in eager PyTorch)",
    )
    parser.add_argument("--table-from", metavar="JSON", help="print the table of rows a --json run wrote, and exit")
    parser.add_argument("--json", help="also write the rows here")
    add_clock_option(parser)
    args = parser.parse_args()
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        args.batch_size, args.device = saved["args"]["batch_size"], saved["args"]["device"]
        print(table(saved["rows"], args))
        return
    threads = use_threads(args.threads) if args.device == "cpu" else torch.get_num_threads()
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False, num_classes=100, img_size=args.img_size)
    methods = args.methods or default_methods()
    modes = ([False] if args.eager else []) + ([True] if args.compile else [])
    print(
        f"# {args.model} at {args.img_size} px, batch {args.batch_size}, {args.device} "
        f"({platform.processor() or platform.machine()}, {threads} threads, load {os.getloadavg()[0]:.1f}), "
        f"torch {torch.__version__}, clock {args.clock}",
        flush=True,
    )
    rows = []
    for compile_it in modes:
        for dtype_name in args.dtypes:
            for method in methods:
                torch._dynamo.reset()
                row = measure(base, method, DTYPES[dtype_name], compile_it, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "threads": threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
