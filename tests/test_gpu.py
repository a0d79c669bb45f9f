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

    cfg = C.Config.from_dict({"model": {"edge_hidden": "16,16", "node_hidden": "16", "rollout": 4},
                              "proposal": {"proposal_hidden": 16},
                              "train": {"rounds": 4, "meta_batch_size": 8, "eval_every": 2, "eval_tasks": 8,
                                        "eval_sa_steps": 2, "device": "cuda", "num_shards": 2},
                              "cluster": {"backend": "local"}})
    result = run(cfg, tiny_dataset, tmp_path / "r", progress=False)
    assert 0 <= result.summary["valid_edge_accuracy"] <= 1
