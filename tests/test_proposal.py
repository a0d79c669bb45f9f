"""Learned and uniform proposals, the proposal network's shapes and loss."""
import torch

from nri_ray.graph import edge_index
from nri_ray.proposal import ProposalNet, proposal_loss, propose_learned, propose_uniform


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
    target = logits.argmax(-1)
    loss = proposal_loss(logits, target)
    assert loss.shape == (6,) and (loss < torch.log(torch.tensor(3.0))).all()
