"""Backends that run ShardWorkers: LocalBackend (in process). The Ray backend lands here too.

Both expose the same interface to the training loop:

- `step_all(weights, round_idx, batch_ids, temperature) -> list[ShardReport]`
- `structures() -> [tasks, edges] int8` (every meta-train task's current structure)
- `set_structures(structures)` (restore after a resume or a restart)

Tasks are split evenly over shards in id order; a meta-batch is routed to the shards that own
its tasks. This is the only module of the package allowed to import ray.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import Config
from .shard import ShardReport, ShardWorker
from .server import Weights


def shard_ranges(num_tasks: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal task id ranges [start, stop), one per shard."""
    bounds = np.linspace(0, num_tasks, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def route(batch_ids: np.ndarray, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """The ids of `batch_ids` owned by each shard (sorted, so order never depends on sampling)."""
    ids = np.sort(np.asarray(batch_ids, np.int64))
    return [ids[(ids >= a) & (ids < b)] for a, b in ranges]


class LocalBackend:
    """N ShardWorkers in this process."""

    def __init__(self, cfg: Config, data_dir: str | Path, num_tasks: int):
        self.ranges = shard_ranges(num_tasks, cfg.train.num_shards)
        self.shards = [ShardWorker(i, data_dir, a, b, cfg, cfg.train.device) for i, (a, b) in enumerate(self.ranges)]

    def step_all(self, weights: Weights, round_idx: int, batch_ids: np.ndarray, temperature: float) -> list[ShardReport]:
        return [shard.step(weights, round_idx, ids, temperature)
                for shard, ids in zip(self.shards, route(batch_ids, self.ranges)) if len(ids)]

    def structures(self) -> np.ndarray:
        return np.concatenate([shard.get_structures()[1] for shard in self.shards])

    def set_structures(self, structures: np.ndarray) -> None:
        for shard, (a, b) in zip(self.shards, self.ranges):
            shard.set_structures(np.arange(a, b), structures[a:b])

    def close(self) -> None:
        pass
