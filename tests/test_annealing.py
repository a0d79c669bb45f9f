"""Metropolis acceptance and temperature schedules."""
import math

import torch

from nri_ray.annealing import anneal_step, initial_state, next_temperature
from nri_ray.config import AnnealConfig


def _batch():
    current = torch.zeros(6, 4, dtype=torch.long)
    proposed = torch.ones(6, 4, dtype=torch.long)
    loss = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    new = torch.tensor([0.5, 1.0, 1.5, 2.0, 10.0, 0.9])
    return current, loss, proposed, new, torch.full((6,), 0.5)


def test_zero_temperature_is_greedy():
    current, loss, proposed, new, u = _batch()
    step = anneal_step(current, loss, proposed, new, 0.0, u)
    assert step.accepted.tolist() == [True, True, False, False, False, True]
    torch.testing.assert_close(step.losses, torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0, 0.9]))
    assert step.worse.tolist() == [False, False, True, True, True, False]
    assert (step.structures[0] == 1).all() and (step.structures[2] == 0).all()


def test_tiny_temperature_is_greedy_and_infinite_accepts_all():
    current, loss, proposed, new, u = _batch()
    assert anneal_step(current, loss, proposed, new, 1e-12, u).accepted.tolist() == [True, True, False, False, False, True]
    assert anneal_step(current, loss, proposed, new, math.inf, u).accepted.all()


def test_metropolis_probability():
    n = 20000
    loss, new = torch.zeros(n), torch.full((n,), 1.0)
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    step = anneal_step(torch.zeros(n, 1), loss, torch.ones(n, 1), new, 2.0, u)
    assert abs(step.accepted.double().mean().item() - math.exp(-0.5)) < 0.015


def test_adaptive_schedule_heats_when_too_few_worse_moves_are_accepted():
    cfg = AnnealConfig(schedule="adaptive", t0=1e-3, target0=0.5, ratio_rate=1.0)
    state = initial_state(cfg.t0)
    hotter = next_temperature(state, 0, worse=10, worse_accepted=0, cfg=cfg)
    assert hotter.temperature > state.temperature and hotter.worse_accept_ratio == 0.0
    colder = next_temperature(state, 0, worse=10, worse_accepted=10, cfg=cfg)
    assert colder.temperature < state.temperature


def test_geometric_and_constant():
    geo = AnnealConfig(schedule="geometric", t0=1.0, temp_decay=0.5, t_min=0.0)
    assert next_temperature(initial_state(1.0), 2, 0, 0, geo).temperature == 0.125
    const = AnnealConfig(schedule="constant", t0=0.3)
    assert next_temperature(initial_state(0.3), 50, 5, 0, const).temperature == 0.3
