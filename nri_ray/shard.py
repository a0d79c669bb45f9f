"""ShardWorker: owns a contiguous range of meta-train tasks, their structures, and one BounceGrad step.

One round for the shard's tasks in the meta-batch (Alet et al. 2019, BounceGrad):

1. propose a new structure per task (learned blocked-Gibbs proposal or uniform);
2. evaluate current and proposed structures in one batched pass, recorded on a tape (engine.py);
3. accept per task by the Metropolis rule (annealing.py);
4. back-propagate the chosen structures from the tape's rows (no second forward), for the
   module gradient; tasks go through 1-4 in chunks that bound the tape's memory;
5. one forward + backward of the proposal network against the chosen structures.

The worker returns a `ShardReport`: gradient *sums* over its tasks (the server pools them), the
counts and loss sums behind the metrics, and the structures it changed (the driver mirrors them).
Random draws come from rng.py keyed by (seed, task id, round), so results do not depend on how
tasks are spread over shards. This class imports no ray; distributed.py wraps it as an actor.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import rng
from .annealing import anneal_step
from .config import Config
from .data import Dataset
from .engine import Tape, Workspace
from .metrics import confusion
from .proposal import proposal_loss, propose_block_optimum, propose_learned, propose_uniform
from .server import Weights, build_models, flatten_grads, unflatten_into


# Activations a shard keeps per chunk of tasks, per edge module (a module's GEMMs get 1/K of a chunk's
# rows). CPU: 128 MB per module gives chunks of ~31 paper-size tasks at K = 2, GEMMs of ~3000 rows,
# which run at the matmul rate. Measured round by round in one process (paper config, K = 2): chunks of
# 16, 22, 64 and 128 tasks take 1.075, 1.04, 1.008 and 1.07x the time of 32 (smaller: more per-operation
# cost; larger: more memory traffic); K = 8 with 32-task chunks is 12% slower than with 128. CUDA: large
# chunks, because every chunk costs a fixed number of kernel launches.
TAPE_BYTES_PER_MODULE = {"cpu": 128 << 20, "cuda": 2 << 30}


class ShardReport(NamedTuple):
    """What a shard sends up after a round (flat vectors are float32 numpy)."""

    shard_id: int
    round_idx: int
    module_grad: np.ndarray  # sum over tasks of d(loss_task)/d(module weights)
    proposal_grad: np.ndarray  # sum over tasks of d(proposal_loss_task)/d(proposal weights)
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
    confusion: np.ndarray  # [modules, relations] chosen structures vs true labels
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def initial_structures(seed: int, task_ids: torch.Tensor, n_edges: int, num_modules: int) -> torch.Tensor:
    """`[tasks, edges]` uniform random modules, a pure function of (seed, task id)."""
    return rng.randint(seed, task_ids, 0, rng.INIT, n_edges, num_modules).to(torch.int8)


def split_windows(trajectories: torch.Tensor, grad_split: str, heldout_frames: int):
    """(SA window, gradient window) of `[tasks, time, nodes, dims]` trajectories."""
    if grad_split == "same":
        return trajectories, trajectories
    cut = trajectories.shape[1] - heldout_frames
    return trajectories[:, :cut], trajectories[:, cut:]


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
        self.labels = part.labels  # [tasks, edges] int8 (numpy; only for metrics)
        n_nodes, dims = self.trajectories.shape[2], self.trajectories.shape[3]
        sa, _ = split_windows(self.trajectories[:1], cfg.train.grad_split, cfg.train.heldout_frames)
        self.lib, self.proposer = build_models(cfg, dims, sa.shape[1])
        self.lib.to(self.device)
        self.proposer.to(self.device)
        self.n_edges = n_nodes * (n_nodes - 1)
        self.structures = initial_structures(cfg.train.seed, self.task_ids, self.n_edges, cfg.model.edge_modules)
        # The round's rollouts run on tapes (engine.py) whose buffers live as long as the shard.
        workspace = Workspace(self.device)
        grad_frames = split_windows(self.trajectories[:1], cfg.train.grad_split, cfg.train.heldout_frames)[1].shape[1]
        self.sa_tape = Tape(self.lib, n_nodes, sa.shape[1], cfg.model.rollout, workspace)
        self.grad_tape = Tape(self.lib, n_nodes, grad_frames, cfg.model.rollout, workspace)

    def __repr__(self) -> str:
        # Ray prefixes an actor's log lines with its repr: make them carry the shard id.
        return f"nri-shard-{self.shard_id}"

    # -- structures: the driver mirrors them and can hand them back after a restart --
    def get_structures(self) -> tuple[np.ndarray, np.ndarray]:
        return self.task_ids.cpu().numpy(), self.structures.cpu().numpy()

    def set_structures(self, task_ids: np.ndarray, structures: np.ndarray) -> None:
        idx = torch.as_tensor(task_ids, device=self.device) - self.start
        self.structures[idx] = torch.as_tensor(structures, dtype=torch.int8, device=self.device)

    def _propose(self, probs, current, ids, round_idx, step, window):
        k, seed = self.cfg.model.edge_modules, self.cfg.train.seed
        if step == 0 and self.cfg.proposal.block_search:
            return propose_block_optimum(self.lib, window, current, self.cfg.proposal.block_frame_stride)
        shift = rng.STEP_STRIDE * step  # each SA step of a round draws from its own streams
        if self.cfg.proposal.proposal == "uniform":
            u = rng.uniform(seed, ids, round_idx, rng.UNIFORM_EDGE + shift, 2)
            return propose_uniform(current, k, u[:, 0], u[:, 1])
        node_u = rng.uniform(seed, ids, round_idx, rng.NODE + shift, 1)[:, 0]
        edge_u = rng.uniform(seed, ids, round_idx, rng.EDGES + shift, self.n_edges)
        return propose_learned(probs, current, self.cfg.proposal.epsilon, node_u, edge_u)

    def chunk_tasks(self, tasks: int) -> int:
        """Tasks per SA + gradient chunk: `train.chunk_tasks`, or even chunks that keep the tape near its budget."""
        if self.cfg.train.chunk_tasks:
            return self.cfg.train.chunk_tasks
        per_task = (1 + self.cfg.train.sa_steps) * self.sa_tape.bytes_per_row()  # current + proposals of one task
        budget = TAPE_BYTES_PER_MODULE.get(self.device.type, TAPE_BYTES_PER_MODULE["cpu"]) * self.cfg.model.edge_modules
        size = max(1, min(tasks, budget // per_task))
        chunks = max(1, round(tasks / size))  # even chunks (64 tasks at ~31 per chunk: 2 x 32, not 31 + 31 + 2)
        return -(-tasks // chunks)

    def _anneal_and_backward(self, sa_traj, grad_traj, current, probs, ids, round_idx, temperature, counts):
        """SA steps for a chunk of tasks, recorded on the tape, then the module gradient of the kept structures.

        Returns (kept structures `[c, edges]`, their SA losses `[c]`, the losses the gradient was taken of `[c]`);
        adds (accepted, worse, worse accepted) to `counts` and the gradient to the modules' `.grad`.
        """
        cfg = self.cfg
        c = current.shape[0]
        rows = torch.arange(c, device=self.device)
        tape = self.sa_tape
        if round_idx < cfg.train.warmup_rounds:  # warm-up: no search, the gradient of the given structures
            src = torch.zeros(c, dtype=torch.long, device=self.device)
            if cfg.train.grad_split == "same":
                tape.reset(c)
                loss = tape.record(sa_traj, current, rows)
                tape.backward(sa_traj, current, src, rows)
                return current, loss, loss
            tape = self.grad_tape
            tape.reset(c)
            loss = tape.record(grad_traj, current, rows)
            tape.backward(grad_traj, current, src, rows)
            return current, loss, loss
        tape.reset((1 + cfg.train.sa_steps) * c)
        chosen, chosen_loss = current, None
        source_eval = torch.zeros(c, dtype=torch.long, device=self.device)  # where each kept structure was recorded
        source_row = rows.clone()
        for step in range(cfg.train.sa_steps):
            proposed = self._propose(probs, chosen, ids, round_idx, step, sa_traj)
            # A proposal equal to the current structure (the redrawn block came out the same; most of
            # them once the proposal network is good) has the current loss: only the others are rolled out.
            moved = (proposed != chosen).any(dim=1).nonzero().squeeze(1)  # [m] rows of tasks whose proposal differs
            evaluation = len(tape.recorded)
            if chosen_loss is None:  # current structures and moved proposals in one batched pass
                losses = tape.record(sa_traj, torch.cat([chosen, proposed[moved]]), torch.cat([rows, moved]))  # [c + m]
                chosen_loss, moved_loss, first_row = losses[:c], losses[c:], c
            elif moved.numel():  # the weights are fixed within a round, so the current loss is known
                moved_loss, first_row = tape.record(sa_traj, proposed[moved], moved), 0
            else:
                moved_loss, first_row = chosen_loss[:0], 0
            loss_prop = chosen_loss.clone()
            loss_prop[moved] = moved_loss
            accept_u = rng.uniform(cfg.train.seed, ids, round_idx, rng.ACCEPT + rng.STEP_STRIDE * step, 1)[:, 0]
            sa = anneal_step(chosen, chosen_loss, proposed, loss_prop, temperature, accept_u)
            chosen, chosen_loss = sa.structures, sa.losses
            took = sa.accepted[moved]  # accepted moves: the kept structure is now that recorded row
            source_eval[moved[took]] = evaluation
            source_row[moved[took]] = first_row + torch.arange(moved.numel(), device=self.device)[took]
            counts += torch.stack([sa.accepted.sum(), sa.worse.sum(), (sa.worse & sa.accepted).sum()])  # stays on the device
        if cfg.train.grad_split == "same":  # the gradient pass, from the SA activations of the kept structures
            tape.backward(sa_traj, chosen, source_eval, source_row)
            return chosen, chosen_loss, chosen_loss
        tape = self.grad_tape  # heldout: SA chose on the first frames, the gradient is of the held-out ones
        tape.reset(c)
        grad_loss = tape.record(grad_traj, chosen, rows)
        tape.backward(grad_traj, chosen, torch.zeros_like(source_eval), rows)
        return chosen, chosen_loss, grad_loss

    def step(self, weights: Weights, round_idx: int, task_ids, temperature: float) -> ShardReport:
        """One BounceGrad round for `task_ids` (all owned by this shard)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        unflatten_into(self.lib, weights.modules)
        unflatten_into(self.proposer, weights.proposal)
        ids = torch.as_tensor(np.array(task_ids, np.int64), device=self.device)  # a copy: Ray arrays are read-only
        idx = ids - self.start
        sa_traj, grad_traj = split_windows(self.trajectories[idx], cfg.train.grad_split, cfg.train.heldout_frames)
        current = self.structures[idx].long()  # [tasks, edges]
        warm = round_idx < cfg.train.warmup_rounds
        if warm:  # every edge runs module 0 (the full graph); the tasks' own structures wait
            current = torch.zeros_like(current)
        learned = cfg.proposal.proposal == "learned" and not warm
        self.proposer.zero_grad(set_to_none=True)
        logits = self.proposer(sa_traj) if learned else None  # one forward serves proposals and training
        self.lib.zero_grad(set_to_none=True)
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), dim=-1) if learned else None
            counts = torch.zeros(3, dtype=torch.long, device=self.device)  # accepted, worse, worse accepted
            chosen, chosen_loss, grad_loss = torch.empty_like(current), torch.empty(len(ids), device=self.device), \
                torch.empty(len(ids), device=self.device)
            size = self.chunk_tasks(len(ids))
            for lo in range(0, len(ids), size):  # chunks bound the activations kept for the backward
                part = slice(lo, lo + size)
                chosen[part], chosen_loss[part], grad_loss[part] = self._anneal_and_backward(
                    sa_traj[part], grad_traj[part], current[part], None if probs is None else probs[part],
                    ids[part], round_idx, temperature, counts)
        if not warm:
            self.structures[idx] = chosen.to(torch.int8)
        if learned:
            prop_losses = proposal_loss(logits, chosen)
            prop_losses.sum().backward()
            prop_sum = float(prop_losses.detach().sum())
        else:
            prop_sum = 0.0
        accepted, worse, worse_accepted = counts.tolist()  # the round's one sync
        changed = (chosen != current).any(dim=1) & (not warm)
        labels = self.labels[idx.cpu().numpy()]
        return ShardReport(
            shard_id=self.shard_id, round_idx=round_idx,
            module_grad=flatten_grads(self.lib), proposal_grad=flatten_grads(self.proposer),
            tasks=len(ids), loss_sum=float(chosen_loss.sum()), grad_loss_sum=float(grad_loss.sum()),
            proposal_loss_sum=prop_sum, proposals=0 if warm else len(ids) * cfg.train.sa_steps, accepted=accepted, worse=worse, worse_accepted=worse_accepted,
            changed_ids=ids[changed].cpu().numpy(),
            changed_structures=chosen[changed].to(torch.int8).cpu().numpy(),
            confusion=confusion(chosen.cpu().numpy(), labels, cfg.model.edge_modules),
            seconds=time.perf_counter() - t0,
        )
