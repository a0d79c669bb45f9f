"""`nri-ray evaluate`: meta-test inference on new tasks with a trained run's frozen modules.

The NRI protocol (DATA.md A4): structures are inferred from the first `sa_frames` (49) frames
of each task; prediction MSE is measured on one open-loop rollout starting at frame 49, at 1, 10
and 20 steps, in normalized units. Any dataset of the same number of balls and state dims can be
evaluated; it is normalized with the *training run's* constants. On an unlabeled dataset the
accuracies are left out (with a note) and the label-free numbers (health ratio, MSE) remain.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import plots
from .data import Dataset
from .errors import NriRayError
from .infer import infer_for_run, predict, prediction_mse, prediction_start, structure_health
from .io import atomic_write_text
from .metrics import inference_accuracies
from .train import load_run


META_TEST_SA_STEPS = 100  # SA steps per task at meta-test time: `evaluate`, the quick start and the experiments


def evaluate(run_dir: str | Path, data_dir: str | Path, split: str = "test", sa_steps: int | None = None,
             tasks: int = 0, device: str = "auto", plot: bool = True, write: bool = True) -> dict:
    run_dir = Path(run_dir)
    server, cfg, meta, norm = load_run(run_dir, device)
    data, part = read_for_run(data_dir, split, tasks, meta, run_dir)
    count = len(part.task_ids)
    warnings = []
    if meta.get("simulator") and data.sim != meta["simulator"]:
        warnings.append(f"--data {data_dir} is {data.sim} data, the run {run_dir} was trained on {meta['simulator']}: "
                        f"its modules learned other interactions, so these numbers measure a transfer, not the run")
        print(f"warning: {warnings[-1]}", file=sys.stderr, flush=True)
    dev = next(server.lib.parameters()).device
    traj = torch.as_tensor(norm.apply(part.trajectories), device=dev)  # the run's normalization
    ids = torch.as_tensor(np.array(part.task_ids), device=dev)
    sa_frames = check_frames(traj.shape[1], cfg, meta, f"--split {split}")
    steps = META_TEST_SA_STEPS if sa_steps is None else sa_steps
    t0 = time.perf_counter()
    inf = infer_for_run(server.lib, server.proposer, cfg, traj, ids, steps)
    structures = inf.structures.cpu().numpy()
    # Prediction from frame 49 when the trajectory goes on (test split); else the window's end.
    start = prediction_start(traj.shape[1], sa_frames)
    result = {
        "run": str(run_dir), "data": str(data_dir), "split": split, "tasks": count, "sa_steps": steps,
        **scores(inf, part.labels, cfg.model.edge_modules),
        "sa_loss": float(inf.losses.mean()),
        **structure_health(server.lib, traj[:, :sa_frames], inf.losses, cfg.model.rollout),
        "mse": prediction_mse(server.lib, traj, inf.structures, start),
        "mse_start_frame": start,
        "seconds": time.perf_counter() - t0,
        **({"warnings": warnings} if warnings else {}),
    }
    if write:
        atomic_write_text(run_dir / f"eval_{split}.json", json.dumps(result, indent=2) + "\n")
    if plot:
        steps_plot = min(20, traj.shape[1] - 1 - start)
        if steps_plot >= 1:
            pred = predict(server.lib, traj[:1], inf.structures[:1], start, steps_plot)[0].cpu().numpy()
            plots.trajectory(traj[0, : start + 1 + steps_plot].cpu().numpy(), pred, run_dir / "plots" / "trajectory.png",
                             f"{split} task 0: true (solid) vs predicted (dashed), from frame {start}")
        plots.graphs(None if part.labels is None else part.labels[0], structures[0], data.n_balls,
                     run_dir / "plots" / "graph.png")
    return result


UNLABELED_NOTE = "no labels: edge accuracies are left out (the health ratio and MSE need none)"


def scores(inf, labels, num_modules: int) -> dict:
    """Edge accuracy of the inferred and of the proposal network's structures (labels only score),
    or a note when there are no labels."""
    return inference_accuracies(inf, labels, num_modules) or {"note": UNLABELED_NOTE}


def read_for_run(data_dir, split: str, tasks: int, meta: dict, run_dir):
    """(dataset, raw split part) of the first `tasks` tasks (0 = all) of `split`, checked against the
    run's node count and state dims; an empty split is refused by name."""
    data = Dataset(data_dir)
    check_data_matches_run(data, data_dir, meta, run_dir)
    count = data.num_tasks(split) if not tasks else min(tasks, data.num_tasks(split))
    if count == 0:
        raise NriRayError(f"--split {split}: {data_dir} has no {split} tasks (imported without --{split}?)")
    return data, data.read(split, 0, count, normalize=False)


def check_data_matches_run(data: Dataset, data_dir, meta: dict, run_dir) -> None:
    """Refuse a dataset of another node count or state dims than the run's, naming both."""
    if data.n_balls != meta["n_balls"]:
        raise NriRayError(f"--data {data_dir}: {data.n_balls} balls, the run {run_dir} was trained on {meta['n_balls']}")
    if data.dims != meta["dims"]:
        raise NriRayError(f"--data {data_dir}: {data.dims} state dims, the run {run_dir} was trained on {meta['dims']}")


def check_frames(frames: int, cfg, meta: dict, what: str) -> int:
    """The SA window for trajectories of `frames` frames; refuses ones shorter than the proposal network's input."""
    sa_frames = min(cfg.train.sa_frames, frames)
    if sa_frames < meta["in_frames"]:
        raise NriRayError(f"{what}: {frames} frames, the proposal network needs {meta['in_frames']}")
    return sa_frames


def plot_example(run_dir: str | Path, data_dir: str | Path) -> None:
    """The trajectory and graph plots of one meta-test system (written at the end of training), if there is one."""
    if Dataset(data_dir).num_tasks("test") == 0:
        return
    evaluate(run_dir, data_dir, "test", tasks=1, device="cpu", plot=True, write=False)
