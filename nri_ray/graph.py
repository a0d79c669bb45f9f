"""The shape glossary of nri-ray and the edge index of a fully connected directed graph.

Every tensor in the project keeps one axis order, named in words (never single letters: "T"
would be ambiguous between tasks and time):

- trajectories: `[tasks, time, nodes, dims]` float32 in memory (float64 on disk, raw units);
  dims = 4 for 2-D particles: (x, y, vx, vy).
- edges: the n * (n - 1) directed pairs (sender, receiver), sender-major, self-pairs left out:
  (0, 1), (0, 2), ..., (0, n-1), (1, 0), (1, 2), ... This is the order of the original NRI
  files' off-diagonal entries read row by row (row = sender).
- `senders`, `receivers`: `LongTensor[edges]` (or int64 arrays), the endpoints of each edge.
  Gathered node features are named `x_send` and `x_recv`.
- structures: `[tasks, edges]` int (module index per edge). True relation labels: same shape,
  int8 on disk and in datasets.
- module outputs: `[tasks, edges, hidden]`; node updates `[tasks, nodes, dims]`.

The NRI files store `loc`/`vel` as `[sims, time, 2, balls]` and `edges` as `[sims, balls,
balls]`; `data.py` converts them once, at import and export.
"""
from __future__ import annotations

import numpy as np


def num_edges(n_nodes: int) -> int:
    """Directed edges of the complete graph on n nodes, without self-loops."""
    return n_nodes * (n_nodes - 1)


def edge_index(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """`(senders, receivers)`, each int64 `[edges]`, in sender-major order."""
    senders, receivers = np.nonzero(~np.eye(n_nodes, dtype=bool))  # row-major = sender-major
    return senders.astype(np.int64), receivers.astype(np.int64)


def matrix_to_edges(matrix: np.ndarray) -> np.ndarray:
    """`[..., nodes, nodes]` -> `[..., edges]`: the off-diagonal entries, sender-major."""
    n = matrix.shape[-1]
    senders, receivers = edge_index(n)
    return matrix[..., senders, receivers]


def edges_to_matrix(values: np.ndarray, n_nodes: int, diagonal: float = 0.0) -> np.ndarray:
    """`[..., edges]` -> `[..., nodes, nodes]` with `diagonal` on the diagonal (inverse of above)."""
    senders, receivers = edge_index(n_nodes)
    out = np.full(values.shape[:-1] + (n_nodes, n_nodes), diagonal, dtype=np.float64)
    out[..., senders, receivers] = values
    return out
