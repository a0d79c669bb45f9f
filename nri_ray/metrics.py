"""Edge accuracy up to module relabeling, and prediction MSE per horizon.

Modules are unsupervised: module 0 may mean "spring" in one run and "no spring" in another. Edge
accuracy is therefore computed after the best *global* matching of module labels to relation
types (one matching for the whole split, never one per task, which would inflate accuracy;
DATA.md A4), from the confusion matrix C[module, relation]:

- K <= R: the best injective matching (a permutation when K = R; for K = R = 2 this is the
  usual max(acc, 1 - acc)); found exhaustively, K is small.
- K > R: every module is mapped to the relation it most often sits on (several modules may
  share a relation type; that is the best mapping from module labels to relation types).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch


def confusion(structures: np.ndarray, labels: np.ndarray, num_modules: int, num_relations: int = 2) -> np.ndarray:
    """`[modules, relations]` counts over all tasks and edges."""
    s = np.asarray(structures, np.int64).reshape(-1)
    r = np.asarray(labels, np.int64).reshape(-1)
    return np.bincount(s * num_relations + r, minlength=num_modules * num_relations).reshape(num_modules, num_relations)


def best_matching(conf: np.ndarray) -> np.ndarray:
    """`[modules]` the relation type each module label is matched to (see module doc)."""
    conf = np.asarray(conf)
    k, r = conf.shape
    if k > r:
        return conf.argmax(axis=1)
    return np.array(max(itertools.permutations(range(r), k), key=lambda perm: sum(conf[m, rel] for m, rel in enumerate(perm))))


def matched_accuracy(conf: np.ndarray) -> float:
    """Edge accuracy under the best global matching of modules to relations (see module doc)."""
    conf = np.asarray(conf)
    total = conf.sum()
    if total == 0:
        return float("nan")
    return float(conf[np.arange(conf.shape[0]), best_matching(conf)].sum() / total)


def edge_accuracy(structures, labels, num_modules: int, num_relations: int = 2) -> float:
    return matched_accuracy(confusion(structures, labels, num_modules, num_relations))


def inference_accuracies(inference, labels, num_modules: int, prefix: str = "") -> dict:
    """`{prefix}edge_accuracy` of the inferred and `{prefix}proposal_accuracy` of the proposal
    network's structures (labels only score); empty without labels (an unlabeled dataset)."""
    if labels is None:
        return {}
    return {f"{prefix}edge_accuracy": edge_accuracy(inference.structures.cpu().numpy(), labels, num_modules),
            f"{prefix}proposal_accuracy": edge_accuracy(inference.proposal_structures.cpu().numpy(), labels, num_modules)}


def horizon_mse(pred: torch.Tensor, target: torch.Tensor, horizons=(1, 10, 20)) -> dict[str, float]:
    """MSE at each horizon h (1-based), over tasks, nodes and dims (NRI's mse[h-1]).

    Args:
        pred, target: `[tasks, steps, nodes, dims]`.
    """
    per_step = ((pred - target) ** 2).mean(dim=(0, 2, 3))  # [steps]
    return {str(h): float(per_step[h - 1]) for h in horizons if h <= per_step.numel()}
