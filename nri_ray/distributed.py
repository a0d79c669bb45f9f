"""Backends that run ShardWorkers: LocalBackend (in process) and RayBackend (Ray actors).

Both expose the same interface to the training loop:

- `step_all(weights, round_idx, batch_ids, temperature) -> list[ShardReport]`
- `structures() -> [tasks, edges] int8` (every meta-train task's current structure)
- `set_structures(structures)` (restore after a resume or a restart)

Tasks are split evenly over shards in id order; a meta-batch is routed to the shards that own
its tasks. This is the only module of the package allowed to import ray.
"""
from __future__ import annotations

import logging
import os
import time
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

    def step_all(self, weights: Weights, round_idx: int, batch_ids: np.ndarray, temperature: float,
                 mirror: np.ndarray | None = None) -> list[ShardReport]:
        del mirror  # in-process shards cannot die on their own
        return [shard.step(weights, round_idx, ids, temperature)
                for shard, ids in zip(self.shards, route(batch_ids, self.ranges)) if len(ids)]

    def structures(self) -> np.ndarray:
        return np.concatenate([shard.get_structures()[1] for shard in self.shards])

    def set_structures(self, structures: np.ndarray) -> None:
        for shard, (a, b) in zip(self.shards, self.ranges):
            shard.set_structures(np.arange(a, b), structures[a:b])

    def close(self) -> None:
        pass


log = logging.getLogger(__name__)


class RayBackend:
    """One Ray actor per shard, named `nri-shard-<i>` in the run's namespace.

    Each actor reads its own rows of the train split (only paths and ids cross the wire) and owns
    its tasks' structures. Per round the driver `ray.put`s the weights once, calls every shard
    that owns tasks of the meta-batch with that one reference, and gathers all reports with one
    `ray.get`. Round methods are never retried by Ray (`max_task_retries=0`): when a shard dies,
    the driver replaces the actor, hands it back its tasks' structures from its mirror (as of the
    end of the previous round) and re-issues that shard's round; every draw is keyed by (seed,
    task, round), so the run ends exactly as one without the failure.

    Without `cluster.address` an embedded single-node Ray is started (explicit resources,
    dashboard on 127.0.0.1) and stopped by `close()`; with it, the run joins that cluster.
    """

    def __init__(self, cfg: Config, data_dir: str | Path, num_tasks: int, run_name: str = "run"):
        import ray

        self.ray, self.cfg = ray, cfg
        self.data_dir = str(Path(data_dir).resolve())
        self.ranges = shard_ranges(num_tasks, cfg.train.num_shards)
        self.namespace = f"nri-ray-{run_name}"
        self.owns_ray = False
        self.dashboard_url = None
        if not ray.is_initialized():
            address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
            if address:  # inside `ray job submit`, or joining a running cluster
                context = ray.init(address=address, namespace=self.namespace)
            else:
                cpus = max(os.cpu_count() or 1, int(cfg.train.num_shards * cfg.cluster.cpus_per_shard) + 1)
                context = ray.init(num_cpus=cpus, namespace=self.namespace, dashboard_host="127.0.0.1",
                                   include_dashboard=True, log_to_driver=True)
                self.owns_ray = True
            self.dashboard_url = getattr(context, "dashboard_url", None)
        self.failures = 0
        self._remote_cls = ray.remote(max_restarts=0, max_task_retries=0)(ShardWorker)
        self.shards = [self._start(i) for i in range(len(self.ranges))]

    def _start(self, i: int):
        a, b = self.ranges[i]
        c = self.cfg.cluster
        return self._remote_cls.options(name=f"nri-shard-{i}", namespace=self.namespace, num_cpus=c.cpus_per_shard,
                                        num_gpus=c.gpus_per_shard, lifetime=None).remote(
            i, self.data_dir, a, b, self.cfg, self.cfg.train.device)

    def _replace(self, i: int, structures: np.ndarray) -> None:
        """Start a fresh actor for shard i and give it back its tasks' structures."""
        self.failures += 1
        if self.failures > self.cfg.cluster.max_shard_failures:
            raise RuntimeError(f"shard {i}: {self.failures} shard failures, more than cluster.max_shard_failures")
        log.warning("shard %d died; replacing it and retrying its round (failure %d)", i, self.failures)
        try:
            self.ray.kill(self.shards[i], no_restart=True)
        except Exception:  # already gone
            pass
        for attempt in range(50):  # the name is released once the old actor is dead
            try:
                self.shards[i] = self._start(i)
                break
            except ValueError:
                time.sleep(0.1)
        a, b = self.ranges[i]
        self.ray.get(self.shards[i].set_structures.remote(np.arange(a, b), structures[a:b]))

    def step_all(self, weights: Weights, round_idx: int, batch_ids: np.ndarray, temperature: float,
                 mirror: np.ndarray | None = None) -> list[ShardReport]:
        weights_ref = self.ray.put(weights)  # one object, one fetch per node
        jobs = [(i, ids) for i, ids in enumerate(route(batch_ids, self.ranges)) if len(ids)]
        refs = {i: self.shards[i].step.remote(weights_ref, round_idx, ids, temperature) for i, ids in jobs}
        try:
            reports = self.ray.get(list(refs.values()))  # one get for all shards
            return [r for _, r in sorted(zip(refs, reports), key=lambda pair: pair[0])]
        except self.ray.exceptions.RayActorError:
            pass
        # Failure path: keep the reports that arrived, replace dead shards, re-issue their round.
        done: dict[int, ShardReport] = {}
        while refs:
            failed = []
            for i, ref in refs.items():
                try:
                    done[i] = self.ray.get(ref)
                except self.ray.exceptions.RayActorError:
                    failed.append(i)
            refs = {}
            for i in failed:
                self._replace(i, mirror if mirror is not None else self._mirror_fallback())
                refs[i] = self.shards[i].step.remote(weights_ref, round_idx, dict(jobs)[i], temperature)
        return [done[i] for i in sorted(done)]

    def _mirror_fallback(self) -> np.ndarray:
        raise RuntimeError("a shard died and no structure mirror was given to restore it")

    def structures(self) -> np.ndarray:
        parts = self.ray.get([s.get_structures.remote() for s in self.shards])
        return np.concatenate([p[1] for p in parts])

    def set_structures(self, structures: np.ndarray) -> None:
        self.ray.get([s.set_structures.remote(np.arange(a, b), structures[a:b])
                      for s, (a, b) in zip(self.shards, self.ranges)])

    def close(self) -> None:
        for shard in self.shards:
            try:
                self.ray.kill(shard, no_restart=True)
            except Exception:
                pass
        if self.owns_ray:
            self.ray.shutdown()


def make_backend(cfg: Config, data_dir: str | Path, num_tasks: int, run_name: str = "run"):
    if cfg.cluster.backend == "ray":
        return RayBackend(cfg, data_dir, num_tasks, run_name)
    return LocalBackend(cfg, data_dir, num_tasks)
