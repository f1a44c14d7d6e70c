"""Images per second into training, side by side in one run: a plain torchvision ``ImageFolder``
+ ``DataLoader``, snftune without the image cache, and snftune with a warm image cache.

A generated task is written to a temporary folder as JPEGs (``--image-size`` px, re-encoded at
``--source-size`` px when given, so that decoding costs what a photo's does) in the VTAB-1k
layout, and as an ``ImageFolder`` tree of hard links to the same files. All three loaders use
the same VTAB-1k training transform at ``--input-size`` (224: resize, to tensor, normalise),
``--workers`` processes and batches of ``--batch-size``; the snftune loaders are the engine's
(seeded samples, step batches). Each round reads one epoch from every loader in turn, so a
change in machine load touches all three alike; the medians over ``--rounds`` are printed with
their ratios to the plain loader. The cold build of the cache (one decode of every image) is
timed on its own. ``--root`` measures a real VTAB-1k task folder instead (no ``ImageFolder``
tree: the plain loader then reads the snftune list through a plain ``Dataset``).

    python benchmarks/data_loading.py --workers 2
    python benchmarks/data_loading.py --source-size 384 --workers 2
    python benchmarks/data_loading.py --root /data --task vtab1k/cifar --split train800val200
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from snftune.data import build_transform, resolve_task
from snftune.data.generated import write_vtab_layout
from snftune.data.image_cache import ImageCache
from snftune.engine.sampling import SeededSamples, StepBatchSampler, seed_worker

GPU_VIT_B16_IMAGES_PER_S = 1000.0


class EngineLoader:
    """The training loop's loader (``snftune.engine.trainer.train``): seeded samples in seeded step batches."""

    def __init__(self, dataset: Dataset, batch_size: int, workers: int) -> None:
        self.sampler = StepBatchSampler(len(dataset), batch_size, seed=0)
        self.loader = DataLoader(
            SeededSamples(dataset),
            batch_sampler=self.sampler,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(0),
            persistent_workers=workers > 0,
        )
        self.epoch = 0

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


class PlainList(Dataset):
    """``(path, label)`` pairs read with Pillow: the plain baseline for a folder without class folders."""

    def __init__(self, samples, transform) -> None:
        self.samples, self.transform = [(s.path, s.label) for s in samples], transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def write_source(root: Path, task: str, image_size: int, source_size: int | None) -> Path:
    """The task as JPEGs in the VTAB-1k layout under ``root``, and an ImageFolder tree of hard links."""
    write_vtab_layout(root, [task], image_size=image_size, image_format="jpg")
    folder = root / "vtab-1k" / task
    tree = root / "imagefolder"
    for line in (folder / "train800val200.txt").read_text().split("\n"):
        if not line.strip():
            continue
        relative, label = line.rsplit(None, 1)
        path = folder / relative
        if source_size:
            with Image.open(path) as image:
                image.convert("RGB").resize((source_size, source_size), Image.BICUBIC).save(path, quality=90)
        target = tree / f"{int(label):03d}" / f"{Path(relative).parent.name}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(path, target)
    return tree


def images_per_s(loader, finish) -> tuple[float, tuple[int, ...]]:
    """One epoch; ``finish`` (the cached dataset's ``batch_transform``, normalising pixels) runs here
    in the main process, on the CPU, as the engine runs it on the training device."""
    count, start = 0, time.perf_counter()
    for images, _labels in loader:
        if finish is not None:
            images = finish(images)
        count += images.shape[0]
    return count / (time.perf_counter() - start), tuple(images.shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="data_dir holding vtab-1k/ (default: write a generated task)")
    parser.add_argument("--task", default=None, help="task spec (default vtab1k/<generated task>)")
    parser.add_argument("--generated-task", default="shapes")
    parser.add_argument("--image-size", type=int, default=64, help="size of the generated images (16..64)")
    parser.add_argument("--source-size", type=int, help="re-encode the JPEGs at this size (a photo's decode cost)")
    parser.add_argument("--split", default="train800val200")
    parser.add_argument("--input-size", type=int, default=224, help="model input size (the protocol's 224)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="epochs read from each loader, interleaved")
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
        tree = None
        if args.root is None:
            root, spec = Path(tmp) / "data", args.task or f"vtab1k/{args.generated_task}"
            start = time.perf_counter()
            tree = write_source(root, args.generated_task, args.image_size, args.source_size)
            size = f"{args.image_size}px" + (f", re-encoded at {args.source_size}px" if args.source_size else "")
            seconds = time.perf_counter() - start
            source = f"generated task {args.generated_task!r} as {size} JPEGs, written in {seconds:.1f}s"
        else:
            root, spec, source = args.root, args.task or "vtab1k/cifar", str(args.root)
        task = resolve_task(spec, root)
        config = {"input_size": (3, args.input_size, args.input_size), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        transform = build_transform(task.protocol, config, train=True)
        dataset = task.dataset(args.split, transform=transform)
        plain_set = ImageFolder(str(tree), transform=transform) if tree else PlainList(dataset.samples, transform)
        cache = ImageCache("disk", Path(tmp) / "cache")
        start = time.perf_counter()
        cache.wrap(dataset, args.workers)  # cold: decodes every image once and writes the entry
        build_s = time.perf_counter() - start
        warm = cache.wrap(dataset, args.workers)  # warm: opens the entry, as a second run does
        loaders = {
            "torchvision ImageFolder + DataLoader": DataLoader(
                plain_set,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                persistent_workers=args.workers > 0,
            ),
            "snftune, no cache": EngineLoader(dataset, args.batch_size, args.workers),
            "snftune, warm cache": EngineLoader(warm, args.batch_size, args.workers),
            "snftune, warm cache, normalised on CPU": EngineLoader(warm, args.batch_size, args.workers),
        }
        for loader in loaders.values():  # worker start-up, page cache
            next(iter(loader))
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                finish = warm.batch_transform if name.endswith("normalised on CPU") else None
                rate, shape = images_per_s(loader, finish)
                rates[name].append(rate)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} (1 min), torch {torch.__version__} ({torch.get_num_threads()} main-process threads)"
    )
    print(f"source: {source}; task {spec}, split {args.split} ({len(dataset)} images)")
    print(
        f"{len(dataset)} images to {shape} per epoch, {args.workers} workers, batch {args.batch_size}, "
        f"median of {args.rounds} interleaved epochs; cold cache build {build_s:.1f}s"
    )
    baseline = statistics.median(rates["torchvision ImageFolder + DataLoader"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(
            f"  {name:<38} {rate:8.0f} images/s  {rate / baseline:6.1f}x plain  "
            f"({rate / GPU_VIT_B16_IMAGES_PER_S:.2f}x a GPU ViT-B/16's ~{GPU_VIT_B16_IMAGES_PER_S:.0f}/s)"
        )


if __name__ == "__main__":
    main()
