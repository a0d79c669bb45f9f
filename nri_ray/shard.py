"""ShardWorker: owns a contiguous range of meta-train tasks and their structures; runs their rounds.

The round itself is `bouncegrad.bouncegrad_round`; the worker holds what lives between rounds
(its tasks' trajectories and structures, the models the weights are loaded into, the tapes'
buffers) and turns a round's result into what goes up: `ShardStats` (small: counts, loss sums,
the structures it changed, for the driver) and `Gradients` (gradient sums over its tasks, for
the parameter server; under Ray they go there by object reference, never through the driver).
This class imports no ray; distributed.py wraps it as an actor.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import rng
from .bouncegrad import Tapes, bouncegrad_round, split_windows
from .config import Config
from .data import Dataset
from .engine import Tape, Workspace
from .errors import NriRayError
from .metrics import confusion
from .weights import Gradients, Weights, build_models, flatten_grads, load_weights


class ShardStats(NamedTuple):
    """What the driver receives from a shard after a round."""

    shard_id: int
    round_idx: int
    tasks: int
    loss_sum: float  # SA loss of the chosen structures
    grad_loss_sum: float  # loss the gradient was taken of
    proposal_loss_sum: float
    proposals: int  # tasks * SA steps
    accepted: int
    worse: int  # proposals strictly worse than the current structure
    worse_accepted: int
    changed_ids: np.ndarray  # [changed] int64 task ids
    changed_structures: np.ndarray  # [changed, edges] int8
    confusion: np.ndarray | None  # [modules, relations] chosen structures vs true labels (None: unlabeled data)
    seconds: float


def resolve_device(name: str) -> torch.device:
    """`train.device` as a torch device: auto is CUDA when present; cuda without CUDA is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NriRayError(f"--device {name}: no CUDA device is visible here (torch {torch.__version__}, "
                          "torch.cuda.is_available() is False); use --device auto or cpu")
    return torch.device(name)


def initial_structures(seed: int, task_ids: torch.Tensor, n_edges: int, num_modules: int) -> torch.Tensor:
    """`[tasks, edges]` uniform random modules, a pure function of (seed, task id)."""
    return rng.randint(seed, task_ids, 0, rng.INIT, n_edges, num_modules).to(torch.int8)


class ShardWorker:
    """Owns meta-train tasks [start, stop) and their structures.

    Args:
        shard_id: index of this shard.
        data_dir: dataset directory; the shard reads only its own rows of the train split.
        start, stop: task id range.
        cfg: run config.
        device: "auto", "cpu" or "cuda".
    """

    def __init__(self, shard_id: int, data_dir: str | Path, start: int, stop: int, cfg: Config, device: str = "auto"):
        self.shard_id, self.start, self.stop, self.cfg = shard_id, start, stop, cfg
        self.device = resolve_device(device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        part = Dataset(data_dir).read("train", start, stop)
        self.task_ids = torch.as_tensor(np.array(part.task_ids), device=self.device)
        self.trajectories = torch.as_tensor(part.trajectories, device=self.device)  # [tasks, time, nodes, dims]
        self.labels = part.labels  # [tasks, edges] int8 (numpy; only for metrics), None on unlabeled data
        n_nodes, dims = self.trajectories.shape[2], self.trajectories.shape[3]
        sa, grad = split_windows(self.trajectories[:1], cfg.train.grad_split, cfg.train.heldout_frames)
        self.lib, self.proposer = build_models(cfg, dims, sa.shape[1])
        self.lib.to(self.device)
        self.proposer.to(self.device)
        self.structures = initial_structures(cfg.train.seed, self.task_ids, n_nodes * (n_nodes - 1),
                                             cfg.model.edge_modules)
        workspace = Workspace(self.device)  # the tapes' buffers live as long as the shard
        self.tapes = Tapes(Tape(self.lib, n_nodes, sa.shape[1], cfg.model.rollout, workspace),
                           Tape(self.lib, n_nodes, grad.shape[1], cfg.model.rollout, workspace))

    def __repr__(self) -> str:
        # Ray prefixes an actor's log lines with its repr: make them carry the shard id.
        return f"nri-shard-{self.shard_id}"

    # -- structures: the driver mirrors them and can hand them back after a restart --
    def get_structures(self) -> tuple[np.ndarray, np.ndarray]:
        return self.task_ids.cpu().numpy(), self.structures.cpu().numpy()

    def set_structures(self, task_ids: np.ndarray, structures: np.ndarray) -> None:
        idx = torch.as_tensor(task_ids, device=self.device) - self.start
        self.structures[idx] = torch.as_tensor(structures, dtype=torch.int8, device=self.device)

    def step(self, weights: Weights, round_idx: int, task_ids, temperature: float) -> tuple[ShardStats, Gradients]:
        """One BounceGrad round for `task_ids` (all owned by this shard)."""
        t0 = time.perf_counter()
        load_weights(self.lib, self.proposer, weights)
        ids = torch.as_tensor(np.array(task_ids, np.int64), device=self.device)  # a copy: Ray arrays are read-only
        idx = ids - self.start
        before = self.structures[idx].long()  # [tasks, edges]
        r = bouncegrad_round(self.lib, self.proposer, self.tapes, self.trajectories[idx], before, ids, round_idx,
                             temperature, self.cfg)
        changed = (r.structures != before).any(dim=1) & r.searched
        if r.searched:
            self.structures[idx] = r.structures.to(torch.int8)
        stats = ShardStats(
            shard_id=self.shard_id, round_idx=round_idx, tasks=len(ids), loss_sum=float(r.loss.sum()),
            grad_loss_sum=float(r.grad_loss.sum()), proposal_loss_sum=float(r.proposal_loss.sum()),
            proposals=r.proposals, accepted=r.accepted, worse=r.worse, worse_accepted=r.worse_accepted,
            changed_ids=ids[changed].cpu().numpy(), changed_structures=r.structures[changed].to(torch.int8).cpu().numpy(),
            confusion=None if self.labels is None else confusion(
                r.structures.cpu().numpy(), self.labels[idx.cpu().numpy()], self.cfg.model.edge_modules),
            seconds=time.perf_counter() - t0)
        return stats, Gradients(self.shard_id, len(ids), flatten_grads(self.lib), flatten_grads(self.proposer))
