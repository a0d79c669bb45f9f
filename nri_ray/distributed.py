"""Backends that run ShardWorkers: LocalBackend (in process) and RayBackend (Ray actors).

Both expose the same interface to the training loop:

- `make_server(cfg, dims, in_frames)`: the parameter server (in process, or an actor behind the
  same interface: `weights()`, `apply(round, *gradients) -> (weights, Applied)`, `observe`, `lr`,
  `models()` for evaluation, `state_dict`/`load_state_dict` for checkpoints)
- `step_all(weights, round_idx, batch_ids, temperature, mirror) -> (list[ShardStats], gradients)`:
  the driver reads the statistics; the gradients go to `server.apply` as they are (under Ray,
  object references: gradients and weights travel between actors and never through the driver)
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
from .errors import NriRayError
from .server import Applied, ParameterServer
from .shard import ShardStats, ShardWorker
from .weights import Gradients, Weights, build_models, load_weights


class ActorFailures(NriRayError):
    """More actors died than `cluster.max_shard_failures` allows; the last checkpoint is kept."""


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
                 mirror: np.ndarray | None = None) -> tuple[list[ShardStats], list[Gradients]]:
        del mirror  # in-process shards cannot die on their own
        out = [shard.step(weights, round_idx, ids, temperature)
               for shard, ids in zip(self.shards, route(batch_ids, self.ranges)) if len(ids)]
        return [stats for stats, _ in out], [grads for _, grads in out]

    def make_server(self, cfg: Config, dims: int, in_frames: int) -> ParameterServer:
        return ParameterServer(cfg, dims, in_frames)

    def structures(self) -> np.ndarray:
        return np.concatenate([shard.get_structures()[1] for shard in self.shards])

    def set_structures(self, structures: np.ndarray) -> None:
        for shard, (a, b) in zip(self.shards, self.ranges):
            shard.set_structures(np.arange(a, b), structures[a:b])

    def observe_round(self, round_idx: int, stats: dict, reports: list[ShardStats]) -> None:
        """Metrics hook (Ray exports them to the dashboard; nothing to do in process)."""

    def observe_eval(self, row: dict) -> None:
        """Metrics hook for an evaluation row."""

    def close(self) -> None:
        pass


log = logging.getLogger(__name__)


def respawn(ray, dead, start):
    """Kill `dead` (if it is not gone already) and return `start()`, retried while Ray still holds
    the old actor's name (it is released once the old actor is dead)."""
    try:
        ray.kill(dead, no_restart=True)
    except Exception:  # already gone
        pass
    for _attempt in range(50):
        try:
            return start()
        except ValueError:
            time.sleep(0.1)
    return start()  # raises the name clash if it never cleared


class RayBackend:
    """One Ray actor per shard, named `nri-shard-<i>` in the run's namespace.

    Each actor reads its own rows of the train split (only paths and ids cross the wire) and owns
    its tasks' structures. Per round the driver calls every shard that owns tasks of the meta-batch
    with the reference of the weights the server returned, and fetches only the shards' statistics
    with one `ray.get`; the gradients stay references, passed on to the server. Round methods are never retried by Ray (`max_task_retries=0`): when a shard dies,
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
                # "local": always a new instance, even when a `ray start` cluster runs on this machine.
                context = ray.init(address="local", num_cpus=cpus, namespace=self.namespace, dashboard_host="127.0.0.1",
                                   include_dashboard=True, log_to_driver=True)
                self.owns_ray = True
            self.dashboard_url = getattr(context, "dashboard_url", None)
        self.failures = 0
        self.group = self._placement_group(len(self.ranges))
        self._remote_cls = ray.remote(max_restarts=0, max_task_retries=0)(ShardWorker)
        self.shards = [self._start(i) for i in range(len(self.ranges))]

    def _placement_group(self, shards: int):
        """The placement group this run lives in, if it was given one with a bundle per actor.

        Inside a Tune trial (tuning/) the trial owns a group laid out as [driver, shard 0 ..
        shard S-1, server]; each actor is pinned to its own bundle. Elsewhere: None, and actors
        go wherever their resources fit.
        """
        from ray.util import get_current_placement_group

        group = get_current_placement_group()
        if group is None or len(group.bundle_specs) != shards + 2:
            return None
        return group

    def actor_options(self, bundle: int, name: str, cpus: float, gpus: float, resource: str) -> dict:
        """Ray options of one actor: its name, resources and (inside a trial) its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options = {"name": name, "namespace": self.namespace, "num_cpus": cpus, "num_gpus": gpus, "lifetime": None}
        if resource:
            options["resources"] = {resource: 0.01}
        if self.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=bundle)
        return options

    def _start(self, i: int):
        a, b = self.ranges[i]
        c = self.cfg.cluster
        options = self.actor_options(1 + i, f"nri-shard-{i}", c.cpus_per_shard, c.gpus_per_shard, c.shard_resource)
        return self._remote_cls.options(**options).remote(i, self.data_dir, a, b, self.cfg, self.cfg.train.device)

    def _replace(self, i: int, structures: np.ndarray) -> None:
        """Start a fresh actor for shard i and give it back its tasks' structures."""
        self.failures += 1
        if self.failures > self.cfg.cluster.max_shard_failures:
            raise ActorFailures(f"shard {i} died: {self.failures} actor failures in this run, more than "
                                f"cluster.max_shard_failures ({self.cfg.cluster.max_shard_failures}); resume from the "
                                f"last checkpoint with --resume once the cluster is healthy")
        log.warning("shard %d died; replacing it and retrying its round (failure %d)", i, self.failures)
        self.shards[i] = respawn(self.ray, self.shards[i], lambda: self._start(i))
        a, b = self.ranges[i]
        self.ray.get(self.shards[i].set_structures.remote(np.arange(a, b), structures[a:b]))

    def _submit(self, i: int, weights, round_idx: int, ids: np.ndarray, temperature: float):
        return self.shards[i].step.options(num_returns=2).remote(weights, round_idx, ids, temperature)

    def step_all(self, weights, round_idx: int, batch_ids: np.ndarray, temperature: float,
                 mirror: np.ndarray | None = None) -> tuple[list[ShardStats], list]:
        if not isinstance(weights, self.ray.ObjectRef):  # a server's reference is passed on as it is
            weights = self.ray.put(weights)
        jobs = dict((i, ids) for i, ids in enumerate(route(batch_ids, self.ranges)) if len(ids))
        refs = {i: self._submit(i, weights, round_idx, ids, temperature) for i, ids in jobs.items()}
        try:
            stats = self.ray.get([s for s, _ in refs.values()])  # one get, statistics only
            return stats, [g for _, g in refs.values()]
        except self.ray.exceptions.RayActorError:
            pass
        # Failure path: keep what arrived, replace dead shards, re-issue their round.
        done: dict[int, tuple] = {}
        while refs:
            failed = []
            for i, (stats_ref, grads_ref) in refs.items():
                try:
                    done[i] = (self.ray.get(stats_ref), grads_ref)
                except self.ray.exceptions.RayActorError:
                    failed.append(i)
            refs = {}
            for i in failed:
                self._replace(i, mirror if mirror is not None else self._mirror_fallback())
                refs[i] = self._submit(i, weights, round_idx, jobs[i], temperature)
        return [done[i][0] for i in sorted(done)], [done[i][1] for i in sorted(done)]

    def _metrics(self):
        if not hasattr(self, "_gauges"):
            from ray.util.metrics import Counter, Gauge

            tags = ("run",)
            names = {"round": "last finished BounceGrad round", "rounds_per_second": "rounds per second (last round)",
                     "train_loss": "mean gradient loss of the round's tasks", "accept_rate": "SA acceptance, all proposals",
                     "worse_accept_rate": "SA acceptance of worse proposals", "temperature": "SA temperature",
                     "valid_edge_accuracy": "meta-valid edge accuracy", "valid_mse_1": "meta-valid MSE at 1 step",
                     "valid_mse_10": "meta-valid MSE at 10 steps"}
            self._gauges = {k: Gauge(f"nri_ray_{k}", description=d, tag_keys=tags) for k, d in names.items()}
            self._shard_seconds = Gauge("nri_ray_shard_round_seconds", description="seconds of a shard's round",
                                        tag_keys=("run", "shard"))
            self._rounds = Counter("nri_ray_rounds_total", description="BounceGrad rounds run", tag_keys=tags)
            self._last = time.perf_counter()
        return self._gauges

    def observe_round(self, round_idx: int, stats: dict, reports: list[ShardStats]) -> None:
        """Export the round's numbers as `ray.util.metrics` (Prometheus, the dashboard), tagged by run."""
        g, tags = self._metrics(), {"run": self.namespace}
        now = time.perf_counter()
        for key, value in (("round", round_idx + 1), ("rounds_per_second", 1.0 / max(1e-9, now - self._last)),
                           ("train_loss", stats["grad_loss"]), ("accept_rate", stats["accept_rate"]),
                           ("worse_accept_rate", stats["worse_accept_rate"]), ("temperature", stats["temperature"])):
            g[key].set(float(value), tags=tags)
        self._last = now
        self._rounds.inc(1.0, tags=tags)
        for r in reports:
            self._shard_seconds.set(r.seconds, tags={"run": self.namespace, "shard": str(r.shard_id)})

    def observe_eval(self, row: dict) -> None:
        g, tags = self._metrics(), {"run": self.namespace}
        if "valid_edge_accuracy" in row:  # unlabeled data has none
            g["valid_edge_accuracy"].set(float(row["valid_edge_accuracy"]), tags=tags)
        for h in ("1", "10"):
            if h in row.get("valid_mse", {}):
                g[f"valid_mse_{h}"].set(float(row["valid_mse"][h]), tags=tags)

    def make_server(self, cfg: Config, dims: int, in_frames: int) -> "RemoteServer":
        self.server = RemoteServer(self.ray, cfg, dims, in_frames, self.namespace, self)
        return self.server

    def placement(self) -> list[str]:
        """The Ray node id of every shard actor, in shard order."""
        node = lambda actor_self: __import__("ray").get_runtime_context().get_node_id()  # noqa: E731
        return self.ray.get([s.__ray_call__.remote(node) for s in self.shards])

    def _mirror_fallback(self) -> np.ndarray:
        raise RuntimeError("a shard died and no structure mirror was given to restore it")

    def structures(self) -> np.ndarray:
        parts = self.ray.get([s.get_structures.remote() for s in self.shards])
        return np.concatenate([p[1] for p in parts])

    def set_structures(self, structures: np.ndarray) -> None:
        self.ray.get([s.set_structures.remote(np.arange(a, b), structures[a:b])
                      for s, (a, b) in zip(self.shards, self.ranges)])

    def close(self) -> None:
        for shard in self.shards + ([self.server.actor] if getattr(self, "server", None) else []):
            try:
                self.ray.kill(shard, no_restart=True)
            except Exception:
                pass
        if self.owns_ray:
            self.ray.shutdown()


class RemoteServer:
    """The parameter-server actor (`nri-parameter-server`) behind ParameterServer's interface.

    Weights, gradients and the server's state stay in the object store: `apply` takes the shards'
    gradient references and returns the new weights as a reference for the next round, and the
    driver reads only the small `Applied`. After every step the server also returns its whole
    state (weights, both optimizers, plateau schedule) as an object the driver owns but never
    fetches (except to write a checkpoint); if the actor dies, a new one loads that object and
    the step is re-sent, so nothing is lost. (The object lives in the server node's object store:
    if that whole node is lost, the run stops with an error and resumes from its last checkpoint.)
    Evaluation gets models without optimizers (`models()`), loaded from the weights on demand.
    """

    def __init__(self, ray, cfg: Config, dims: int, in_frames: int, namespace: str, backend: "RayBackend"):
        self.ray, self.cfg, self.namespace, self.backend = ray, cfg, namespace, backend
        self.args = (cfg, dims, in_frames)
        self._remote_cls = ray.remote(max_restarts=0, max_task_retries=0)(ParameterServer)
        self.actor = self._start()
        self._weights, self._state = self.actor.weights.remote(), self.actor.state_dict.remote()
        self._lr = cfg.train.lr
        self._models, self._models_of = None, None  # evaluation models, and the weights they hold

    def _start(self):
        b = self.backend
        options = b.actor_options(len(b.ranges) + 1, "nri-parameter-server", 0, 0, self.cfg.cluster.server_resource)
        return self._remote_cls.options(**options).remote(*self.args)

    def _call(self, method: str, num_returns: int, *args):
        """Call the actor; returns its result refs and the fetched last one (the small part).
        If the actor died, start a new one from the last state object and call again."""
        while True:
            refs = getattr(self.actor, method).options(num_returns=num_returns).remote(*args)
            refs = refs if num_returns > 1 else [refs]
            try:
                return refs, self.ray.get(refs[-1])
            except self.ray.exceptions.RayActorError:
                self.backend.failures += 1
                if self.backend.failures > self.cfg.cluster.max_shard_failures:
                    raise ActorFailures(f"the parameter server died: {self.backend.failures} actor failures in this "
                                        f"run, more than cluster.max_shard_failures "
                                        f"({self.cfg.cluster.max_shard_failures}); resume from the last checkpoint "
                                        f"with --resume") from None
                log.warning("parameter server died; restoring it from the state object of the last round")
                self.actor = respawn(self.ray, self.actor, self._start)
                self.ray.get(self.actor.load_state_dict.remote(self._state))

    def weights(self):
        """The current weights, as an object reference (shards resolve it themselves)."""
        return self._weights

    def apply(self, round_idx: int, *gradients) -> tuple[object, Applied]:
        (weights, state, _), applied = self._call("apply_with_state", 3, round_idx, *gradients)
        self._weights, self._state, self._lr = weights, state, applied.lr
        return weights, applied

    def observe(self, metric: float) -> float:
        (state, _), self._lr = self._call("observe_with_state", 2, metric)
        self._state = state
        return self._lr

    def lr(self) -> float:
        return self._lr

    def state_dict(self) -> dict:
        return self.ray.get(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._state = self.ray.put(state)
        self._call("load_state_dict", 1, self._state)
        self._weights = self._call("weights", 1)[0][0]
        self._lr = float(state["opt_modules"]["param_groups"][0]["lr"])

    def models(self):
        """(module library, proposal network) holding the current weights: the driver's only copy."""
        if self._models is None:
            self._models = build_models(*self.args)
        if self._models_of is not self._weights:
            load_weights(*self._models, self.ray.get(self._weights))
            self._models_of = self._weights
        return self._models


def make_backend(cfg: Config, data_dir: str | Path, num_tasks: int, run_name: str = "run"):
    if cfg.cluster.backend == "ray":
        return RayBackend(cfg, data_dir, num_tasks, run_name)
    return LocalBackend(cfg, data_dir, num_tasks)
