"""The learned proposal: an NRI-style MLP encoder giving per-edge module probabilities.

Network (Kipf et al. 2018's factor-graph MLP encoder, REFERENCE.md 4.1, with one LayerNorm per
block instead of the authors' stacked BatchNorms and no dropout):

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
    """Linear, ELU, Linear, ELU, LayerNorm (NRI's MLP block with LayerNorm for BatchNorm)."""

    def __init__(self, n_in: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        for fc in (self.fc1, self.fc2):  # NRI: Xavier-normal weights, biases 0.1
            fc.weight.data = torch.randn(fc.weight.shape, generator=generator) * (2.0 / sum(fc.weight.shape)) ** 0.5
            fc.bias.data.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.elu(self.fc2(F.elu(self.fc1(x)))))


class ProposalNet(nn.Module):
    """Per-edge module logits from observed trajectories.

    Args:
        in_frames: frames the network sees (the SA window, 49 on the NRI data).
        dims: state dimensions per node.
        hidden: block width (NRI 256, the authors 512).
        num_modules: K.
    Shape:
        forward: `[tasks, frames >= in_frames, nodes, dims]` -> `[tasks, edges, modules]` logits.
    """

    def __init__(self, in_frames: int, dims: int, hidden: int, num_modules: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.in_frames = in_frames
        self.mlp1 = _Block(in_frames * dims, hidden, g)
        self.mlp2 = _Block(2 * hidden, hidden, g)
        self.mlp3 = _Block(hidden, hidden, g)
        self.mlp4 = _Block(3 * hidden, hidden, g)
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
