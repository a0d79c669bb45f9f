"""Search spaces, selectable by name (`nri-ray sweep --space NAME`).

A space is a function returning a Tune `param_space` laid out like an nri-ray config: sections
(`model`, `proposal`, `anneal`, `train`) of fields. A section may also be one Tune domain whose
values are whole sub-dicts (a named annealing schedule is several fields that belong together).
Every trial's config is the sweep's base config with its sampled values merged over it.
PBT mutates only `MUTATIONS` (hyper-parameters a resumed run may change, see
nri_ray.train.MUTABLE_ON_RESUME).
"""
from __future__ import annotations

from typing import Callable

from ray import tune

# Named annealing schedules (temperatures in the units of the loss: normalized MSE).
SCHEDULES = {
    "greedy": {"schedule": "constant", "t0": 0.0},
    "geometric": {"schedule": "geometric", "t0": 1e-4, "temp_decay": 0.995, "t_min": 0.0},
    "adaptive": {"schedule": "adaptive", "t0": 5.5e-5, "target0": 0.37, "temp_factor": 1.1},
}


def modules() -> dict:
    """Module library size and widths: K edge modules 2..8, edge/node MLP widths, learning rate."""
    return {"model": {"edge_modules": tune.randint(2, 9),
                      "edge_hidden": tune.choice([[64, 64], [128, 128], [256, 256, 256]]),
                      "node_hidden": tune.choice([[64, 64], [128, 128], [256, 256, 256]])},
            "train": {"lr": tune.loguniform(1e-3, 3e-2)}}


def annealing() -> dict:
    """Annealing schedule kind and its parameters, proposal mixing epsilon."""
    return {"anneal": {"schedule": tune.choice(["constant", "geometric", "adaptive"]),
                       "t0": tune.loguniform(1e-6, 1e-3), "temp_decay": tune.uniform(0.98, 0.999),
                       "target0": tune.uniform(0.1, 0.5)},
            "proposal": {"epsilon": tune.uniform(0.02, 0.3)}}


def optimizer() -> dict:
    """Learning rates and meta-batch size."""
    return {"train": {"lr": tune.loguniform(1e-3, 3e-2), "meta_batch_size": tune.choice([32, 64, 128])},
            "proposal": {"proposal_lr": tune.loguniform(3e-4, 1e-2)}}


def modules_x_schedules() -> dict:
    """A grid: K in {2, 3, 4} edge modules x {greedy, geometric} annealing (6 trials per sample)."""
    return {"model": {"edge_modules": tune.grid_search([2, 3, 4])},
            "anneal": tune.grid_search([SCHEDULES["greedy"], SCHEDULES["geometric"]])}


SPACES: dict[str, Callable[[], dict]] = {"modules": modules, "annealing": annealing, "optimizer": optimizer,
                                         "modules-x-schedules": modules_x_schedules}

# What PBT may perturb when a trial exploits another's checkpoint.
MUTATIONS = {"train": {"lr": tune.loguniform(1e-3, 3e-2)},
             "proposal": {"epsilon": tune.uniform(0.02, 0.3)},
             "anneal": {"temp_factor": tune.uniform(1.02, 1.3), "target0": tune.uniform(0.1, 0.5)}}


def space(name: str) -> dict:
    from nri_ray.errors import ConfigError

    if name not in SPACES:
        raise ConfigError(f"--space: got {name!r}, expected one of {', '.join(SPACES)}")
    return SPACES[name]()
