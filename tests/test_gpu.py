"""GPU checks: skipped where no CUDA device is present (CI has none)."""
import pytest
import torch

from nri_ray.gnn import anchored_losses
from nri_ray.modules import ModuleLibrary

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_rollout_matches_cpu():
    lib = ModuleLibrary(3, 4, [32, 32], [32], seed=0)
    traj = torch.randn(16, 21, 5, 4) * 0.5
    structures = torch.randint(0, 3, (16, 20))
    with torch.no_grad():
        cpu = anchored_losses(lib, traj, structures, 10)
        gpu = anchored_losses(lib.cuda(), traj.cuda(), structures.cuda(), 10).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=2e-3, atol=1e-6)


def test_short_training_on_cuda(tmp_path, tiny_dataset):
    from nri_ray import config as C
    from nri_ray.train import run

    cfg = C.Config.from_dict({"model": {"edge_hidden": [16, 16], "node_hidden": [16], "rollout": 4},
                              "proposal": {"proposal_hidden": 16},
                              "train": {"rounds": 4, "meta_batch_size": 8, "eval_every": 2, "eval_tasks": 8,
                                        "eval_sa_steps": 2, "device": "cuda", "num_shards": 2},
                              "cluster": {"backend": "local"}})
    result = run(cfg, tiny_dataset, tmp_path / "r", progress=False)
    assert 0 <= result.summary["valid_edge_accuracy"] <= 1


def test_cuda_tape_gradient_matches_autograd():
    from nri_ray.engine import Tape, Workspace

    lib = ModuleLibrary(3, 4, [32, 32], [32], seed=0).double().cuda()
    traj = (torch.randn(6, 49, 5, 4, dtype=torch.float64) * 0.5).cuda()
    current, proposed = torch.randint(0, 3, (2, 6, 20)).cuda()
    rows = torch.arange(6, device="cuda")
    tape = Tape(lib, 5, 49, 10, Workspace(torch.device("cuda"), torch.float64))
    tape.reset(12)
    tape.record(traj, torch.cat([current, proposed]), torch.cat([rows, rows]))
    kept = torch.where((rows % 2 == 0).unsqueeze(1), current, proposed)
    tape.backward(traj, kept, torch.zeros_like(rows), torch.where(rows % 2 == 0, rows, rows + 6))
    engine = [p.grad.clone() for p in lib.parameters()]
    lib.zero_grad(set_to_none=True)
    anchored_losses(lib, traj, kept, 10).sum().backward()
    for got, p in zip(engine, lib.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-9, atol=1e-12)
