"""Simulated annealing over structures: a vectorized Metropolis step and temperature schedules.

The step knows nothing about where proposals come from. Acceptance (REFERENCE.md 3.3):
accept where L_new <= L_old, or U < exp((L_old - L_new) / T). Temperatures are in units of
the loss; schedules are small functions of the round number and the acceptance statistics.

Schedules:
- `constant`: T = T0.
- `geometric`: T = T0 * decay ** round.
- `adaptive`: keeps the acceptance ratio of *worse* proposals near a target that decays over
  rounds, target(r) = target0 * exp(-r / target_decay_rounds): T is multiplied by `factor` when
  the (exponentially averaged, fixed rate) ratio is below the target, divided otherwise. The
  authors' controller averaged with a rate of min(0.01, ratio), which freezes once the ratio is
  small and turns SA greedy (REFERENCE.md 3.4, 8.9); a fixed rate does not freeze.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .config import AnnealConfig


class AnnealStep(NamedTuple):
    """Result of one Metropolis step for a batch of tasks.

    Shape: structures `[tasks, edges]`, losses `[tasks]`, accepted `[tasks]` bool, worse `[tasks]`
    bool (the proposal was strictly worse than the current structure).
    """

    structures: torch.Tensor
    losses: torch.Tensor
    accepted: torch.Tensor
    worse: torch.Tensor


def anneal_step(current: torch.Tensor, loss: torch.Tensor, proposed: torch.Tensor, proposed_loss: torch.Tensor,
                temperature: float, uniforms: torch.Tensor) -> AnnealStep:
    """Metropolis acceptance, per task.

    Args:
        current, proposed: `[tasks, edges]` structures.
        loss, proposed_loss: `[tasks]` losses of each.
        temperature: T >= 0 (0 is greedy; inf accepts everything).
        uniforms: `[tasks]` U(0, 1) draws.
    """
    delta = (loss - proposed_loss).to(torch.float64)  # > 0 means the proposal is better
    if temperature == 0:
        metropolis = torch.zeros_like(delta, dtype=torch.bool)
    else:
        metropolis = uniforms < torch.exp(delta / temperature)
    accepted = (proposed_loss <= loss) | metropolis
    structures = torch.where(accepted.unsqueeze(1), proposed, current)
    losses = torch.where(accepted, proposed_loss, loss)
    return AnnealStep(structures, losses, accepted, proposed_loss > loss)


class TemperatureState(NamedTuple):
    """What a schedule carries from round to round (checkpointed)."""

    temperature: float
    worse_accept_ratio: float  # running estimate of accepted / proposed among worse proposals


def initial_state(t0: float) -> TemperatureState:
    return TemperatureState(float(t0), 1.0)


def next_temperature(state: TemperatureState, round_idx: int, worse: int, worse_accepted: int,
                     cfg: AnnealConfig) -> TemperatureState:
    """The temperature for round `round_idx + 1`, given round `round_idx`'s worse-proposal counts."""
    ratio = state.worse_accept_ratio
    if worse > 0:
        ratio = (1 - cfg.ratio_rate) * ratio + cfg.ratio_rate * (worse_accepted / worse)
    if cfg.schedule == "constant":
        return TemperatureState(cfg.t0, ratio)
    if cfg.schedule == "geometric":
        return TemperatureState(max(cfg.t_min, cfg.t0 * cfg.temp_decay ** (round_idx + 1)), ratio)
    target = cfg.target0 * math.exp(-(round_idx + 1) / cfg.target_decay_rounds)
    t = state.temperature * cfg.temp_factor if ratio < target else state.temperature / cfg.temp_factor
    return TemperatureState(min(cfg.t_max, max(cfg.t_min, t)), ratio)
