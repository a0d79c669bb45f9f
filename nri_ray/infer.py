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
from .gnn import make_layout, message_step, rollout
from .graph import edge_index
from .metrics import horizon_mse
from .modules import ModuleLibrary
from .proposal import ProposalNet, propose_block_optimum, propose_learned


class Inference(NamedTuple):
    """Shape: structures, proposal_structures `[tasks, edges]` int64; losses `[tasks]`;
    probabilities `[tasks, edges, modules]` (the proposal network's, float32)."""

    structures: torch.Tensor
    proposal_structures: torch.Tensor
    losses: torch.Tensor
    probabilities: torch.Tensor


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
            node_u = rng.uniform(seed, ids, step, rng.INFER_NODE, 1)[:, 0]
            edge_u = rng.uniform(seed, ids, step, rng.INFER_EDGES, current.shape[1])
            proposed = propose_learned(probs, current, epsilon, node_u, edge_u)
            # Only proposals that differ from the current structure are rolled out (the others have its loss).
            moved = (proposed != current).any(dim=1).nonzero().squeeze(1)  # [m]
            proposed_loss = loss.clone()
            if moved.numel():
                proposed_loss[moved] = engine.losses(lib, window[moved], proposed[moved], rollout_steps, workspace)
            accept_u = rng.uniform(seed, ids, step, rng.INFER_ACCEPT, 1)[:, 0]
            current, loss, _, _ = anneal_step(current, loss, proposed, proposed_loss, temperature, accept_u)
        out.append(Inference(current, first, loss, probs))
    return Inference(*(torch.cat(parts) for parts in zip(*out)))


def infer_for_run(lib: ModuleLibrary, proposer: ProposalNet, cfg, trajectories: torch.Tensor, task_ids: torch.Tensor,
                  steps: int) -> Inference:
    """`infer_structures` with a run's settings (`cfg`: SA window, rollout, epsilon, seed, block start), greedy."""
    return infer_structures(lib, proposer, trajectories, task_ids, sa_frames=min(cfg.train.sa_frames, trajectories.shape[1]),
                            rollout_steps=cfg.model.rollout, steps=steps, epsilon=cfg.proposal.epsilon, temperature=0.0,
                            seed=cfg.train.seed, block_start=cfg.proposal.block_start,
                            frame_stride=cfg.proposal.block_frame_stride)


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


def _hidden_structures(n_nodes: int, k: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """`[restarts, n-1]` module of the hidden node's (symmetric) edges to each other node.

    When the K^(n-1) assignments fit in `restarts` they are enumerated (cycled); otherwise drawn.
    """
    combos = k ** (n_nodes - 1)
    if combos <= restarts:
        idx = torch.arange(restarts) % combos
        return torch.stack([(idx // k ** j) % k for j in range(n_nodes - 1)], dim=1)
    return torch.randint(0, k, (restarts, n_nodes - 1), generator=generator)


class Recovery(NamedTuple):
    trajectory: torch.Tensor  # [tasks, frames, dims] the best candidate's hidden trajectory
    fit: torch.Tensor  # [tasks] its one-step error on the visible particles
    hidden_modules: torch.Tensor  # [tasks, n-1] its modules on the hidden node's edges (to each other node)


def recover_hidden(lib, traj: torch.Tensor, known: torch.Tensor, hidden: int, *, restarts: int, steps: int,
                   lr: float, seed: int, log=print) -> Recovery:
    """Recover a hidden particle from its pull on the others (paper section 5.2), all tasks at once.

    Every (task, restart) pair is one candidate: a random initial state in [-1, 1]^dims and one
    assignment of the hidden node's edge modules (all K^(n-1) assignments are enumerated when they
    fit in `restarts`). All candidates are optimized together by Adam on the initial state,
    through the frozen model: the visible particles are teacher-forced with their observed states
    at every frame, the hidden one evolves from its candidate initial state, and the loss is the
    one-step prediction error of the visible particles. The best-fitting candidate of each task
    is kept (experiments.find_node scores it).

    Args:
        traj: `[tasks, frames, nodes, dims]` observed trajectories (the hidden particle's entries are
            never read).
        known: `[tasks, edges]` modules of the edges among visible particles (hidden ones ignored).
    """
    count, frames, n, dims = traj.shape
    k = lib.num_edge_modules
    senders, receivers = (torch.as_tensor(a) for a in edge_index(n))
    g = torch.Generator().manual_seed(seed)
    hidden_edges = _hidden_structures(n, k, restarts, g)  # [restarts, n-1]
    others = [j for j in range(n) if j != hidden]
    # The module on edge s->r for every (task, restart) graph: known edges, then the hidden node's.
    structures = known.repeat_interleave(restarts, dim=0).clone()  # [tasks * restarts, edges]
    per_restart = hidden_edges.repeat(count, 1)  # [tasks * restarts, n-1]
    for col, j in enumerate(others):
        for s, r in ((hidden, j), (j, hidden)):  # symmetric relation: both directions share a module
            structures[:, int(((senders == s) & (receivers == r)).nonzero())] = per_restart[:, col]
    graphs = count * restarts
    layout = make_layout(structures, n, dims, k)
    visible = torch.tensor(others)
    observed = traj.repeat_interleave(restarts, dim=0)  # [graphs, frames, n, d]
    init = (torch.rand(graphs, dims, generator=g) * 2 - 1).requires_grad_(True)  # [graphs, d]
    opt = torch.optim.Adam([init], lr=lr)
    is_hidden = torch.zeros(n, 1, dtype=torch.bool)
    is_hidden[hidden] = True

    def simulate(x0: torch.Tensor):
        """Teacher-forced rollout: (per-graph loss `[graphs]`, hidden trajectory `[graphs, frames, d]`)."""
        h, path, sq = x0, [x0], 0.0
        for t in range(frames - 1):  # the time loop: each hidden state depends on the previous one
            x = torch.where(is_hidden, h.unsqueeze(1), observed[:, t])  # [graphs, n, d]
            nxt = message_step(lib, x.reshape(graphs * n, dims), layout, n).view(graphs, n, dims)
            sq = sq + ((nxt[:, visible] - observed[:, t + 1, visible]) ** 2).mean(dim=(1, 2))
            h = nxt[:, hidden]
            path.append(h)
        return sq / (frames - 1), torch.stack(path, dim=1)

    for step in range(steps):
        loss, _ = simulate(init)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"find-node: step {step + 1}/{steps}, mean fit {loss.mean().item():.3e}")
    with torch.no_grad():
        fit, path = simulate(init)
    fit = fit.view(count, restarts)
    best = fit.argmin(dim=1)  # [tasks]
    rows = torch.arange(count)
    return Recovery(path.view(count, restarts, frames, dims)[rows, best], fit[rows, best],
                    per_restart.view(count, restarts, -1)[rows, best])
