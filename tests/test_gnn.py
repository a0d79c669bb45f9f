"""The batched super-graph rollout against a per-task, per-edge reference; node equivariance."""
import torch

from nri_ray.gnn import anchored_losses, rollout
from nri_ray.graph import edge_index
from nri_ray.modules import ModuleLibrary


def reference_step(lib, x, structure):
    """One message-passing step of ONE task, edge by edge: x [nodes, dims], structure [edges]."""
    senders, receivers = edge_index(x.shape[0])
    agg = torch.zeros(x.shape[0], lib.message_size, dtype=x.dtype)
    for e, (s, r) in enumerate(zip(senders, receivers)):
        agg[r] += lib.edges(int(structure[e]), torch.cat([x[s], x[r]]).unsqueeze(0))[0]
    return x + lib.node(torch.cat([agg, x], dim=-1))


def reference_losses(lib, traj, structures, r):
    out = []
    for task in range(traj.shape[0]):  # the loop the batched version must not have
        time = traj.shape[1]
        errs = []
        for anchor in range(0, time - 1, r):
            x = traj[task, anchor]
            for step in range(1, r + 1):
                x = reference_step(lib, x, structures[task])
                if anchor + step < time:
                    errs.append(((x - traj[task, anchor + step]) ** 2).mean())
        out.append(torch.stack(errs).mean())
    return torch.stack(out)


def test_batched_rollout_equals_per_task_reference_loop():
    torch.manual_seed(0)
    lib = ModuleLibrary(3, 4, [16, 16], [16], seed=1)
    traj = torch.randn(4, 13, 4, 4) * 0.5  # [tasks, time, nodes, dims]
    structures = torch.randint(0, 3, (4, 12))
    structures[0] = 0  # one task using a single module, others mixed
    with torch.no_grad():
        batched = anchored_losses(lib, traj, structures, rollout_steps=5)
        ref = reference_losses(lib, traj, structures, 5)
    torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-7)


def test_rollout_is_permutation_equivariant_over_nodes():
    torch.manual_seed(0)
    n = 5
    lib = ModuleLibrary(2, 4, [16, 16], [16], seed=2)
    start = torch.randn(3, n, 4)
    structures = torch.randint(0, 2, (3, n * (n - 1)))
    perm = torch.tensor([3, 0, 4, 1, 2])  # new node i is old node perm[i]
    senders, receivers = edge_index(n)
    old_edge = {(int(s), int(r)): e for e, (s, r) in enumerate(zip(senders, receivers))}
    # Edge (i, j) of the permuted graph is edge (perm[i], perm[j]) of the original.
    mapping = torch.tensor([old_edge[(int(perm[s]), int(perm[r]))] for s, r in zip(senders, receivers)])
    with torch.no_grad():
        out = rollout(lib, start, structures, 4)  # [graphs, steps, nodes, dims]
        out_perm = rollout(lib, start[:, perm], structures[:, mapping], 4)
    torch.testing.assert_close(out_perm, out[:, :, perm], rtol=1e-5, atol=1e-6)


def test_structure_changes_the_prediction_and_gradients_reach_used_modules_only():
    lib = ModuleLibrary(3, 4, [8], [8], seed=3)
    traj = torch.randn(2, 7, 3, 4)
    a = anchored_losses(lib, traj, torch.zeros(2, 6, dtype=torch.long), 3)
    b = anchored_losses(lib, traj, torch.ones(2, 6, dtype=torch.long), 3)
    assert not torch.allclose(a, b)
    a.sum().backward()
    grad = lib.edges.weights[0].grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0 and grad[2].abs().sum() == 0
