"""torch's default thread count against snftune's default (one thread per idle core), side by side.

The same short ``snftune train`` (LoRA on a tiny ViT, a generated task) runs alternately with
``--threads`` set to torch's default (every core the process may use) and with no ``--threads``
(snftune's default: the cores the load average leaves idle), each in a fresh process, and
prints the wall time of each run and their ratio. On a loaded machine torch's threads
spin-wait for cores that other jobs hold, which is what the default avoids.

    python benchmarks/threads.py                  # 2 rounds
    python benchmarks/threads.py --rounds 3 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = [
    "train", "--model", "vit_tiny_patch16_224", "--pretrained", "random", "--model-kwargs", "depth=4", "patch_size=8",
    "--img-size", "32",
    "--method", "lora", "--data", "generated/shapes", "--split", "train800", "--eval-split", "val200",
    "--batch-size", "32", "--warmup-epochs", "0", "--workers", "0", "--no-progress",
]  # fmt: skip


def run(folder: Path, epochs: int, threads: int | None) -> tuple[float, str]:
    extra = ["--threads", str(threads)] if threads else []
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "snftune", *TRAIN, "--epochs", str(epochs), "--out", str(folder), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    said = next((line for line in done.stdout.splitlines() if line.startswith("torch CPU threads")), "?")
    return time.perf_counter() - start, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"# {cores} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    times: dict[str, list[float]] = {"torch default": [], "snftune default": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name, threads in (("torch default", cores), ("snftune default", None)):
                seconds, said = run(Path(tmp) / f"{i}-{name.split()[0]}", args.epochs, threads)
                times[name].append(seconds)
                print(f"round {i + 1} {name:16s} {seconds:7.1f} s wall  ({said}; load {os.getloadavg()[0]:.1f})")
    torch_s, ours_s = statistics.median(times["torch default"]), statistics.median(times["snftune default"])
    print(f"median: torch default {torch_s:.1f} s, snftune default {ours_s:.1f} s, ratio {torch_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
