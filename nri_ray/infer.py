"""Meta-test inference: with the modules frozen, infer each new task's structure by SA.

Start from the proposal network's most likely structure (this alone is the "proposal-only"
accuracy), then run `steps` SA steps with learned proposals, batched over all tasks. Modules are
frozen, so a task's current loss never changes and each step needs one batched forward pass, of
the proposed structures only (engine.py's forward), and only of those that differ from the
current structure. SA looks at the first `sa_frames` frames (the NRI observation
window); prediction MSE is then measured from frame `sa_frames` on (DATA.md A4).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import engine, rng
from .annealing import anneal_step
from .gnn import rollout
from .metrics import horizon_mse
from .modules import ModuleLibrary
from .proposal import ProposalNet, propose_block_optimum, propose_learned

# Draws for inference use their own streams (never those of training rounds).
_INFER_NODE, _INFER_EDGES, _INFER_ACCEPT = 101, 102, 103


class Inference(NamedTuple):
    """Shape: structures, proposal_structures `[tasks, edges]` int64; losses `[tasks]`."""

    structures: torch.Tensor
    proposal_structures: torch.Tensor
    losses: torch.Tensor


@torch.no_grad()
def infer_structures(lib: ModuleLibrary, proposer: ProposalNet, trajectories: torch.Tensor, task_ids: torch.Tensor,
                     *, sa_frames: int, rollout_steps: int, steps: int, epsilon: float, temperature: float,
                     seed: int, batch_size: int = 512, block_start: bool = False, frame_stride: int = 4) -> Inference:
    """SA structure inference for `[tasks, time, nodes, dims]` trajectories, in task batches.

    With `block_start`, each task starts from the better (lower SA loss) of the proposal network's
    most likely structure and the one-step block optimum (`propose_block_optimum`)."""
    out = []
    workspace = engine.Workspace(trajectories.device, trajectories.dtype)  # rollout buffers shared by every batch and step
    for a in range(0, trajectories.shape[0], batch_size):
        window = trajectories[a:a + batch_size, :sa_frames]  # [batch, frames, nodes, dims]
        ids = task_ids[a:a + batch_size]
        probs = torch.softmax(proposer(window), dim=-1)  # [batch, edges, modules]
        first = probs.argmax(dim=-1)
        current, loss = first, engine.losses(lib, window, first, rollout_steps, workspace)
        if block_start:
            block = propose_block_optimum(lib, window, first, frame_stride)
            block_loss = engine.losses(lib, window, block, rollout_steps, workspace)
            better = block_loss < loss
            current, loss = torch.where(better.unsqueeze(1), block, current), torch.where(better, block_loss, loss)
        for step in range(steps):
            node_u = rng.uniform(seed, ids, step, _INFER_NODE, 1)[:, 0]
            edge_u = rng.uniform(seed, ids, step, _INFER_EDGES, current.shape[1])
            proposed = propose_learned(probs, current, epsilon, node_u, edge_u)
            # Only proposals that differ from the current structure are rolled out (the others have its loss).
            moved = (proposed != current).any(dim=1).nonzero().squeeze(1)  # [m]
            proposed_loss = loss.clone()
            if moved.numel():
                proposed_loss[moved] = engine.losses(lib, window[moved], proposed[moved], rollout_steps, workspace)
            accept_u = rng.uniform(seed, ids, step, _INFER_ACCEPT, 1)[:, 0]
            current, loss, _, _ = anneal_step(current, loss, proposed, proposed_loss, temperature, accept_u)
        out.append(Inference(current, first, loss))
    return Inference(*(torch.cat(parts) for parts in zip(*out)))


@torch.no_grad()
def predict(lib: ModuleLibrary, trajectories: torch.Tensor, structures: torch.Tensor, start: int, steps: int,
            batch_size: int = 512) -> torch.Tensor:
    """Open-loop predictions `[tasks, steps, nodes, dims]` from ground-truth frame `start`."""
    parts = [rollout(lib, trajectories[a:a + batch_size, start], structures[a:a + batch_size], steps)
             for a in range(0, trajectories.shape[0], batch_size)]
    return torch.cat(parts)


def prediction_mse(lib: ModuleLibrary, trajectories: torch.Tensor, structures: torch.Tensor, start: int,
                   horizons=(1, 10, 20)) -> dict[str, float]:
    """MSE at each horizon of one rollout from frame `start` (as far as the trajectory reaches)."""
    steps = min(max(horizons), trajectories.shape[1] - 1 - start)
    if steps < 1:
        return {}
    pred = predict(lib, trajectories, structures, start, steps)
    return horizon_mse(pred, trajectories[:, start + 1:start + 1 + steps], horizons)


PREDICTION_STEPS = 20  # MSE is reported at 1 .. 20 steps ahead (NRI's Table 1 horizons: 1, 10, 20)


def prediction_start(frames: int, sa_frames: int) -> int:
    """Frame predictions start from: `sa_frames` (the end of the observed window, 49) when the
    trajectory goes on past it (the test split), else PREDICTION_STEPS frames before its end."""
    return sa_frames if frames > sa_frames + 1 else max(0, frames - 1 - PREDICTION_STEPS)


@torch.no_grad()
def structure_health(lib: ModuleLibrary, trajectories: torch.Tensor, losses: torch.Tensor, rollout_steps: int,
                     batch_size: int = 512) -> dict[str, float]:
    """The label-free health signal: how much better the inferred structures predict than one module alone.

    `health_ratio` = mean SA loss of the inferred structures / mean SA loss of the best single-module
    structure (one edge module on every edge), both on the same `[tasks, frames, nodes, dims]`
    windows. Near 1: the edge modules have not separated (the structure explains nothing); well below
    1: the inferred relations matter for prediction.
    """
    tasks, _, n_nodes, _ = trajectories.shape
    n_edges = n_nodes * (n_nodes - 1)
    workspace = engine.Workspace(trajectories.device, trajectories.dtype)
    single = []
    for k in range(lib.num_edge_modules):  # K rollouts of every task with module k on every edge
        full = torch.full((min(batch_size, tasks), n_edges), k, dtype=torch.long, device=trajectories.device)
        single.append(torch.cat([engine.losses(lib, trajectories[a:a + batch_size], full[: min(batch_size, tasks - a)],
                                               rollout_steps, workspace) for a in range(0, tasks, batch_size)]).mean())
    best = float(torch.stack(single).min())
    inferred = float(losses.mean())
    return {"single_module_loss": best, "health_ratio": inferred / best if best > 0 else float("nan")}


def module_share(structures: torch.Tensor, num_modules: int) -> list[float]:
    """Fraction of all edges that run each module (label-free: a module nobody uses is dead weight)."""
    counts = torch.bincount(structures.reshape(-1).long(), minlength=num_modules).double()
    return (counts / counts.sum()).tolist()
