"""Decoded images per second through a torch DataLoader for a VTAB-style folder.

By default a generated task is written to a temporary folder as JPEGs (``--image-size`` px) and
read back through the VTAB reader with the VTAB transform at ``--input-size`` (224); ``--root``
measures a real VTAB-1k folder instead. A GPU training ViT-B/16 consumes roughly 1,000 images/s,
so the printed ratio says whether loading keeps up. Absolute figures belong to the machine named
in the output.

    python benchmarks/data_loading.py --workers 2
    python benchmarks/data_loading.py --root /data --task vtab1k/cifar --split train800val200
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from snftune.data import build_transform, resolve_task
from snftune.data.generated import write_vtab_layout

GPU_VIT_B16_IMAGES_PER_S = 1000.0


def measure(root: Path, spec: str, split: str, input_size: int, workers: int, batch_size: int, epochs: int):
    task = resolve_task(spec, root)
    config = {"input_size": (3, input_size, input_size), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    dataset = task.dataset(split, transform=build_transform(task.protocol, config, train=True))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    for _ in loader:  # warm-up epoch: worker start-up, page cache
        break
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _labels in loader:
            count += images.shape[0]
    elapsed = time.perf_counter() - start
    return count, elapsed, tuple(images.shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="data_dir holding vtab-1k/ (default: write a generated task)")
    parser.add_argument("--task", default=None, help="task spec (default vtab1k/<generated task>)")
    parser.add_argument("--generated-task", default="shapes")
    parser.add_argument("--image-size", type=int, default=64, help="size of the generated JPEGs (16..64)")
    parser.add_argument("--split", default="train800val200")
    parser.add_argument("--input-size", type=int, default=224, help="model input size (the protocol's 224)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="intra-op threads of the main process (with --workers 0, 1 avoids oversubscription)",
    )
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.root is None:
            root, spec = Path(tmp), args.task or f"vtab1k/{args.generated_task}"
            start = time.perf_counter()
            write_vtab_layout(root, [args.generated_task], image_size=args.image_size, image_format="jpg")
            source = (
                f"generated task {args.generated_task!r} written as {args.image_size}px JPEGs "
                f"in {time.perf_counter() - start:.1f}s"
            )
        else:
            root, spec = args.root, args.task or "vtab1k/cifar"
            source = f"{args.root}"
        count, elapsed, shape = measure(
            root, spec, args.split, args.input_size, args.workers, args.batch_size, args.epochs
        )
    rate = count / elapsed
    machine = platform.processor() or platform.machine()
    print(
        f"machine: {machine}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} main-process threads)"
    )
    print(f"source: {source}; task {spec}, split {args.split}")
    print(f"decoded + transformed {count} images to {shape} with {args.workers} workers in {elapsed:.2f}s")
    print(
        f"images/s: {rate:.0f}  (ratio to a GPU ViT-B/16's ~{GPU_VIT_B16_IMAGES_PER_S:.0f}/s: "
        f"{rate / GPU_VIT_B16_IMAGES_PER_S:.2f})"
    )


if __name__ == "__main__":
    main()
