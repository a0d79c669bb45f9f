"""PNG plots of a run: training curves, one system's true vs predicted trajectories, graphs.

Uses matplotlib's Agg backend (no display needed). Every figure is written atomically.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def training_curves(metrics_path: Path, out: Path) -> Path | None:
    """Loss, accuracies, acceptance and temperature against rounds, from metrics.jsonl."""
    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines() if x.strip()]
    if not rows:
        return None
    r = [row["round"] for row in rows]
    fig, axes = _figure(2, 2, figsize=(10, 7))
    axes[0, 0].semilogy(r, [row["grad_loss"] for row in rows], label="train loss (batch)")
    axes[0, 0].semilogy(r, [row["valid_loss"] for row in rows], label="meta-valid SA loss")
    for key, label in (("valid_edge_accuracy", "meta-valid edge accuracy (SA)"),
                       ("valid_proposal_accuracy", "meta-valid proposal accuracy"),
                       ("batch_edge_accuracy", "meta-train structures")):
        if all(key in row for row in rows):  # unlabeled data has no accuracies
            axes[0, 1].plot(r, [row[key] for row in rows], label=label)
    if not all("valid_edge_accuracy" in row for row in rows):  # the label-free signal in their place
        axes[0, 1].semilogy(r, [row["health_ratio"] for row in rows], label="health ratio (label-free)")
    axes[1, 0].plot(r, [row["accept_rate"] for row in rows], label="all proposals")
    axes[1, 0].plot(r, [row["worse_accept_rate"] for row in rows], label="worse proposals")
    temps = [row["temperature"] for row in rows]
    if min(temps) > 0:
        axes[1, 1].semilogy(r, temps, label="temperature")
    else:  # greedy (T = 0) for at least part of the run: a log axis cannot show it
        axes[1, 1].plot(r, temps, label="temperature")
    titles = ["loss", "edge accuracy" if all("valid_edge_accuracy" in row for row in rows) else "structure health",
              "acceptance rate", "temperature"]
    for ax, title in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def _plane(states: np.ndarray, first_frame: int = 0) -> np.ndarray:
    """`[frames, ..., dims]` -> `[frames, ..., 2]` plot coordinates: the first two state dimensions,
    or (frame, value) for data with one dimension."""
    if states.shape[-1] >= 2:
        return states[..., :2]
    frames = np.arange(first_frame, first_frame + len(states), dtype=np.float64)
    frames = np.broadcast_to(frames.reshape((-1,) + (1,) * (states.ndim - 2)), states.shape[:-1])
    return np.stack([frames, states[..., 0]], axis=-1)


def trajectory(true: np.ndarray, pred: np.ndarray, out: Path, title: str = "") -> Path:
    """Positions of one system: observed frames, then true vs predicted future.

    The first two state dimensions are plotted against each other (x, y for particles); data
    with one dimension is plotted against the frame.

    Args:
        true: `[time, nodes, dims]` ground truth (observed + future); pred: `[steps, nodes, dims]`,
            the predicted last `steps` frames.
    """
    fig, ax = _figure(figsize=(6, 6))
    steps = pred.shape[0]
    flat = true.shape[-1] == 1
    true, pred = _plane(true), _plane(pred, first_frame=len(true) - steps)
    for node in range(true.shape[1]):
        color = f"C{node}"
        ax.plot(true[:-steps, node, 0], true[:-steps, node, 1], color=color, alpha=0.3)
        ax.plot(true[-steps - 1:, node, 0], true[-steps - 1:, node, 1], color=color, label=f"true {node}" if node == 0 else None)
        ax.plot(pred[:, node, 0], pred[:, node, 1], "--", color=color, label="predicted" if node == 0 else None)
    ax.set_title(title or "true (solid) vs predicted (dashed) positions")
    ax.set_aspect("equal" if not flat else "auto")
    ax.legend(fontsize=8)
    return _save(fig, out)


def graphs(true_edges: np.ndarray | None, inferred_edges: np.ndarray, n_nodes: int, out: Path) -> Path:
    """True relation labels (if any) vs inferred modules of one system, as n x n matrices."""
    from .graph import edges_to_matrix

    panels = ([(true_edges, "true relations")] if true_edges is not None else []) + [(inferred_edges, "inferred modules")]
    fig, axes = _figure(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (edges, title) in zip(axes[0], panels):
        ax.imshow(edges_to_matrix(np.asarray(edges, np.float64), n_nodes, np.nan), cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("receiver")
        ax.set_ylabel("sender")
    return _save(fig, out)


def data_efficiency(points: dict, out: Path, title: str = "") -> Path:
    """Edge accuracy (%) against meta-train tasks (log x), one line per method."""
    fig, ax = _figure(figsize=(5.5, 4))
    for method, rows in points.items():  # mean over seeds, bars from the worst to the best seed
        x, y = [p["train_tasks"] for p in rows], [100 * p["edge_accuracy"] for p in rows]
        low = [100 * (p["edge_accuracy"] - p["edge_accuracy_min"]) for p in rows]
        high = [100 * (p["edge_accuracy_max"] - p["edge_accuracy"]) for p in rows]
        ax.errorbar(x, y, yerr=[low, high], fmt="o-", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("meta-train tasks")
    ax.set_ylabel("edge accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    return _save(fig, out)


def seed_curves(curves: dict[str, list[dict]], out: Path) -> Path:
    """Meta-valid edge accuracy and the label-free health ratio against round, one line per seed pair."""
    fig, (acc, health) = _figure(1, 2, figsize=(11, 4.2))
    for i, (name, rows) in enumerate(sorted(curves.items())):
        r = [row["round"] for row in rows]
        style = {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--", "lw": 1.2}
        if all("valid_edge_accuracy" in row for row in rows):
            acc.plot(r, [100 * row["valid_edge_accuracy"] for row in rows], label=name, **style)
        if all("health_ratio" in row for row in rows):
            health.semilogy(r, [row["health_ratio"] for row in rows], label=name, **style)
    acc.set_title("meta-valid edge accuracy (%)")
    health.set_title("health ratio: inferred / best single-module loss (label-free)")
    for ax in (acc, health):
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7, title="data:train seed", title_fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, out)


def find_node(observed: np.ndarray, recovered: np.ndarray, hidden: int, out: Path, title: str = "") -> Path:
    """Figure-4 style: the visible particles' paths, the hidden particle's true and recovered paths.

    Args:
        observed: `[frames, nodes, dims]` (all particles, including the true hidden one).
        recovered: `[frames, dims]` the recovered hidden particle.
    """
    fig, ax = _figure(figsize=(5, 5))
    observed, recovered = _plane(observed), _plane(recovered)
    for j in range(observed.shape[1]):
        if j != hidden:
            ax.plot(observed[:, j, 0], observed[:, j, 1], color="0.6", lw=1)
            ax.plot(observed[0, j, 0], observed[0, j, 1], "o", color="0.6", ms=4)
    ax.plot(observed[:, hidden, 0], observed[:, hidden, 1], "-", color="C3", lw=2, label="hidden (true)")
    ax.plot(recovered[:, 0], recovered[:, 1], "--", color="C0", lw=2, label="recovered")
    ax.plot(observed[0, hidden, 0], observed[0, hidden, 1], "o", color="C3", ms=6)
    ax.plot(recovered[0, 0], recovered[0, 1], "x", color="C0", ms=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, out)
