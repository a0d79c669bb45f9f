"""Batched rollouts of many tasks, each with its own structure, in one pass (the super-graph).

A *graph* here is one rollout instance: a task started from one anchor frame. Every graph has
the same n nodes and E = n (n - 1) directed edges (graph.py); graphs differ only in which edge
module each edge runs. Edges of all graphs are grouped by module once per evaluation (the
structure is fixed during a rollout), so each module runs one matmul chain per message-passing
step over exactly the edges assigned to it: no dense "all modules then select", no Python loop
over tasks or edges, only over the K modules.

Naming: gathered node features are `x_send` and `x_recv` (sender s, receiver r of edge s -> r).
Messages are summed per receiver by laying them out receiver-major, `[graphs, nodes, n-1, msg]`,
and reducing the n-1 axis (every node has exactly n-1 incoming edges), which is deterministic
on every device, unlike a scatter-add.

This is the autograd version: baselines, find-node (gradients with respect to a hidden
particle's state) and tests use it. The training round and SA at meta-test time run the same math
on engine.py's tape, with a hand-written backward, and are tested against this module.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .graph import edge_index
from .modules import ModuleLibrary, prediction_loss


@functools.lru_cache(maxsize=None)
def incoming_edges(n_nodes: int) -> torch.Tensor:
    """`[nodes, n-1]`: canonical (sender-major) ids of each receiver's incoming edges (cached; never mutated)."""
    senders, receivers = edge_index(n_nodes)
    order = sorted(range(len(senders)), key=lambda e: (receivers[e], senders[e]))
    return torch.tensor(order, dtype=torch.long).view(n_nodes, n_nodes - 1)


@functools.lru_cache(maxsize=None)
def active_anchors(frames: int, rollout: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(anchor frames, anchors still running at each step): anchors 0, r, 2r, .. < frames - 1.

    Anchor a predicts frames a+1 .. min(a+r, frames-1); at step t (predicting a+t+1) the anchors
    that still have a target form a prefix (later anchors stop earlier), of the returned length.
    """
    anchors = tuple(range(0, frames - 1, rollout))
    live = tuple(sum(1 for a in anchors if a + t + 1 <= frames - 1) for t in range(rollout))
    return anchors, live


def anchored_targets(trajectories: torch.Tensor, rollout: int):
    """The teacher-forced rollout problem of every task: start from ground truth at each anchor
    frame, predict the next `rollout` frames (REFERENCE.md 1.4). Written once for the reference
    loss, the tape and the NRI baseline.

    Args:
        trajectories: `[tasks, time, nodes, dims]`.
    Returns:
        start `[tasks, anchors, nodes, dims]`; targets `[tasks, anchors, steps, nodes, dims]` (frames
        past the last one repeat it); valid `[anchors, steps]` (1 where the target frame exists, in
        the trajectories' dtype).
    """
    time = trajectories.shape[1]
    device = trajectories.device
    anchors = torch.tensor(active_anchors(time, rollout)[0], dtype=torch.long, device=device)  # [anchors]
    frame = anchors.view(-1, 1) + torch.arange(1, rollout + 1, device=device)  # [anchors, steps]
    valid = (frame < time).to(trajectories.dtype)
    return trajectories[:, anchors], trajectories[:, frame.clamp(max=time - 1)], valid


class Layout(NamedTuple):
    """Edges of G = anchors * rows graphs grouped by module and, within a module, by anchor.

    Graph g = a * rows + j is structure row j rolled out from anchor a (anchor-major), so the graphs
    still running at a late step of an anchored rollout are a prefix, and each module's live edges
    the front of its block (engine.py drops the steps past the last frame this way). A plain
    rollout is one anchor: G = rows, live = (1,).

    Shape:
        recv: `[G * edges]` flat receiver node id (graph g's nodes are g*n .. g*n+n-1), grouped order.
        position: `[G * edges]` grouped position of each canonical edge (graph-major, then sender-major).
        incoming: `[G * nodes * (n-1)]` grouped positions of each receiver's incoming edges.
        pair: `[G * edges * 2 * dims]` flat positions in the state `[G * nodes, dims]` of each grouped
            edge's input [x_send; x_recv] (one gather builds every edge input).
        blocks: per module, (start, rows live at step 0, 1, ..): module k owns rows
            [start, start + live[t]) at step t.
        graphs: live graphs per step (a prefix of the anchor-major graph order).
    """

    rows: int
    recv: torch.Tensor
    position: torch.Tensor
    incoming: torch.Tensor
    pair: torch.Tensor
    blocks: tuple[tuple[int, tuple[int, ...]], ...]
    graphs: tuple[int, ...]


def make_layout(structures: torch.Tensor, n_nodes: int, dims: int, num_modules: int,
                live: tuple[int, ...] = (1,)) -> Layout:
    """Group the edges of `[rows, edges]` structures, each rolled out from live[0] anchors, of which
    live[t] still run at step t (built once per structure batch; one host sync for the block sizes)."""
    device = structures.device
    rows, n_edges = structures.shape
    n_anchors = live[0]
    graphs = n_anchors * rows
    modules = structures.long().repeat(n_anchors, 1).reshape(-1)  # [G * edges], graph g = a * rows + j
    anchor = torch.arange(n_anchors, device=device).repeat_interleave(rows * n_edges)  # [G * edges]
    key = modules * n_anchors + anchor  # sort by module, then anchor
    order = torch.argsort(key, stable=True)  # canonical flat edge id at each grouped position
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=device)
    per_key = torch.bincount(key, minlength=num_modules * n_anchors).view(num_modules, n_anchors).tolist()  # one sync
    blocks, start = [], 0
    for counts in per_key:  # K modules
        blocks.append((start, tuple(sum(counts[:a]) for a in live)))
        start += sum(counts)
    senders, receivers = (torch.as_tensor(a, device=device) for a in edge_index(n_nodes))
    offsets = torch.arange(graphs, device=device).unsqueeze(1) * n_nodes  # [G, 1]
    send = (offsets + senders).reshape(-1)[order]  # [G * edges]
    recv = (offsets + receivers).reshape(-1)[order]
    inc = incoming_edges(n_nodes).to(device)  # [nodes, n-1] canonical edge ids
    canonical_in = (torch.arange(graphs, device=device).view(-1, 1, 1) * n_edges + inc).reshape(-1)
    incoming = position[canonical_in]  # [G * nodes * (n-1)]
    dim = torch.arange(dims, device=device)
    pair = (torch.stack([send, recv], dim=1).unsqueeze(-1) * dims + dim).reshape(-1)  # [G * edges, 2, dims] flat
    return Layout(rows, recv, position, incoming, pair, tuple(blocks), tuple(a * rows for a in live))


def message_step(lib: ModuleLibrary, x: torch.Tensor, layout: Layout, n_nodes: int) -> torch.Tensor:
    """One message-passing step of every graph and edge of `layout`: x `[graphs * nodes, dims]` -> next state."""
    dims = x.shape[1]
    edge_in = lib.edge_features(x.reshape(-1)[layout.pair].view(-1, 2 * dims))  # [graphs * edges, in], grouped
    messages = torch.cat([lib.edges(k, edge_in[start:start + live[0]])  # loop over the K modules only
                          for k, (start, live) in enumerate(layout.blocks) if live[0]])  # [graphs * edges, message]
    # Receiver-major: [graphs * nodes, n - 1, message], then sum the n - 1 incoming messages.
    per_receiver = messages[layout.incoming].view(-1, n_nodes - 1, messages.shape[-1])
    aggregated = per_receiver.sum(dim=1)  # [graphs * nodes, message]
    return x + lib.node(torch.cat([aggregated, x], dim=-1))


def rollout(lib: ModuleLibrary, start: torch.Tensor, structures: torch.Tensor, steps: int) -> torch.Tensor:
    """Open-loop rollout from `start` states.

    Args:
        start: `[graphs, nodes, dims]` initial states.
        structures: `[graphs, edges]`.
    Returns:
        `[graphs, steps, nodes, dims]` predicted states after 1..steps message-passing steps.
    """
    graphs, n_nodes, dims = start.shape
    layout = make_layout(structures, n_nodes, dims, lib.num_edge_modules)
    x = start.reshape(graphs * n_nodes, dims)  # [graphs * nodes, dims]
    out = []
    for _ in range(steps):  # the time loop: each step depends on the previous one
        x = message_step(lib, x, layout, n_nodes)
        out.append(x.view(graphs, n_nodes, dims))
    return torch.stack(out, dim=1)


def anchored_losses(lib: ModuleLibrary, trajectories: torch.Tensor, structures: torch.Tensor,
                    rollout_steps: int = 10) -> torch.Tensor:
    """Per-task MSE of rollouts from ground-truth anchors every `rollout_steps` frames.

    Anchors are frames 0, r, 2r, ... < time - 1; each runs r steps; predictions past the last
    frame are dropped. The loss of a task is the mean squared error over all predicted frames
    1 .. time-1, nodes and dims (REFERENCE.md 1.4): a uniform mix of 1..r-step horizons.

    Args:
        trajectories: `[tasks, time, nodes, dims]`.
        structures: `[tasks, edges]`.
    Returns:
        `[tasks]` losses.
    """
    tasks, _, n_nodes, dims = trajectories.shape
    start, target, valid = anchored_targets(trajectories, rollout_steps)  # [tasks, anchors, ...], [anchors, steps]
    n_anchor = start.shape[1]
    graph_structures = structures.repeat_interleave(n_anchor, dim=0)  # [tasks * anchors, edges]
    # [tasks, anchors, n, d] -> [tasks * anchors, n, d]: one graph per (task, anchor)
    pred = rollout(lib, start.reshape(tasks * n_anchor, n_nodes, dims), graph_structures, rollout_steps)
    pred = pred.view(tasks, n_anchor, rollout_steps, n_nodes, dims)  # back to per task and anchor
    sq = prediction_loss(pred - target, lib.loss_delta).mean(dim=(-1, -2))  # [tasks, anchors, steps]
    return (sq * valid).sum(dim=(1, 2)) / valid.sum()


def soft_rollout(lib: ModuleLibrary, start: torch.Tensor, weights: torch.Tensor, steps: int) -> torch.Tensor:
    """Rollout where every edge runs all K modules, mixed by per-edge weights (the NRI decoder).

    Message of edge (s -> r): sum_k weights[g, e, k] * h_k([x_s; x_r]). Used by the NRI VAE baseline,
    whose edge types are relaxed (Gumbel-softmax) while training; with one-hot weights it equals
    `rollout` on the argmax structures.

    Args:
        start: `[graphs, nodes, dims]`.
        weights: `[graphs, edges, modules]`.
    Returns:
        `[graphs, steps, nodes, dims]`.
    """
    graphs, n_nodes, dims = start.shape
    senders, receivers = (torch.as_tensor(a, device=start.device) for a in edge_index(n_nodes))
    incoming = incoming_edges(n_nodes).to(start.device)  # [nodes, n-1]
    x = start  # [graphs, nodes, dims]
    out = []
    for _ in range(steps):  # the time loop
        edge_in = lib.edge_features(torch.cat([x[:, senders], x[:, receivers]], dim=-1).reshape(-1, 2 * dims))
        messages = sum(weights[..., k].reshape(-1, 1) * lib.edges(k, edge_in)
                       for k in range(lib.num_edge_modules))  # [graphs * edges, message]
        messages = messages.view(graphs, -1, messages.shape[-1])  # [graphs, edges, message]
        aggregated = messages[:, incoming].sum(dim=2)  # [graphs, nodes, n-1, message] -> [graphs, nodes, message]
        node_in = torch.cat([aggregated, x], dim=-1).reshape(graphs * n_nodes, -1)  # [graphs * nodes, msg + d]
        x = x + lib.node(node_in).view(graphs, n_nodes, dims)
        out.append(x)
    return torch.stack(out, dim=1)
