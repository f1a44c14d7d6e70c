"""Throughput of many tuned tasks served in one batch, against one task and against a loop.

For each scenario (8 SNF-deep tasks, 8 LoRA tasks, 8 tasks of 8 different methods) it builds
the tasks' tuned files on one randomly initialised backbone (random tuned tensors, a
different class count per task) and times, round-robin in one process so that a change in
machine load touches every ratio alike (medians over rounds, no-grad forwards, eval mode):

- mixed:   ``MultiTaskModel`` of the 8 tasks on a batch of B images, B/8 per task, shuffled;
- one task: the first task's own model (a fresh backbone + ``load_tuned``) on B images;
- loop:    each task's own model on its B/8 images, one task after another;
- frozen:  the untuned backbone on B images (no method at all: the ceiling).

It prints images/s and the ratios mixed/one task (the cost of mixing), mixed/loop (what one
batch gains over a forward per task) and mixed/frozen, and one task/loop (what batching
itself gains on this device). On the CPU the clock is the process's CPU time (other jobs on
a shared machine then change the ratios less); on CUDA it is wall time after a synchronize.

    python benchmarks/multitask.py                          # vit_small_patch16_224, 224 px, batch 64, CPU
    python benchmarks/multitask.py --model snftune-vit-tiny --img-size 32 --batch-size 256
    python benchmarks/multitask.py --device cuda --rounds 20
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import snftune
from snftune.serving import MultiTaskModel

SCENARIOS: dict[str, list[tuple[str, dict]]] = {
    "snf": [("snf-deep", {})] * 8,
    "lora": [("lora", {})] * 8,
    "mixed methods": [
        ("snf-deep", {}),
        ("snf-shallow", {}),
        ("lora", {}),
        ("adapter", {}),
        ("bitfit", {}),
        ("vpt-deep", {}),
        ("vpt-shallow", {"length": 5}),
        ("linear", {}),
    ],
}
CLASS_COUNTS = (10, 37, 100, 2, 47, 102, 5, 397)


def _tuned_files(backbone: torch.nn.Module, methods: list[tuple[str, dict]], folder: Path) -> dict[str, Path]:
    files = {}
    for i, (method, options) in enumerate(methods):
        model = copy.deepcopy(backbone)
        model.reset_classifier(CLASS_COUNTS[i % len(CLASS_COUNTS)])
        snftune.apply(model, method, **options)
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        name = f"{i}-{method}"
        files[name] = snftune.save_tuned(model, folder / f"{name}.safetensors")
    return files


def _single(backbone: torch.nn.Module, path: Path, classes: int, device: torch.device) -> torch.nn.Module:
    """The task's own model: a fresh copy of the backbone with the file loaded."""
    model = copy.deepcopy(backbone)
    model.reset_classifier(classes)
    snftune.load_tuned(model, path)
    return model.to(device).eval()


def _time(fn: Callable[[], None], device: torch.device) -> float:
    if device.type != "cuda":
        start = time.process_time()
        fn()
        return time.process_time() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm or embedded model name")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = snftune.create_model(args.model, img_size=args.img_size, num_classes=10).eval()
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)

    runs: dict[str, Callable[[], None]] = {}
    frozen = copy.deepcopy(backbone).to(device).eval()
    runs["frozen"] = lambda: frozen(images)
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            methods = SCENARIOS[scenario]
            files = _tuned_files(backbone, methods, Path(tmp) / scenario.replace(" ", "-"))
            mixed = MultiTaskModel(copy.deepcopy(backbone), files).to(device)
            ids = torch.arange(args.batch_size) % len(methods)
            ids = ids[torch.randperm(args.batch_size, generator=torch.Generator().manual_seed(0))]
            singles = [
                _single(backbone, path, k, device) for path, k in zip(files.values(), mixed.num_classes, strict=True)
            ]
            rows = [(ids == t).nonzero().flatten().to(device) for t in range(len(methods))]
            runs[f"{scenario}: mixed"] = lambda m=mixed, i=ids: m(images, i)
            runs[f"{scenario}: one task"] = lambda s=singles[0]: s(images)
            runs[f"{scenario}: loop"] = lambda s=singles, r=rows: [
                m(images.index_select(0, i)) for m, i in zip(s, r, strict=True)
            ]

    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(_time(fn, device))
    rate = {name: args.batch_size / statistics.median(t) for name, t in times.items()}

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    clock = "wall time" if device.type == "cuda" else "process CPU time"
    print(
        f"{args.model}, {args.img_size} px, batch {args.batch_size} (8 tasks x {args.batch_size // 8}), "
        f"{device.type} ({where}, {args.threads} thread(s)), {clock}, medians of {args.rounds} rounds"
    )
    print(f"frozen backbone alone: {rate['frozen']:.1f} images/s")
    print("| scenario | mixed (img/s) | mixed / one task | mixed / loop | mixed / frozen | one task / loop |")
    print("|---|---:|---:|---:|---:|---:|")
    for scenario in args.scenarios:
        mixed, one, loop = (rate[f"{scenario}: {variant}"] for variant in ("mixed", "one task", "loop"))
        print(
            f"| {scenario} | {mixed:.1f} | {mixed / one:.3f} | {mixed / loop:.3f} | {mixed / rate['frozen']:.3f} | "
            f"{one / loop:.3f} |"
        )


if __name__ == "__main__":
    main()
