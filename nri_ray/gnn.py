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
from .modules import ModuleLibrary


class EdgePlan(NamedTuple):
    """Edges of `graphs` graphs grouped by module (built once per structure batch).

    Shape:
        send, recv: `[graphs * edges]` flat node ids (graph g's nodes are g*n ... g*n+n-1), in
            module-grouped order.
        counts: edges per module, a tuple of K ints (module k owns a contiguous block).
        unsort: `[graphs * nodes * (n-1)]` positions in the grouped order that lay messages
            out receiver-major.
    """

    send: torch.Tensor
    recv: torch.Tensor
    counts: tuple[int, ...]
    unsort: torch.Tensor


@functools.lru_cache(maxsize=None)
def incoming_edges(n_nodes: int) -> torch.Tensor:
    """`[nodes, n-1]`: canonical (sender-major) ids of each receiver's incoming edges (cached; never mutated)."""
    senders, receivers = edge_index(n_nodes)
    order = sorted(range(len(senders)), key=lambda e: (receivers[e], senders[e]))
    return torch.tensor(order, dtype=torch.long).view(n_nodes, n_nodes - 1)


def plan_edges(structures: torch.Tensor, n_nodes: int, num_modules: int) -> EdgePlan:
    """Group the edges of every graph by module.

    Args:
        structures: `[graphs, edges]` module index per edge.
    """
    device = structures.device
    graphs, n_edges = structures.shape
    senders, receivers = (torch.as_tensor(a, device=device) for a in edge_index(n_nodes))
    offsets = torch.arange(graphs, device=device).unsqueeze(1) * n_nodes  # [graphs, 1]
    flat_send = (offsets + senders).reshape(-1)  # [graphs * edges], canonical order
    flat_recv = (offsets + receivers).reshape(-1)
    modules = structures.reshape(-1)  # [graphs * edges]
    order = torch.argsort(modules, stable=True)  # canonical flat edge id at each grouped position
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=device)  # grouped position of each edge
    counts = tuple(torch.bincount(modules, minlength=num_modules).tolist())
    incoming = incoming_edges(n_nodes).to(device)  # [nodes, n-1]
    canonical = (torch.arange(graphs, device=device).view(-1, 1, 1) * n_edges + incoming).reshape(-1)
    return EdgePlan(flat_send[order], flat_recv[order], counts, position[canonical])


def message_step(lib: ModuleLibrary, x: torch.Tensor, plan: EdgePlan, n_nodes: int) -> torch.Tensor:
    """One message-passing step: x `[graphs * nodes, dims]` -> next state, same shape."""
    x_send, x_recv = x[plan.send], x[plan.recv]  # [graphs * edges, dims], grouped by module
    edge_in = torch.cat([x_send, x_recv], dim=-1)  # [graphs * edges, 2 * dims]
    blocks, start = [], 0
    for k, count in enumerate(plan.counts):  # loop over the K modules only
        if count:
            blocks.append(lib.edges(k, edge_in[start:start + count]))
        start += count
    messages = torch.cat(blocks)  # [graphs * edges, message]
    # Receiver-major: [graphs * nodes, n - 1, message], then sum the n - 1 incoming messages.
    per_receiver = messages[plan.unsort].view(-1, n_nodes - 1, messages.shape[-1])
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
    plan = plan_edges(structures, n_nodes, lib.num_edge_modules)
    x = start.reshape(graphs * n_nodes, dims)  # [graphs * nodes, dims]
    out = []
    for _ in range(steps):  # the time loop: each step depends on the previous one
        x = message_step(lib, x, plan, n_nodes)
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
    tasks, time, n_nodes, dims = trajectories.shape
    device = trajectories.device
    anchors = torch.arange(0, time - 1, rollout_steps, device=device)  # [anchors]
    n_anchor = anchors.numel()
    start = trajectories[:, anchors].reshape(tasks * n_anchor, n_nodes, dims)  # [tasks*anchors, n, d]
    graph_structures = structures.repeat_interleave(n_anchor, dim=0)  # [tasks * anchors, edges]
    pred = rollout(lib, start, graph_structures, rollout_steps)  # [tasks*anchors, steps, n, d]
    pred = pred.view(tasks, n_anchor, rollout_steps, n_nodes, dims)
    frame = anchors.view(-1, 1) + torch.arange(1, rollout_steps + 1, device=device)  # [anchors, steps]
    valid = (frame < time).to(trajectories.dtype)  # [anchors, steps]
    target = trajectories[:, frame.clamp(max=time - 1)]  # [tasks, anchors, steps, n, d]
    sq = ((pred - target) ** 2).mean(dim=(-1, -2))  # [tasks, anchors, steps]
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
        edge_in = torch.cat([x[:, senders], x[:, receivers]], dim=-1).reshape(-1, 2 * dims)  # [graphs*edges, 2d]
        messages = sum(weights[..., k].reshape(-1, 1) * lib.edges(k, edge_in)
                       for k in range(lib.num_edge_modules))  # [graphs * edges, message]
        messages = messages.view(graphs, -1, messages.shape[-1])  # [graphs, edges, message]
        aggregated = messages[:, incoming].sum(dim=2)  # [graphs, nodes, n-1, message] -> [graphs, nodes, message]
        node_in = torch.cat([aggregated, x], dim=-1).reshape(graphs * n_nodes, -1)  # [graphs * nodes, msg + d]
        x = x + lib.node(node_in).view(graphs, n_nodes, dims)
        out.append(x)
    return torch.stack(out, dim=1)
