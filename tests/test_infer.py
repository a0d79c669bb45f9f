"""Meta-test inference helpers: the label-free health signal."""
import pytest
import torch


def test_health_ratio_is_one_when_the_modules_are_alike_and_below_one_when_structure_helps():
    """Label-free health: inferred-structure loss over the best single-module loss."""
    from nri_ray.engine import losses
    from nri_ray.infer import structure_health
    from nri_ray.modules import ModuleLibrary
    from nri_ray.train import health_warning

    g = torch.Generator().manual_seed(0)
    lib = ModuleLibrary(2, 4, [16, 16], [16], seed=0, init_spread=0.3)
    traj = torch.randn(7, 12, 5, 4, generator=g) * 0.3
    structures = torch.randint(0, 2, (7, 20), generator=g)
    with torch.no_grad():
        for w, b in zip(lib.edges.weights, lib.edges.biases):  # module 1 := module 0
            w[1], b[1] = w[0], b[0]
    health = structure_health(lib, traj, losses(lib, traj, structures, 4), 4)
    assert health["health_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert "have not separated" in health_warning(health) and health_warning({"health_ratio": 0.02}) is None
    # the best single-module structure is the minimum over modules: a structure that is better still scores < 1
    lib2 = ModuleLibrary(2, 4, [16, 16], [16], seed=0, init_spread=0.3)
    single = [float(losses(lib2, traj, torch.full((7, 20), k), 4).mean()) for k in range(2)]
    best_per_task = torch.minimum(*(losses(lib2, traj, torch.full((7, 20), k), 4) for k in range(2)))
    health = structure_health(lib2, traj, best_per_task, 4)
    assert health["single_module_loss"] == pytest.approx(min(single), rel=1e-6) and health["health_ratio"] <= 1 + 1e-6
