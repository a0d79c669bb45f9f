"""benchmarks/reference_round.py: the authors'-style round does the same math as nri-ray's rollout."""
import numpy as np
import torch

import reference_round as ref
from nri_ray import gnn
from nri_ray.modules import ModuleLibrary


def _copy_weights(model: ref.ReferenceModel, lib: ModuleLibrary) -> None:
    """nri-ray's stacked [in, out] weights into the reference's nn.Linear layers ([out, in])."""
    with torch.no_grad():
        for k, module in enumerate(model.edge_modules):
            linears = [m for m in module if isinstance(m, torch.nn.Linear)]
            for l, lin in enumerate(linears):
                lin.weight.copy_(lib.edges.weights[l][k].t())
                lin.bias.copy_(lib.edges.biases[l][k])
        linears = [m for m in model.node_module if isinstance(m, torch.nn.Linear)]
        for l, lin in enumerate(linears):
            lin.weight.copy_(lib.node.weights[l].t())
            lin.bias.copy_(lib.node.biases[l])


def test_reference_losses_equal_anchored_losses():
    torch.manual_seed(0)
    tasks, frames, n, hidden = 6, 21, 5, [16, 16]
    lib = ModuleLibrary(2, 4, hidden, hidden, seed=3)
    model = ref.ReferenceModel(n, frames, 2, [8] + hidden, [hidden[-1] + 4] + hidden + [4], seed=1)
    _copy_weights(model, lib)
    trajectories = torch.randn(tasks, frames, n, 4)
    structures = torch.randint(0, 2, (tasks, n * (n - 1)))
    theirs = ref.reference_losses(model, trajectories, structures)
    ours = gnn.anchored_losses(lib, trajectories, structures, rollout_steps=ref.STEPS)
    torch.testing.assert_close(theirs.detach(), ours.detach(), rtol=1e-5, atol=1e-7)


def test_reference_round_trains_and_keeps_valid_structures():
    import nri_ray.config as C

    cfg = C.Config.from_dict(C.merge(C.preset("paper"), {"model": {"edge_hidden": [16, 16], "node_hidden": [16, 16]}}))
    rs = np.random.default_rng(0)
    trajectories = rs.standard_normal((8, 49, 5, 4)).astype(np.float32)
    labels = rs.integers(0, 2, (8, 20))
    bench = ref.Reference(trajectories, labels, cfg)
    before = [p.detach().clone() for p in bench.model.library.parameters()]
    enc_before = [p.detach().clone() for p in bench.model.encoder.parameters()]
    bench.round(np.arange(8), temperature=1e9)  # every proposal accepted: the encoder trains too
    after = list(bench.model.library.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, bench.model.encoder.parameters()))
    for s in bench.structures:
        assert len(s["edge_idx_inv"]) == 20 and set(s["edge_idx_inv"]) <= {0, 1}
        assert sorted(sum(s["edge_idx"], [])) == list(range(20))
