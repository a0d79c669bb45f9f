"""Learned and uniform proposals, the proposal network's shapes and loss."""
import itertools
import math

import pytest
import torch

from nri_ray.graph import edge_index
from nri_ray.proposal import ProposalNet, proposal_loss, propose_block_optimum, propose_learned, propose_uniform


def test_learned_proposal_only_touches_one_nodes_incoming_edges():
    n, tasks = 5, 300
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(tasks, 20, 3, generator=g), -1)
    current = torch.randint(0, 3, (tasks, 20), generator=g)
    node_u = torch.rand(tasks, generator=g, dtype=torch.float64)
    edge_u = torch.rand(tasks, 20, generator=g, dtype=torch.float64)
    proposed = propose_learned(probs, current, 0.1, node_u, edge_u)
    receivers = torch.as_tensor(edge_index(n)[1])
    node = (node_u * n).long()
    changed = proposed != current
    assert (changed & (receivers[None] != node[:, None])).sum() == 0
    assert changed.any()


def test_learned_proposal_follows_confident_probabilities_and_epsilon_one_is_uniform():
    tasks = 4000
    g = torch.Generator().manual_seed(1)
    probs = torch.zeros(tasks, 20, 2)
    probs[..., 1] = 1.0  # the network is certain: module 1 everywhere
    current = torch.zeros(tasks, 20, dtype=torch.long)
    node_u, edge_u = torch.rand(tasks, generator=g, dtype=torch.float64), torch.rand(tasks, 20, generator=g, dtype=torch.float64)
    receivers = torch.as_tensor(edge_index(5)[1])
    mask = receivers[None] == (node_u * 5).long()[:, None]
    certain = propose_learned(probs, current, 0.0, node_u, edge_u)
    assert (certain[mask] == 1).all()
    mixed = propose_learned(probs, current, 1.0, node_u, edge_u)  # pure uniform: half are 0
    assert abs(mixed[mask].double().mean().item() - 0.5) < 0.02
    small = propose_learned(probs, current, 0.1, node_u, edge_u)  # 5% chance of module 0 per edge
    assert 0.02 < (small[mask] == 0).double().mean().item() < 0.08


def test_uniform_proposal_changes_exactly_one_edge_to_another_module():
    g = torch.Generator().manual_seed(2)
    current = torch.randint(0, 4, (500, 20), generator=g)
    out = propose_uniform(current, 4, torch.rand(500, generator=g, dtype=torch.float64),
                          torch.rand(500, generator=g, dtype=torch.float64))
    assert ((out != current).sum(dim=1) == 1).all()
    assert out.max() < 4 and out.min() >= 0


def test_proposal_network_shapes_and_loss():
    net = ProposalNet(in_frames=9, dims=4, hidden=16, num_modules=3, seed=0)
    logits = net(torch.randn(6, 19, 4, 4))  # more frames than it needs: it takes the first 9
    assert logits.shape == (6, 12, 3)
    # Against cross-entropies computed by hand on fixed logits, averaged over each task's edges:
    # task 0 uniform (-log 1/3) and softmax (1, 2, 3)/6 at target 2 (-log 1/2); task 1 confident and
    # wrong on its first edge, confident and right on its second.
    fixed = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), math.log(3.0)]],
                          [[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]]])  # [tasks 2, edges 2, modules 3]
    target = torch.tensor([[1, 2], [1, 2]])
    want_0 = (math.log(3.0) + (math.log(6.0) - math.log(3.0))) / 2  # -log(1/3), -log(3/6)
    lse = math.log(math.exp(10.0) + 2.0)
    want_1 = ((lse - 0.0) + (lse - 10.0)) / 2  # wrong and confident, then right and confident
    torch.testing.assert_close(proposal_loss(fixed, target), torch.tensor([want_0, want_1]), rtol=1e-6, atol=1e-6)


def _one_step_errors(lib, window, structures, stride):
    """`[tasks, nodes]` one-step error of each node (teacher-forced) on frames 0, s, 2s, .. (autograd rollout)."""
    from nri_ray.gnn import rollout

    tasks, frames, n, d = window.shape
    steps = torch.arange(0, frames - 1, stride)
    starts = window[:, steps].reshape(-1, n, d)  # [tasks * F, nodes, dims]
    pred = rollout(lib, starts, structures.repeat_interleave(len(steps), dim=0), 1)[:, 0]
    return ((pred - window[:, steps + 1].reshape(-1, n, d)) ** 2).mean(-1).view(tasks, len(steps), n).mean(1)


@pytest.mark.parametrize("k, n", [(2, 5), (3, 4)])
def test_block_optimum_is_the_exact_one_step_optimum_of_every_node(k, n):
    """Against brute force: every assignment of a node's incoming edges, scored by gnn.rollout."""
    from nri_ray.gnn import incoming_edges
    from nri_ray.modules import ModuleLibrary

    g = torch.Generator().manual_seed(2)
    lib = ModuleLibrary(k, 4, [16, 16], [16, 16], seed=1, init_spread=0.5)
    window = torch.randn(6, 9, n, 4, generator=g)
    current = torch.randint(0, k, (6, n * (n - 1)), generator=g)
    proposed = propose_block_optimum(lib, window, current, frame_stride=2)
    incoming = incoming_edges(n)
    combos = torch.tensor(list(itertools.product(range(k), repeat=n - 1)))  # [C, n-1]
    errors = []
    for combo in combos:  # the same block on every node: each node's error depends on its own block only
        s = torch.zeros(n * (n - 1), dtype=torch.long)
        s[incoming.reshape(-1)] = combo.repeat(n)
        errors.append(_one_step_errors(lib, window, s.expand(6, -1), 2))
    best = combos[torch.stack(errors).argmin(0)]  # [tasks, nodes, n-1]
    torch.testing.assert_close(proposed[:, incoming], best, rtol=0, atol=0)
    # the proposal's one-step error is the minimum over the candidates (and no worse than the current one)
    assert (_one_step_errors(lib, window, proposed, 2) <= _one_step_errors(lib, window, current, 2) + 1e-7).all()


def test_block_optimum_falls_back_to_single_edge_moves_when_the_blocks_are_too_many():
    from nri_ray.gnn import incoming_edges
    from nri_ray.modules import ModuleLibrary

    g = torch.Generator().manual_seed(3)
    lib = ModuleLibrary(3, 4, [16, 16], [16, 16], seed=1, init_spread=0.5)
    window = torch.randn(5, 7, 5, 4, generator=g)
    current = torch.randint(0, 3, (5, 20), generator=g)
    proposed = propose_block_optimum(lib, window, current, frame_stride=1, max_candidates=10)  # 81 blocks > 10
    changed = (proposed != current)[:, incoming_edges(5)].sum(-1)  # [tasks, nodes]
    assert changed.max() <= 1 and changed.sum() > 0
    assert (_one_step_errors(lib, window, proposed, 1) <= _one_step_errors(lib, window, current, 1) + 1e-7).all()
