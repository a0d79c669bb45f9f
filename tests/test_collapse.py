"""Module collapse: the module lr ramp after the full-graph warm-up keeps every edge module in use.

The mechanism (docs/RESULTS.md, module collapse): the warm-up trains only edge module 0, so module
1 meets Adam with no history when search starts. Adam's first steps move every weight by about the
learning rate whatever the gradient's size, which for a module that init_spread left near zero
multiplies its messages by 10 or more; if no edge prefers it after that step, it never gets a
gradient again, momentum carries it further away, and every edge ends on module 0.
"""
import json

import numpy as np
import pytest

from nri_ray import config as C
from nri_ray.cli import main
from nri_ray.config import GenerateConfig
from nri_ray.datagen import generate
from nri_ray.server import ParameterServer, lr_ramp
from nri_ray.shard import ShardWorker
from nri_ray.weights import flatten_params


def test_lr_ramp_rises_linearly_over_the_rounds_after_the_warmup():
    train = C.TrainConfig(warmup_rounds=100, lr_ramp_rounds=4)
    assert [lr_ramp(train, r) for r in (0, 99, 100, 101, 102, 103, 104, 2000)] == [1, 1, 0.25, 0.5, 0.75, 1, 1, 1]
    assert lr_ramp(C.TrainConfig(warmup_rounds=100), 100) == 1.0  # 0 rounds: no ramp
    assert lr_ramp(C.TrainConfig(lr_ramp_rounds=2), 0) == 0.5  # no warm-up: the ramp starts at round 0


def test_ramped_step_is_that_fraction_of_the_full_step_and_the_schedule_is_kept(tiny_dataset):
    """Adam's step is proportional to its lr, so the first searched round moves the modules by
    exactly 1/N of the unramped step; the optimizer's own (plateau-scheduled) lr is untouched."""
    cfgs = [C.Config.from_dict(C.merge(C.preset("small"), {"train": {"warmup_rounds": 2, "lr_ramp_rounds": n,
                                                                      "meta_batch_size": 8}}))
            for n in (0, 8)]
    moved = []
    for cfg in cfgs:
        shard = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
        server = ParameterServer(cfg, 4, shard.trajectories.shape[1])
        before = flatten_params(server.lib)
        _, gradients = shard.step(server.weights(), 2, np.arange(8), 0.0)  # round 2: the first searched one
        weights, applied = server.apply(2, gradients)
        moved.append(np.abs(weights.modules - before))
        assert applied.lr == cfg.train.lr == server.opt_modules.param_groups[0]["lr"]
    np.testing.assert_allclose(moved[1], moved[0] / 8, rtol=1e-4, atol=1e-9)
    assert moved[0].max() > 1e-3  # the step is real


@pytest.fixture(scope="module")
def springs200(tmp_path_factory):
    out = tmp_path_factory.mktemp("springs200") / "d"
    generate(GenerateConfig(num_train=200, num_valid=100, num_test=10, seed=11, workers=1), out, progress=False)
    return out


@pytest.mark.slow
def test_without_the_ramp_one_module_takes_every_edge_and_with_it_both_stay(tmp_path, springs200):
    """The small preset at 3x its lr (a 3x larger first Adam step on module 1) collapses at this
    size on every train seed tried (0-3, docs/RESULTS.md); the ramp keeps both modules in use.
    Checked on the label-free module shares of the meta-valid structures the run infers."""
    shares = {}
    for ramp in (0, 100):
        run_dir = tmp_path / f"ramp{ramp}"
        assert main(["train", "--data", str(springs200), "--out", str(run_dir), "--preset", "small",
                     "--lr", "3e-2", "--lr-ramp-rounds", str(ramp), "--rounds", "160", "--eval-every", "160",
                     "--eval-tasks", "100", "--seed", "0", "--backend", "local", "--quiet"]) == 0
        shares[ramp] = json.loads((run_dir / "summary.json").read_text())["valid_module_share"]
    assert min(shares[0]) < 0.01, shares  # collapsed: every edge on one module
    assert min(shares[100]) > 0.2, shares  # both modules carry a real share of the edges
