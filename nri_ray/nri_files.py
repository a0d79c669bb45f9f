"""Import and export of the original NRI files (`loc_train_springs5.npy`, `vel_...`, `edges_...`).

The files hold float64 `loc` and `vel` `[sims, time, 2, balls]` in raw units and `edges`
`[sims, balls, balls]` with the simulator's values (springs 0/1 with a zero diagonal, charged
-1/+1 = q q^T with a +1 diagonal; DATA.md A2). Import validates every array before anything is
written; export writes them back bit for bit. Arrays are loaded with `allow_pickle=False`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import simulate
from .data import SPLITS, Dataset, SplitWriter, build_meta, edges_to_labels, labels_to_edges, nri_to_tasks, tasks_to_nri, write_meta
from .errors import DataError
from .io import atomic_dir


def file_names(sim: str, n_balls: int, split: str) -> dict[str, str]:
    suffix = f"_{sim}{n_balls}"
    return {kind: f"{kind}_{split}{suffix}.npy" for kind in ("loc", "vel", "edges")}


def _load(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: missing file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None


def load_split(src: Path, sim: str, n_balls: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one split. Returns trajectories `[tasks, time, nodes, 4]` and labels."""
    names = file_names(sim, n_balls, split)
    paths = {k: Path(src) / v for k, v in names.items()}
    loc, vel, edges = (_load(paths[k]) for k in ("loc", "vel", "edges"))
    for kind, arr in (("loc", loc), ("vel", vel)):
        if arr.ndim != 4 or arr.shape[2] != 2 or arr.shape[3] != n_balls:
            raise DataError(f"{paths[kind]}: shape {arr.shape}, expected [sims, time, 2, {n_balls}]")
    if vel.shape != loc.shape:
        raise DataError(f"{paths['vel']}: shape {vel.shape} does not match {paths['loc'].name} {loc.shape}")
    if edges.ndim != 3 or edges.shape[1:] != (n_balls, n_balls):
        raise DataError(f"{paths['edges']}: shape {edges.shape}, expected [sims, {n_balls}, {n_balls}]")
    if edges.shape[0] != loc.shape[0]:
        raise DataError(f"{paths['edges']}: {edges.shape[0]} sims, but {paths['loc'].name} has {loc.shape[0]}")
    for kind, arr in (("loc", loc), ("vel", vel), ("edges", edges)):
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise DataError(f"{paths[kind]}: dtype {arr.dtype}, expected real numbers")
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).argmax())
            raise DataError(f"{paths[kind]}: NaN or Inf values (first in sim {bad})")
    spec = simulate.get_spec(sim)
    off = edges[:, ~np.eye(n_balls, dtype=bool)]
    allowed = np.isin(off, spec.edge_values)
    if not allowed.all():
        value = float(off[~allowed][0])
        raise DataError(f"{paths['edges']}: value {value!r} off the diagonal; {sim} edges must be in {spec.edge_values}")
    diag = edges[:, np.arange(n_balls), np.arange(n_balls)]
    if not (diag == spec.edge_diagonal).all():
        value = float(diag[diag != spec.edge_diagonal][0])
        raise DataError(f"{paths['edges']}: diagonal value {value!r}; the {sim} generator writes {spec.edge_diagonal}")
    traj = nri_to_tasks(np.asarray(loc, np.float64), np.asarray(vel, np.float64))
    return traj, edges_to_labels(sim, edges)


def import_nri(src: Path, out: Path, sim: str, n_balls: int, overwrite: bool = False, row_group_size: int = 2000) -> dict:
    """Validate all three splits, then write them as a dataset directory (atomically)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    simulate.get_spec(sim)
    with atomic_dir(Path(out), overwrite) as tmp:
        loaded = {split: load_split(src, sim, n_balls, split) for split in SPLITS}
        writers = {}
        for split, (traj, labels) in loaded.items():
            writer = writers[split] = SplitWriter(tmp / f"{split}.parquet", traj.shape[1], n_balls, row_group_size)
            for a in range(0, len(traj), row_group_size):
                writer.append(traj[a:a + row_group_size], labels[a:a + row_group_size])
            writer.close()
        meta = build_meta(simulator=sim, n_balls=n_balls, writers=writers, source=f"import-nri:{src.resolve()}")
        write_meta(tmp, meta)
    return meta


def export_nri(dataset_dir: Path, out: Path, overwrite: bool = False) -> list[Path]:
    """Write a dataset back as the original NRI files: float64, original shapes, raw units."""
    ds = Dataset(dataset_dir)
    written = []
    with atomic_dir(Path(out), overwrite) as tmp:
        for split in SPLITS:
            part = ds.read(split, normalize=False)
            loc, vel = tasks_to_nri(part.trajectories)
            edges = labels_to_edges(ds.sim, part.labels, ds.n_balls)
            for kind, arr in (("loc", loc), ("vel", vel), ("edges", edges)):
                name = file_names(ds.sim, ds.n_balls, split)[kind]
                np.save(tmp / name, arr)
                written.append(Path(out) / name)
    return written
