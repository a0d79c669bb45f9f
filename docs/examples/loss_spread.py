"""How a trained model's one-step error is spread over (task, frame) pairs (issue: charged particles).

With the run's structures (the labels for a true-graph run; the inferred ones otherwise, 100 SA
steps), every test task's frames 0..47 each predict the next frame; the squared errors are summed
per (task, frame). Prints which share of the total error the worst 1% and 10% of (task, frame)
pairs carry, and how that error relates to the closest distance between two particles in the
frame (close encounters of charges have the largest forces).

    python docs/examples/loss_spread.py RUN DATA [--tasks 300]
"""
import argparse

import numpy as np
import torch

from nri_ray.data import Dataset
from nri_ray.gnn import rollout
from nri_ray.infer import infer_for_run
from nri_ray.train import load_run

parser = argparse.ArgumentParser()
parser.add_argument("run")
parser.add_argument("data")
parser.add_argument("--tasks", type=int, default=300)
args = parser.parse_args()
models, cfg, meta, norm = load_run(args.run)
part = Dataset(args.data).read("test", 0, args.tasks, normalize=False)
traj = torch.as_tensor(norm.apply(part.trajectories))[:, :cfg.train.sa_frames]  # [tasks, 49, nodes, dims]
if meta.get("method") == "true-graph":
    structures = torch.as_tensor(part.labels).long()  # a true-graph model's module k is relation k
else:
    structures = infer_for_run(models.lib, models.proposer, cfg, traj, torch.as_tensor(part.task_ids), 100).structures
tasks, frames, nodes, dims = traj.shape
with torch.no_grad():
    start = traj[:, :-1].reshape(tasks * (frames - 1), nodes, dims)  # one graph per (task, frame)
    pred = rollout(models.lib, start, structures.repeat_interleave(frames - 1, dim=0), 1)[:, 0]
error = ((pred - traj[:, 1:].reshape_as(start)) ** 2).sum(dim=(1, 2)).numpy()  # [tasks * (frames-1)]
ranked = np.sort(error)[::-1]
total = ranked.sum()
raw = part.trajectories[:, :frames - 1, :, :dims // 2]  # raw positions [tasks, frames-1, nodes, space]
gaps = np.linalg.norm(raw[:, :, :, None] - raw[:, :, None], axis=-1)  # [tasks, frames-1, nodes, nodes]
gaps[..., np.arange(nodes), np.arange(nodes)] = np.inf
closest = gaps.min(axis=(2, 3)).reshape(-1)  # closest pair distance per (task, frame)
near = closest < np.quantile(closest, 0.05)
print(f"{args.run}: one-step error summed over {len(error)} (task, frame) pairs: {total:.3e}")
print(f"  worst 1% of pairs carry {ranked[:len(ranked) // 100].sum() / total:.1%}, worst 10% carry "
      f"{ranked[:len(ranked) // 10].sum() / total:.1%}")
print(f"  the 5% of pairs with the closest two particles (distance < {np.quantile(closest, 0.05):.3f}) carry "
      f"{error[near].sum() / total:.1%}; Spearman(closest distance, error) = "
      f"{np.corrcoef(np.argsort(np.argsort(closest)), np.argsort(np.argsort(error)))[0, 1]:.3f}")
