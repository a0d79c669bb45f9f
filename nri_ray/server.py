"""ParameterServer: owns module and proposal weights and both optimizers; pools shard reports.

Weights go down as two flat float32 numpy vectors (modules, proposal network); gradient reports
come up as flat vectors holding the *sum* over each shard's tasks of the per-task loss gradient.
Pooling is a task-weighted mean: sum over shards (in shard order, accumulated in float64) divided
by the total number of tasks, which equals the single-process gradient of the mean loss. The
proposal network's gradient is clipped after pooling. Only this class owns optimizers.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .config import Config
from .modules import ModuleLibrary
from .proposal import ProposalNet


def flatten_params(module: nn.Module) -> np.ndarray:
    """All parameters of `module`, in `parameters()` order, as one float32 vector."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()]).numpy().astype(np.float32)


def flatten_grads(module: nn.Module) -> np.ndarray:
    """All gradients (zeros where none), in `parameters()` order, as one float32 vector."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).cpu()
                      for p in module.parameters()]).numpy().astype(np.float32)


def unflatten_into(module: nn.Module, flat: np.ndarray, attr: str = "data") -> None:
    """Copy a flat vector into the parameters (attr='data') or their gradients (attr='grad')."""
    flat_t = torch.from_numpy(np.array(flat, dtype=np.float32))  # a writable copy (Ray hands out read-only arrays)
    offset = 0
    for p in module.parameters():
        n = p.numel()
        chunk = flat_t[offset:offset + n].view_as(p).to(p.device)
        if attr == "data":
            p.data.copy_(chunk)
        else:
            p.grad = chunk.clone()
        offset += n
    if offset != flat_t.numel():
        raise ValueError(f"flat vector has {flat_t.numel()} values, the module {offset}")


def pool_gradients(grads: Sequence[np.ndarray], tasks: Sequence[int]) -> np.ndarray:
    """Task-weighted mean of per-shard gradient sums: sum(grads) / sum(tasks), float64 accumulation."""
    total = np.zeros_like(grads[0], dtype=np.float64)
    for g in grads:
        total += g
    return (total / max(1, sum(tasks))).astype(np.float32)


class Weights(NamedTuple):
    """What shards receive each round."""

    modules: np.ndarray
    proposal: np.ndarray


def build_models(cfg: Config, dims: int, in_frames: int) -> tuple[ModuleLibrary, ProposalNet]:
    """Module library and proposal network, initialized from the run's seed."""
    lib = ModuleLibrary(cfg.model.edge_modules, dims, cfg.model.edge_widths, cfg.model.node_widths,
                        seed=cfg.train.seed, init_spread=cfg.model.init_spread)
    proposer = ProposalNet(in_frames, dims, cfg.proposal.proposal_hidden, cfg.model.edge_modules,
                           seed=cfg.train.seed + 1)
    return lib, proposer


class ParameterServer:
    """Owns weights and optimizers. `apply(reports)` pools, steps and returns the new weights."""

    def __init__(self, cfg: Config, dims: int, in_frames: int):
        self.cfg = cfg
        self.lib, self.proposer = build_models(cfg, dims, in_frames)
        self.opt_modules = torch.optim.Adam(self.lib.parameters(), lr=cfg.train.lr)
        self.opt_proposal = torch.optim.Adam(self.proposer.parameters(), lr=cfg.proposal.proposal_lr)
        self.best_metric = float("inf")
        self.bad_evals = 0

    def weights(self) -> Weights:
        return Weights(flatten_params(self.lib), flatten_params(self.proposer))

    def apply(self, reports) -> Weights:
        reports = sorted(reports, key=lambda r: r.shard_id)
        tasks = [r.tasks for r in reports]
        unflatten_into(self.lib, pool_gradients([r.module_grad for r in reports], tasks), "grad")
        self.opt_modules.step()
        if self.cfg.proposal.proposal == "learned":
            unflatten_into(self.proposer, pool_gradients([r.proposal_grad for r in reports], tasks), "grad")
            if self.cfg.proposal.proposal_clip > 0:
                nn.utils.clip_grad_norm_(self.proposer.parameters(), self.cfg.proposal.proposal_clip)
            self.opt_proposal.step()
        return self.weights()

    def lr(self) -> float:
        return float(self.opt_modules.param_groups[0]["lr"])

    def apply_with_state(self, reports) -> tuple[Weights, dict]:
        """`apply`, plus the whole state afterwards (the driver keeps it to restore a lost server)."""
        return self.apply(reports), self.state_dict()

    def observe(self, metric: float) -> None:
        """Plateau schedule: halve the module lr after `plateau_patience` evaluations without improvement."""
        patience = self.cfg.train.plateau_patience
        if not patience:
            return
        if metric < self.best_metric:
            self.best_metric, self.bad_evals = metric, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= patience:
            for group in self.opt_modules.param_groups:
                group["lr"] = max(self.cfg.train.min_lr, group["lr"] * 0.5)
            self.bad_evals = 0

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
