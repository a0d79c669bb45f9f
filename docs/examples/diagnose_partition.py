"""Is a failed run a search failure or a wrong partition of the edges? (labels read only to score)

For the first 300 test tasks: infer structures with the run (100 SA steps, as `evaluate`), map
modules to relations by the best global matching, and compare the SA loss of the inferred
structure with that of the true one under the learned modules. If the true structure is never
better, SA found the optimum of modules that split the edges wrongly.

    python docs/examples/diagnose_partition.py RUN DATA LABELS.npy
"""
import sys

import numpy as np
import torch

from nri_ray import engine
from nri_ray.data import Dataset
from nri_ray.infer import infer_for_run
from nri_ray.metrics import best_matching, confusion
from nri_ray.train import load_run

run, data, labels_file = sys.argv[1:4]
models, cfg, meta, norm = load_run(run)
raw = Dataset(data).read("test", 0, 300, normalize=False).trajectories
labels = np.load(labels_file)[:300]
traj = torch.as_tensor(norm.apply(raw))
inf = infer_for_run(models.lib, models.proposer, cfg, traj, torch.arange(len(raw)), 100)
to_relation = best_matching(confusion(inf.structures.numpy(), labels, cfg.model.edge_modules))
to_module = np.argsort(to_relation)  # relation -> module (K = R = 2)
true_structures = torch.as_tensor(to_module[labels]).long()
window = traj[:, :cfg.train.sa_frames]
true_loss = engine.losses(models.lib, window, true_structures, cfg.model.rollout,
                          engine.Workspace(torch.device("cpu"), torch.float32))
accuracy = (to_relation[inf.structures.numpy()] == labels).mean()
print(f"{run}: edge accuracy {accuracy:.4f}; the true structure has the lower SA loss on "
      f"{float((true_loss < inf.losses).float().mean()):.1%} of tasks; mean SA loss inferred "
      f"{float(inf.losses.mean()):.3e}, true {float(true_loss.mean()):.3e}")
