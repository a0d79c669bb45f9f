"""ParameterServer: owns module and proposal weights and both optimizers; pools shard gradients.

Pooling is a task-weighted mean: the shards' gradient sums added in shard order (float64) and
divided by the total number of tasks, which equals the single-process gradient of the mean loss.
The proposal network's gradient is clipped after pooling. A pooled gradient that is not finite
is not applied: `apply` says so and the weights stay as they were. Only this class owns
optimizers. The wire format (flat vectors, `Weights`, `Gradients`) is weights.py's.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .config import Config
from .weights import Gradients, Models, Weights, build_models, flatten_params, pool_gradients, unflatten_into


class Applied(NamedTuple):
    """The small part of a server step that the driver reads."""

    finite: bool  # False: the pooled gradient had a NaN or inf and was not applied
    lr: float  # the module learning rate now


def lr_ramp(train, round_idx: int) -> float:
    """Factor on the module lr in round `round_idx`: (r + 1) / N in the first N = `lr_ramp_rounds`
    searched rounds r = 0 .. N-1 (counted from the end of the warm-up), 1 otherwise.

    Why: Adam divides each weight's step by the root of its own squared-gradient average, so an
    edge module's first steps move every one of its weights by about lr, whatever the gradient's
    size. After a full-graph warm-up (module 0 on every edge) the other modules have had no
    gradient yet and still hold their small initial outputs: one full-lr step multiplies module
    1's messages by 9-15 on springs, and on some seeds that one step sends it where no structure
    uses it again, so it never gets another gradient (docs/RESULTS.md, module collapse).
    """
    ramp, searched = train.lr_ramp_rounds, round_idx - train.warmup_rounds
    if not ramp or searched < 0 or searched >= ramp:
        return 1.0
    return (searched + 1) / ramp


class ParameterServer:
    """Owns weights and optimizers. `apply(gradients)` pools, steps and returns the new weights."""

    def __init__(self, cfg: Config, dims: int, in_frames: int):
        self.cfg = cfg
        self.lib, self.proposer = build_models(cfg, dims, in_frames)
        self.opt_modules = torch.optim.Adam(self.lib.parameters(), lr=cfg.train.lr)
        self.opt_proposal = torch.optim.Adam(self.proposer.parameters(), lr=cfg.proposal.proposal_lr)
        self.best_metric = float("inf")
        self.bad_evals = 0

    def weights(self) -> Weights:
        return Weights(flatten_params(self.lib), flatten_params(self.proposer))

    def models(self):
        """(module library, proposal network) with the current weights, for evaluation."""
        return Models(self.lib, self.proposer)

    def apply(self, round_idx: int, *gradients: Gradients) -> tuple[Weights, Applied]:
        """Pool round `round_idx`'s gradients and step both optimizers (the module lr scaled by
        `lr_ramp`)."""
        gradients = sorted(gradients, key=lambda g: g.shard_id)
        tasks = [g.tasks for g in gradients]
        modules = pool_gradients([g.modules for g in gradients], tasks)
        learned = self.cfg.proposal.proposal == "learned"
        proposal = pool_gradients([g.proposal for g in gradients], tasks) if learned else None
        if not (np.isfinite(modules).all() and (proposal is None or np.isfinite(proposal).all())):
            return self.weights(), Applied(False, self.lr())
        unflatten_into(self.lib, modules, "grad")
        factor = lr_ramp(self.cfg.train, round_idx)
        scheduled = [group["lr"] for group in self.opt_modules.param_groups]  # the plateau schedule's rates
        for group, lr in zip(self.opt_modules.param_groups, scheduled):
            group["lr"] = lr * factor
        self.opt_modules.step()
        for group, lr in zip(self.opt_modules.param_groups, scheduled):
            group["lr"] = lr
        if learned:
            unflatten_into(self.proposer, proposal, "grad")
            if self.cfg.proposal.proposal_clip > 0:
                nn.utils.clip_grad_norm_(self.proposer.parameters(), self.cfg.proposal.proposal_clip)
            self.opt_proposal.step()
        return self.weights(), Applied(True, self.lr())

    def apply_with_state(self, round_idx: int, *gradients: Gradients) -> tuple[Weights, dict, Applied]:
        """`apply`, plus the whole state afterwards (kept in the object store to restore a lost server)."""
        weights, applied = self.apply(round_idx, *gradients)
        return weights, self.state_dict(), applied

    def lr(self) -> float:
        return float(self.opt_modules.param_groups[0]["lr"])

    def observe(self, metric: float) -> float:
        """Plateau schedule: halve the module lr after `plateau_patience` evaluations without
        improvement. Returns the lr."""
        patience = self.cfg.train.plateau_patience
        if not patience:
            return self.lr()
        if metric < self.best_metric:
            self.best_metric, self.bad_evals = metric, 0
            return self.lr()
        self.bad_evals += 1
        if self.bad_evals >= patience:
            for group in self.opt_modules.param_groups:
                group["lr"] = max(self.cfg.train.min_lr, group["lr"] * 0.5)
            self.bad_evals = 0
        return self.lr()

    def observe_with_state(self, metric: float) -> tuple[dict, float]:
        lr = self.observe(metric)
        return self.state_dict(), lr

    def state_dict(self) -> dict:
        return {"modules": self.lib.state_dict(), "proposal": self.proposer.state_dict(),
                "opt_modules": self.opt_modules.state_dict(), "opt_proposal": self.opt_proposal.state_dict(),
                "plateau": {"best": self.best_metric, "bad": self.bad_evals}}

    def load_state_dict(self, state: dict) -> None:
        self.lib.load_state_dict(state["modules"])
        self.proposer.load_state_dict(state["proposal"])
        self.opt_modules.load_state_dict(state["opt_modules"])
        self.opt_proposal.load_state_dict(state["opt_proposal"])
        self.best_metric = float(state["plateau"]["best"])
        self.bad_evals = int(state["plateau"]["bad"])
