"""The weight wire format: what travels between the parameter server and the shards.

Weights go down as two flat float32 numpy vectors (modules, proposal network); gradients come up
as a `Gradients` holding the *sum* over a shard's tasks of the per-task loss gradient, flat in the
same order. `build_models` makes the models these vectors belong to, from the run's config and
seed, so every process that builds them agrees on the layout. This module imports no ray.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from .config import Config
from .modules import ModuleLibrary
from .proposal import ProposalNet


class Weights(NamedTuple):
    """What shards receive each round."""

    modules: np.ndarray  # [module parameters] float32
    proposal: np.ndarray  # [proposal-network parameters] float32


class Models(NamedTuple):
    """A run's two models."""

    lib: ModuleLibrary  # one node module, K edge modules
    proposer: ProposalNet


class Gradients(NamedTuple):
    """What a shard sends to the server each round: gradient sums over its `tasks` tasks."""

    shard_id: int
    tasks: int
    modules: np.ndarray  # sum over tasks of d(loss_task)/d(module weights), float32
    proposal: np.ndarray  # sum over tasks of d(proposal_loss_task)/d(proposal weights), float32


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


def load_weights(lib: nn.Module, proposer: nn.Module, weights: Weights) -> None:
    """Set both models' parameters from a `Weights`."""
    unflatten_into(lib, weights.modules)
    unflatten_into(proposer, weights.proposal)


def pool_gradients(grads: Sequence[np.ndarray], tasks: Sequence[int]) -> np.ndarray:
    """Task-weighted mean of per-shard gradient sums: sum(grads) / sum(tasks), float64 accumulation."""
    total = np.zeros_like(grads[0], dtype=np.float64)
    for g in grads:
        total += g
    return (total / max(1, sum(tasks))).astype(np.float32)


def build_models(cfg: Config, dims: int, in_frames: int, norm: str = "layer") -> Models:
    """Module library and proposal network (its blocks normalized by `norm`), initialized from the run's seed."""
    lib = ModuleLibrary(cfg.model.edge_modules, dims, cfg.model.edge_widths, cfg.model.node_widths,
                        seed=cfg.train.seed, init_spread=cfg.model.init_spread,
                        edge_inputs=cfg.model.edge_inputs, loss_delta=cfg.model.loss_delta)
    proposer = ProposalNet(in_frames, dims, cfg.proposal.proposal_hidden, cfg.model.edge_modules,
                           seed=cfg.train.seed + 1, norm=norm)
    return Models(lib, proposer)
