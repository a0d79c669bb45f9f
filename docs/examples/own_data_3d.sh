#!/bin/bash
# The README's "your own data" example as one script, for data seed D and train seed T:
# 3-D springs (5 balls, 2000/500/1000) saved as plain .npy arrays with the labels kept apart,
# imported without labels, trained with the small preset, graphs inferred to Parquet and scored
# against the held-back labels, and a 20-frame forecast checked against the trajectories' true
# last 20 frames (predicted from the first 79) beside holding the last frame (static).
#   usage: docs/examples/own_data_3d.sh D T WORKDIR [TRAIN FLAGS...]   (docs/RESULTS.md, "Your own data")
set -euo pipefail
D=$1; T=$2; W=$3; shift 3
mkdir -p "$W" && cd "$W"
[ -d springs3d-$D ] || nri-ray data generate --dims 3 --num-train 2000 --num-valid 500 --num-test 1000 \
    --seed $D --out springs3d-$D --quiet
mkdir -p arrays-$D
python - <<PY
import numpy as np
from nri_ray.data import Dataset
ds = Dataset("springs3d-$D")
for split in ("train", "valid", "test"):
    part = ds.read(split, normalize=False)  # raw units, [tasks, time, nodes, 6]
    np.save(f"arrays-$D/{split}.npy", part.trajectories)
    np.save(f"arrays-$D/labels_{split}.npy", part.labels)
np.save("arrays-$D/test79.npy", np.load("arrays-$D/test.npy")[:, :79])
PY
[ -d own-$D ] || nri-ray data import --train arrays-$D/train.npy --valid arrays-$D/valid.npy \
    --test arrays-$D/test.npy --out own-$D
nri-ray train --preset small --data own-$D --out run-$D-$T --seed $T --quiet "$@"
nri-ray infer run-$D-$T --data own-$D --out graphs-$D-$T.parquet --labels arrays-$D/labels_test.npy --overwrite
nri-ray predict run-$D-$T --trajectories arrays-$D/test79.npy --steps 20 --out forecast79-$D-$T.npy --overwrite
python - <<PY
import numpy as np
t = np.load("arrays-$D/test.npy"); f = np.load("forecast79-$D-$T.npy")
truth, static = t[:, 79:99], np.repeat(t[:, 78:79], 20, axis=1)
for name, p in (("predict", f), ("static", static)):
    err = ((p - truth) ** 2).mean(axis=(0, 2, 3))  # per step, over tasks, nodes, dims
    print(f"{name}: raw-unit MSE at 1/10/20 steps {err[0]:.3e} {err[9]:.3e} {err[19]:.3e}")
PY
