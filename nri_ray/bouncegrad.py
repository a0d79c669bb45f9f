"""One BounceGrad round (Alet et al. 2019, Algorithm 1), as one pure function.

    bouncegrad_round(modules, proposer, tapes, trajectories, structures, task ids, round, T, cfg):
        split each trajectory into the SA window and the gradient window
        if round < warmup_rounds: every edge runs module 0 (the full graph), no search
        logits = proposer(SA window)                       # one forward serves proposals and training
        for each chunk of tasks (chunks bound the activations kept for the backward):
            for each SA step:
                propose a structure per task               # learned blocked Gibbs, uniform, or block optimum
                roll out the proposals that moved          # recorded on the tape
                accept or reject per task (Metropolis at temperature T)
            module gradient of the kept structures         # back-propagated from the tape's rows
        proposal gradient: cross-entropy of logits against the kept structures
        return the kept structures, their losses and the SA counts

The gradients are left in the models' `.grad` (summed over tasks, not averaged: the server pools
sums from every shard). Every random draw is keyed by (seed, task id, round, step) through rng.py,
so the result does not depend on how tasks are split into shards or chunks. The tape (engine.py)
evaluates structures in batches and keeps their activations, so the gradient costs no second
forward; gnn.py is the plain reference of the same math. This module imports no ray.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import rng
from .annealing import anneal_step
from .config import Config
from .engine import Tape
from .modules import ModuleLibrary
from .proposal import ProposalNet, proposal_loss, propose_block_optimum, propose_learned, propose_uniform

# Activations a chunk of tasks keeps per edge module (a module's GEMMs get 1/K of a chunk's rows).
# CPU: 128 MB per module gives chunks of ~31 paper-size tasks at K = 2, GEMMs of ~3000 rows, which
# run at the matmul rate. Measured round by round in one process (paper config, K = 2): chunks of
# 16, 22, 64 and 128 tasks take 1.075, 1.04, 1.008 and 1.07x the time of 32 (smaller: more
# per-operation cost; larger: more memory traffic); K = 8 with 32-task chunks is 12% slower than
# with 128. CUDA: large chunks, because every chunk costs a fixed number of kernel launches.
TAPE_BYTES_PER_MODULE = {"cpu": 128 << 20, "cuda": 2 << 30}


class Tapes(NamedTuple):
    """The round's two tapes: SA evaluations of the SA window, and the gradient window's rollouts."""

    sa: Tape
    grad: Tape


class RoundResult(NamedTuple):
    """A round's outcome for its tasks (tensors on the models' device)."""

    structures: torch.Tensor  # [tasks, edges] kept structures (during warm-up: the full graph)
    loss: torch.Tensor  # [tasks] SA loss of the kept structures
    grad_loss: torch.Tensor  # [tasks] loss the module gradient was taken of
    proposal_loss: torch.Tensor  # [tasks] proposal network's loss (zeros without a learned proposal)
    searched: bool  # False in warm-up rounds: the tasks' own structures do not change
    proposals: int  # tasks x SA steps
    accepted: int
    worse: int  # proposals strictly worse than the current structure
    worse_accepted: int


def split_windows(trajectories: torch.Tensor, grad_split: str, heldout_frames: int):
    """(SA window, gradient window) of `[tasks, time, nodes, dims]` trajectories: the same frames,
    or SA on the first frames and the gradient on the last `heldout_frames`."""
    if grad_split == "same":
        return trajectories, trajectories
    cut = trajectories.shape[1] - heldout_frames
    return trajectories[:, :cut], trajectories[:, cut:]


def chunk_size(cfg: Config, tape: Tape, tasks: int, device: torch.device) -> int:
    """Tasks per SA + gradient chunk: `train.chunk_tasks`, or even chunks that keep the tape near its budget."""
    if cfg.train.chunk_tasks:
        return cfg.train.chunk_tasks
    per_task = (1 + cfg.train.sa_steps) * tape.bytes_per_row()  # current + proposals of one task
    budget = TAPE_BYTES_PER_MODULE.get(device.type, TAPE_BYTES_PER_MODULE["cpu"]) * cfg.model.edge_modules
    size = max(1, min(tasks, budget // per_task))
    chunks = max(1, round(tasks / size))  # even chunks (64 tasks at ~31 per chunk: 2 x 32, not 31 + 31 + 2)
    return -(-tasks // chunks)


def propose(lib: ModuleLibrary, probs, current: torch.Tensor, window: torch.Tensor, ids: torch.Tensor,
            round_idx: int, step: int, cfg: Config) -> torch.Tensor:
    """`[tasks, edges]` proposals: the one-step block optimum at step 0 (with `block_search`),
    otherwise the learned blocked-Gibbs proposal or one uniform edge change."""
    p, seed, k = cfg.proposal, cfg.train.seed, cfg.model.edge_modules
    if step == 0 and p.block_search:
        return propose_block_optimum(lib, window, current, p.block_frame_stride)
    shift = rng.STEP_STRIDE * step  # each SA step of a round draws from its own streams
    if p.proposal == "uniform":
        u = rng.uniform(seed, ids, round_idx, rng.UNIFORM_EDGE + shift, 2)
        return propose_uniform(current, k, u[:, 0], u[:, 1])
    node_u = rng.uniform(seed, ids, round_idx, rng.NODE + shift, 1)[:, 0]
    edge_u = rng.uniform(seed, ids, round_idx, rng.EDGES + shift, current.shape[1])
    return propose_learned(probs, current, p.epsilon, node_u, edge_u)


class _Annealed(NamedTuple):
    structures: torch.Tensor  # [c, edges] kept
    loss: torch.Tensor  # [c]
    evaluation: torch.Tensor  # [c] which of the tape's recorded evaluations holds each kept structure
    row: torch.Tensor  # [c] and which row of it
    counts: torch.Tensor  # [3] accepted, worse, worse accepted


def anneal(lib, tape: Tape, window: torch.Tensor, current: torch.Tensor, probs, ids: torch.Tensor,
           round_idx: int, temperature: float, cfg: Config) -> _Annealed:
    """`sa_steps` Metropolis steps for a chunk of tasks, every rollout recorded on `tape`."""
    c = current.shape[0]
    rows = torch.arange(c, device=current.device)
    tape.reset((1 + cfg.train.sa_steps) * c)
    kept, kept_loss = current, None
    evaluation, row = torch.zeros_like(rows), rows.clone()  # the current structures: evaluation 0, row i
    counts = torch.zeros(3, dtype=torch.long, device=current.device)  # stays on the device: no sync per step
    for step in range(cfg.train.sa_steps):
        proposed = propose(lib, probs, kept, window, ids, round_idx, step, cfg)
        # A proposal equal to the kept structure (the redrawn block came out the same; most of them
        # once the proposal network is good) has the kept loss: only the others are rolled out.
        moved = (proposed != kept).any(dim=1).nonzero().squeeze(1)  # [m] rows whose proposal differs
        this = len(tape.recorded)  # index of the evaluation recorded next
        if kept_loss is None:  # the current structures and the moved proposals in one batched pass
            losses = tape.record(window, torch.cat([kept, proposed[moved]]), torch.cat([rows, moved]))  # [c + m]
            kept_loss, moved_loss, first = losses[:c], losses[c:], c
        elif moved.numel():  # the weights are fixed within a round, so the kept loss is known
            moved_loss, first = tape.record(window, proposed[moved], moved), 0
        else:
            moved_loss, first = kept_loss[:0], 0
        proposed_loss = kept_loss.clone()
        proposed_loss[moved] = moved_loss
        accept_u = rng.uniform(cfg.train.seed, ids, round_idx, rng.ACCEPT + rng.STEP_STRIDE * step, 1)[:, 0]
        sa = anneal_step(kept, kept_loss, proposed, proposed_loss, temperature, accept_u)
        kept, kept_loss = sa.structures, sa.losses
        took = sa.accepted[moved]  # accepted moves: the kept structure is now that recorded row
        evaluation[moved[took]] = this
        row[moved[took]] = first + torch.arange(moved.numel(), device=current.device)[took]
        counts += torch.stack([sa.accepted.sum(), sa.worse.sum(), (sa.worse & sa.accepted).sum()])
    return _Annealed(kept, kept_loss, evaluation, row, counts)


def module_gradient(tape: Tape, window: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    """Record `structures` on `tape` and add their loss gradient to the modules' `.grad`; returns the losses."""
    rows = torch.arange(structures.shape[0], device=structures.device)
    tape.reset(structures.shape[0])
    loss = tape.record(window, structures, rows)
    tape.backward(window, structures, torch.zeros_like(rows), rows)
    return loss


def bouncegrad_round(lib: ModuleLibrary, proposer: ProposalNet, tapes: Tapes, trajectories: torch.Tensor,
                     structures: torch.Tensor, task_ids: torch.Tensor, round_idx: int, temperature: float,
                     cfg: Config) -> RoundResult:
    """One round for `task_ids` (`[tasks, time, nodes, dims]` trajectories, `[tasks, edges]` structures)."""
    t = cfg.train
    sa_window, grad_window = split_windows(trajectories, t.grad_split, t.heldout_frames)
    searched = round_idx >= t.warmup_rounds
    current = structures.long() if searched else torch.zeros_like(structures, dtype=torch.long)  # warm-up: full graph
    learned = cfg.proposal.proposal == "learned" and searched
    lib.zero_grad(set_to_none=True)
    proposer.zero_grad(set_to_none=True)
    logits = proposer(sa_window) if learned else None  # [tasks, edges, modules]
    kept, loss, grad_loss = [], [], []
    counts = torch.zeros(3, dtype=torch.long, device=current.device)
    with torch.no_grad():
        probs = torch.softmax(logits.detach(), dim=-1) if learned else None
        size = chunk_size(cfg, tapes.sa, len(task_ids), current.device)
        for lo in range(0, len(task_ids), size):
            part = slice(lo, lo + size)
            if not searched:
                tape, window = (tapes.sa, sa_window) if t.grad_split == "same" else (tapes.grad, grad_window)
                kept.append(current[part])
                loss.append(module_gradient(tape, window[part], current[part]))
                grad_loss.append(loss[-1])
                continue
            sa = anneal(lib, tapes.sa, sa_window[part], current[part], None if probs is None else probs[part],
                        task_ids[part], round_idx, temperature, cfg)
            counts += sa.counts
            kept.append(sa.structures)
            loss.append(sa.loss)
            if t.grad_split == "same":  # the SA tape holds the kept structures' activations: no second forward
                tapes.sa.backward(sa_window[part], sa.structures, sa.evaluation, sa.row)
                grad_loss.append(sa.loss)
            else:  # SA chose on the first frames; the gradient is of the held-out ones
                grad_loss.append(module_gradient(tapes.grad, grad_window[part], sa.structures))
    kept = torch.cat(kept)
    if learned:
        prop_loss = proposal_loss(logits, kept)
        prop_loss.sum().backward()
        prop_loss = prop_loss.detach()
    else:
        prop_loss = torch.zeros(len(task_ids), device=current.device)
    accepted, worse, worse_accepted = counts.tolist()  # the round's one host sync
    return RoundResult(kept, torch.cat(loss), torch.cat(grad_loss), prop_loss, searched,
                       len(task_ids) * t.sa_steps if searched else 0, accepted, worse, worse_accepted)
