"""The data order as a pure function of (seed, epoch): resumable mid-epoch, split over ranks.

Every epoch draws one seeded permutation of the training set and cuts it into global
batches of ``batch_size``. Rank ``r`` of ``N`` takes every N-th sample of a global batch
and cuts its share into ``accum_steps`` micro-batches, so the union over ranks and
micro-batches is the global batch whatever the layout. Each sample also carries its own
seed, so random augmentation depends on (seed, epoch, sample) only: not on the number of
workers, not on the rank, not on where a run was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["derive_seed", "steps_per_epoch", "StepBatchSampler", "SeededSamples", "seed_worker"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1, accum_steps: int = 1) -> int:
    """Optimiser steps in one epoch. The last, partial global batch is kept when every rank
    gets at least one sample per micro-batch; otherwise it is dropped."""
    full, rest = divmod(num_samples, batch_size)
    return full + (1 if rest >= world_size * accum_steps else 0)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of one epoch, ``accum_steps`` per optimiser step,
    as lists of ``(index, sample_seed)``. ``set_epoch(epoch, start_step)`` picks the epoch
    and skips the steps a resumed run has already taken."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accum_steps = accum_steps
        self.steps = steps_per_epoch(num_samples, batch_size, world_size, accum_steps)
        if self.steps == 0:
            raise ValueError(
                f"the training set has {num_samples} samples, too few for {world_size} process(es) x "
                f"{accum_steps} accumulation step(s); use fewer processes or accumulation steps"
            )
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            local = batch[self.rank :: self.world_size]
            for chunk in np.array_split(np.asarray(local), self.accum_steps):
                yield [(int(i), derive_seed(self.seed, epoch, int(i), 1)) for i in chunk]

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum_steps


class SeededSamples(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` seeds python, numpy and torch's CPU
    generator before loading, making random transforms a function of the seed (unless the
    dataset's ``draws_randomness`` is False)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        # A dataset that says its items draw no random number (cached features, cached pixels
        # with no random step left) is read without seeding, which costs more than the read.
        self.draws_randomness = getattr(dataset, "draws_randomness", True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        if not self.draws_randomness:
            return self.dataset[index]
        if get_worker_info() is not None:  # a worker process: its generators serve loading only
            _seed_generators(seed)
            return self.dataset[index]
        # Loading in the main process: leave the training loop's generators as they were.
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            _seed_generators(seed)
            sample = self.dataset[index]
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        return sample


def _seed_generators(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: python and numpy follow the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
