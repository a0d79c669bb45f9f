"""The learned proposal: an NRI-style MLP encoder giving per-edge module probabilities.

Network (Kipf et al. 2018's factor-graph MLP encoder, REFERENCE.md 4.1, no dropout; each block
ends in a LayerNorm for SA's proposals, or in NRI's BatchNorm for the NRI baseline):

    node features  [tasks, nodes, frames * dims]  (each node's trajectory, time-major)
    mlp1           -> [tasks, nodes, hidden]
    node->edge     [x_send; x_recv] -> mlp2 -> [tasks, edges, hidden]           (the skip)
    edge->node     mean over each node's n-1 incoming edges -> mlp3 -> [tasks, nodes, hidden]
    node->edge     [x_send; x_recv; skip] -> mlp4 -> [tasks, edges, hidden]
    out            linear -> [tasks, edges, modules] logits

Proposals (blocked Gibbs, REFERENCE.md 3.2): pick one node per task and resample all its
incoming edges from q = (1 - epsilon) p + epsilon / K, so that every move keeps a probability of
at least (epsilon / K) ** (n - 1) and a confidently wrong network cannot lock SA out of the
right structure (REFERENCE.md 8.8). `propose_uniform` changes one random edge to a random other
module. Both take their random numbers as arguments (rng.py).

The network trains on the current SA structures of its batch's tasks (cross-entropy over K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gnn import incoming_edges
from .graph import edge_index


class _Block(nn.Module):
    """Linear, ELU, Linear, ELU, then a norm: LayerNorm (`norm="layer"`, per row: a task's output
    does not depend on the rest of its batch, which SA and sharding need), or NRI's BatchNorm1d
    (`"batch"`) over all tasks and rows of the batch: batch statistics in training, running ones
    in evaluation (`.eval()`)."""

    def __init__(self, n_in: int, hidden: int, generator: torch.Generator, norm: str = "layer"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden)
        if norm not in ("layer", "batch"):
            raise ValueError(f"norm: got {norm!r}, expected layer or batch")
        self.norm = nn.LayerNorm(hidden) if norm == "layer" else nn.BatchNorm1d(hidden)
        for fc in (self.fc1, self.fc2):  # NRI: Xavier-normal weights, biases 0.1
            fc.weight.data = torch.randn(fc.weight.shape, generator=generator) * (2.0 / sum(fc.weight.shape)) ** 0.5
            fc.bias.data.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.fc2(F.elu(self.fc1(x))))  # [tasks, rows, hidden]
        if isinstance(self.norm, nn.BatchNorm1d):  # statistics over tasks x rows: [tasks * rows, hidden]
            return self.norm(h.reshape(-1, h.shape[-1])).view(h.shape)
        return self.norm(h)


class ProposalNet(nn.Module):
    """Per-edge module logits from observed trajectories.

    Args:
        in_frames: frames the network sees (the SA window, 49 on the NRI data).
        dims: state dimensions per node.
        hidden: block width (NRI 256, the authors 512).
        num_modules: K.
        norm: "layer" (SA's proposal network) or "batch" (the NRI baseline's encoder, as the original).
    Shape:
        forward: `[tasks, frames >= in_frames, nodes, dims]` -> `[tasks, edges, modules]` logits.
    """

    def __init__(self, in_frames: int, dims: int, hidden: int, num_modules: int, seed: int, norm: str = "layer"):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.in_frames = in_frames
        self.mlp1 = _Block(in_frames * dims, hidden, g, norm)
        self.mlp2 = _Block(2 * hidden, hidden, g, norm)
        self.mlp3 = _Block(hidden, hidden, g, norm)
        self.mlp4 = _Block(3 * hidden, hidden, g, norm)
        self.out = nn.Linear(hidden, num_modules)
        self.out.weight.data = torch.randn(self.out.weight.shape, generator=g) * (2.0 / (hidden + num_modules)) ** 0.5
        self.out.bias.data.fill_(0.1)

    def forward(self, trajectories: torch.Tensor) -> torch.Tensor:
        tasks, _, n_nodes, dims = trajectories.shape
        senders, receivers = (torch.as_tensor(a, device=trajectories.device) for a in edge_index(n_nodes))
        incoming = incoming_edges(n_nodes).to(trajectories.device)  # [nodes, n-1]
        window = trajectories[:, : self.in_frames]  # [tasks, frames, nodes, dims]
        x = window.permute(0, 2, 1, 3).reshape(tasks, n_nodes, -1)  # [tasks, nodes, frames * dims]
        x = self.mlp1(x)  # [tasks, nodes, hidden]
        skip = self.mlp2(torch.cat([x[:, senders], x[:, receivers]], dim=-1))  # [tasks, edges, hidden]
        x = self.mlp3(skip[:, incoming].mean(dim=2))  # [tasks, nodes, n-1, hidden] -> [tasks, nodes, hidden]
        x = self.mlp4(torch.cat([x[:, senders], x[:, receivers], skip], dim=-1))  # [tasks, edges, hidden]
        return self.out(x)  # [tasks, edges, modules]


def propose_learned(probs: torch.Tensor, current: torch.Tensor, epsilon: float, node_u: torch.Tensor,
                    edge_u: torch.Tensor) -> torch.Tensor:
    """Blocked-Gibbs proposal: resample one node's incoming edges from the mixed distribution.

    Args:
        probs: `[tasks, edges, modules]` proposal probabilities.
        current: `[tasks, edges]` current structures.
        node_u: `[tasks]` uniforms choosing the node; edge_u: `[tasks, edges]` uniforms for the draws.
    Returns:
        `[tasks, edges]` proposed structures.
    """
    tasks, n_edges, k = probs.shape
    n_nodes = int(round((1 + (1 + 4 * n_edges) ** 0.5) / 2))  # edges = n (n - 1)
    mixed = (1 - epsilon) * probs.to(torch.float64) + epsilon / k  # [tasks, edges, modules]
    cdf = mixed.cumsum(dim=-1)[..., :-1]  # [tasks, edges, modules - 1]
    draw = (edge_u.unsqueeze(-1) >= cdf).sum(dim=-1)  # inverse-CDF sample, [tasks, edges]
    node = (node_u * n_nodes).long().clamp_(max=n_nodes - 1)  # [tasks]
    receivers = torch.as_tensor(edge_index(n_nodes)[1], device=current.device)
    resample = receivers.unsqueeze(0) == node.unsqueeze(1)  # [tasks, edges]
    return torch.where(resample, draw.to(current.dtype), current)


def propose_uniform(current: torch.Tensor, num_modules: int, edge_u: torch.Tensor, module_u: torch.Tensor) -> torch.Tensor:
    """Change one random edge per task to a uniformly random *other* module.

    Args:
        current: `[tasks, edges]`; edge_u, module_u: `[tasks]` uniforms.
    """
    tasks, n_edges = current.shape
    edge = (edge_u * n_edges).long().clamp_(max=n_edges - 1)  # [tasks]
    shift = 1 + (module_u * (num_modules - 1)).long().clamp_(max=num_modules - 2)  # [tasks] in 1..K-1
    rows = torch.arange(tasks, device=current.device)
    out = current.clone()
    out[rows, edge] = (current[rows, edge] + shift.to(current.dtype)) % num_modules
    return out


def proposal_loss(logits: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    """`[tasks]` cross-entropy of the logits against structures, averaged over edges."""
    tasks, n_edges, k = logits.shape
    ce = F.cross_entropy(logits.reshape(-1, k), structures.reshape(-1).long(), reduction="none")
    return ce.view(tasks, n_edges).mean(dim=1)


@torch.no_grad()
def propose_block_optimum(lib, window: torch.Tensor, current: torch.Tensor, frame_stride: int = 4,
                          max_candidates: int = 256) -> torch.Tensor:
    """Every node's incoming edges set to their best modules under the one-step loss (a proposal).

    With teacher forcing, one message-passing step predicts node r's next state from the true
    current states and the modules of r's n-1 incoming edges only, so the one-step error splits
    into independent per-node terms. For every task and node this scores candidate assignments of
    the node's incoming edges (all K^(n-1) when there are at most `max_candidates`, else the
    current one and every single-edge change of it) on the frames 0, s, 2s, .. of the window, and
    returns the structure with each node's best block: the exact one-step optimum over all
    structures when the candidates are exhaustive. SA then accepts or rejects it on its full
    rollout loss like any proposal.

    The node module's first layer is linear in the summed message, so each edge's message goes
    through that layer once per module and a candidate's pre-activation is a sum of those (one
    matmul with the candidates' one-hot selection); only the node module's later layers run per
    candidate.

    Args:
        lib: the module library (ModuleLibrary).
        window: `[tasks, frames, nodes, dims]` trajectories (the SA window).
        current: `[tasks, edges]` current structures.
    Returns:
        `[tasks, edges]` proposed structures (current's dtype).
    """
    tasks, frames, n_nodes, dims = window.shape
    k = lib.num_edge_modules
    device = window.device
    senders, receivers = (torch.as_tensor(a, device=device) for a in edge_index(n_nodes))
    incoming = incoming_edges(n_nodes).to(device)  # [nodes, n-1] edge ids
    steps = torch.arange(0, frames - 1, frame_stride, device=device)
    x, y = window[:, steps], window[:, steps + 1]  # [tasks, F, nodes, dims] states and next states
    f = steps.numel()
    edge_in = lib.edge_features(torch.cat([x[:, :, senders], x[:, :, receivers]], dim=-1).reshape(-1, 2 * dims))
    w1, b1 = lib.node.weights[0], lib.node.biases[0]  # [message + dims, hidden], [hidden]
    message_size = lib.message_size
    # Each edge's message through the node module's first layer, per module: [modules, tasks, F, edges, hidden].
    u = torch.stack([lib.edges(m, edge_in) @ w1[:message_size] for m in range(k)]).view(k, tasks, f, -1, w1.shape[1])
    u = u[:, :, :, incoming]  # [modules, tasks, F, nodes, n-1, hidden]: receiver-major
    u = u.permute(1, 3, 4, 0, 2, 5).reshape(tasks, n_nodes, (n_nodes - 1) * k, f * w1.shape[1])  # [t, n, (n-1)K, F*h]
    if k ** (n_nodes - 1) <= max_candidates:  # all assignments of a node's incoming edges: [1, 1, C, n-1]
        codes = torch.arange(k ** (n_nodes - 1), device=device).unsqueeze(1)
        candidates = (codes // k ** torch.arange(n_nodes - 1, device=device)) % k
        candidates = candidates.view(1, 1, -1, n_nodes - 1)
    else:  # the current block and each single-edge change: [tasks, nodes, 1 + (n-1)(K-1), n-1]
        block = current.long()[:, incoming]  # [tasks, nodes, n-1]
        shift = torch.arange(1, k, device=device)  # [K-1]
        eye = torch.eye(n_nodes - 1, dtype=torch.long, device=device)  # [n-1, n-1]
        moved = (block.unsqueeze(2).unsqueeze(3) + eye.view(1, 1, n_nodes - 1, 1, n_nodes - 1)
                 * shift.view(1, 1, 1, -1, 1)) % k  # [tasks, nodes, n-1, K-1, n-1]
        candidates = torch.cat([block.unsqueeze(2), moved.flatten(2, 3)], dim=2)
    # One-hot of each candidate's module per incoming edge: [.., C, (n-1) K]; one matmul sums the messages.
    select = torch.nn.functional.one_hot(candidates, k).to(u.dtype).flatten(-2)
    pre = torch.matmul(select, u).view(tasks, n_nodes, -1, f, w1.shape[1])  # [tasks, nodes, C, F, hidden]
    own = (x @ w1[message_size:] + b1).permute(0, 2, 1, 3).unsqueeze(2)  # [tasks, nodes, 1, F, hidden]
    h = (pre + own).relu_()
    last = len(lib.node.weights) - 1
    for i in range(1, last + 1):  # the node module's later layers, on every candidate
        h = torch.addmm(lib.node.biases[i], h.reshape(-1, h.shape[-1]), lib.node.weights[i]).view(*h.shape[:-1], -1)
        if i < last:
            h = h.relu_()
    pred = x.permute(0, 2, 1, 3).unsqueeze(2) + h  # [tasks, nodes, C, F, dims]
    error = ((pred - y.permute(0, 2, 1, 3).unsqueeze(2)) ** 2).mean(dim=(3, 4))  # [tasks, nodes, C]
    best = error.argmin(dim=2)  # [tasks, nodes]
    candidates = candidates.expand(tasks, n_nodes, -1, -1)
    chosen = candidates.gather(2, best.view(tasks, n_nodes, 1, 1).expand(-1, -1, 1, n_nodes - 1)).squeeze(2)
    proposed = current.clone()
    proposed[:, incoming.reshape(-1)] = chosen.reshape(tasks, -1).to(current.dtype)  # [tasks, nodes*(n-1)] edge ids
    return proposed
