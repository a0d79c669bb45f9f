"""A user's own trajectories: `.npy` arrays in, inferred graphs (Parquet) and forecasts (.npy) out.

`nri-ray data import` turns numpy arrays `[tasks, time, nodes, dims]` (any dims >= 1, raw units,
labels optional) into a dataset directory; `nri-ray infer` writes each task's inferred structure
and the proposal network's per-edge module probabilities as Parquet; `nri-ray predict` rolls the
inferred structure forward past the end of each trajectory, in the input's units.

Arrays are always loaded with `allow_pickle=False`. Everything is validated before anything is
written, and every output is written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import graph
from .data import NORMALIZATION_SCHEMES, SPLITS, SplitWriter, build_meta, normalization_groups, write_meta
from .errors import DataError, NriRayError
from .io import atomic_dir, atomic_write_bytes, check_output_dir

IMPORT_SCHEMES = ("auto",) + NORMALIZATION_SCHEMES


def load_array(path: str | Path, flag: str) -> np.ndarray:
    """A numeric `.npy` array from `path` (never a pickle); errors name `flag` and the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise DataError(f"{flag} {path}: holds Python objects (a pickle); save a numeric array with np.save") from None
        raise DataError(f"{flag} {path}: not a readable .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{flag} {path}: not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):  # np.load of an .npz gives an archive
        raise DataError(f"{flag} {path}: expected one .npy array, got an archive")
    return arr


def check_trajectories(arr: np.ndarray, flag: str, path, *, nodes: int | None = None, dims: int | None = None) -> np.ndarray:
    """Validate `[tasks, time, nodes, dims]` real finite numbers; returns float64."""
    where = f"{flag} {path}"
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{where}: dtype {arr.dtype}, expected real numbers")
    if arr.ndim != 4:
        raise DataError(f"{where}: shape {list(arr.shape)}, expected 4 axes [tasks, time, nodes, dims]")
    tasks, time, n, d = arr.shape
    if tasks < 1 or time < 2 or n < 2 or d < 1:
        raise DataError(f"{where}: shape {list(arr.shape)}, expected at least 1 task, 2 frames, 2 nodes and 1 dim")
    if nodes is not None and n != nodes:
        raise DataError(f"{where}: {n} nodes, expected {nodes} (as the train trajectories or the run)")
    if dims is not None and d != dims:
        raise DataError(f"{where}: {d} dims, expected {dims} (as the train trajectories or the run)")
    finite = np.isfinite(arr).reshape(tasks, -1).all(axis=1)
    if not finite.all():
        raise DataError(f"{where}: NaN or Inf values (first in task {int(np.argmin(finite))})")
    return np.asarray(arr, np.float64)


def check_labels(arr: np.ndarray, flag: str, path, tasks: int, nodes: int) -> np.ndarray:
    """Validate labels `[tasks, edges]` (sender-major) or `[tasks, nodes, nodes]`; returns int8 `[tasks, edges]`.

    Values are relation types 0 and 1 (as in the NRI benchmarks; the diagonal of a matrix is ignored).
    """
    where = f"{flag} {path}"
    edges = graph.num_edges(nodes)
    if arr.shape == (tasks, nodes, nodes):
        arr = graph.matrix_to_edges(arr)
    elif arr.shape != (tasks, edges):
        raise DataError(f"{where}: shape {list(arr.shape)}, expected [{tasks}, {edges}] (tasks, edges sender-major) "
                        f"or [{tasks}, {nodes}, {nodes}]")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_):
        raise DataError(f"{where}: dtype {arr.dtype}, expected integer relation types 0 or 1")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        task = int(np.argwhere(bad)[0][0])
        raise DataError(f"{where}: value {arr[bad][0].item()!r} (task {task}); relation types must be 0 or 1")
    return arr.astype(np.int8)


def import_arrays(out: Path, *, train: Path, valid: Path | None = None, test: Path | None = None,
                  labels: dict[str, Path | None] | None = None, valid_fraction: float = 0.1, seed: int = 0,
                  normalize: str = "auto", overwrite: bool = False, row_group_size: int = 2000) -> dict:
    """Validate the arrays, then write them as a dataset directory (atomically). Returns meta.json.

    Without `valid`, a seeded random `valid_fraction` of the train tasks becomes the valid split.
    Without `test`, the test split is empty. Labels must be given for every split given, or none.
    """
    check_output_dir(Path(out), overwrite)  # before any work
    labels = {k: v for k, v in (labels or {}).items() if v is not None}
    files = {"train": train, "valid": valid, "test": test}
    for split in labels:
        if files[split] is None:
            raise DataError(f"--labels-{split}: given without --{split}")
    given = [s for s in SPLITS if files[s] is not None]
    if labels and sorted(labels) != sorted(given):
        missing = [s for s in given if s not in labels]
        raise DataError(f"labels: give --labels-X for every split given ({', '.join(given)}) or for none; "
                        f"missing --labels-{missing[0]}")
    if normalize not in IMPORT_SCHEMES:
        raise DataError(f"--normalize: got {normalize!r}, expected one of {', '.join(IMPORT_SCHEMES)}")
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"--valid-fraction: got {valid_fraction}, expected a number between 0 and 1")

    arrays, label_arrays = {}, {}
    shape = None
    for split in given:
        flag = f"--{split}"
        arr = check_trajectories(load_array(files[split], flag), flag, files[split],
                                 nodes=shape and shape[0], dims=shape and shape[1])
        shape = shape or arr.shape[2:]
        arrays[split] = arr
        if split in labels:
            lab_flag = f"--labels-{split}"
            label_arrays[split] = check_labels(load_array(labels[split], lab_flag), lab_flag, labels[split],
                                               arr.shape[0], arr.shape[2])
    frames = arrays["train"].shape[1]
    if "valid" in arrays and arrays["valid"].shape[1] != frames:
        raise DataError(f"--valid {valid}: {arrays['valid'].shape[1]} frames, expected {frames} (as --train)")
    if "test" in arrays and arrays["test"].shape[1] < frames:
        raise DataError(f"--test {test}: {arrays['test'].shape[1]} frames, expected at least {frames} (as --train)")
    if "valid" not in arrays:
        count = arrays["train"].shape[0]
        n_valid = int(round(valid_fraction * count))
        if n_valid < 1 or n_valid >= count:
            raise DataError(f"--train {train}: {count} tasks cannot give a valid split of fraction {valid_fraction} "
                            f"and keep train tasks; pass --valid FILE or another --valid-fraction")
        order = np.random.default_rng(seed).permutation(count)
        pick, keep = np.sort(order[:n_valid]), np.sort(order[n_valid:])
        arrays["valid"], arrays["train"] = arrays["train"][pick], arrays["train"][keep]
        if labels:
            label_arrays["valid"], label_arrays["train"] = label_arrays["train"][pick], label_arrays["train"][keep]
    n_nodes, dims = shape
    scheme = ("pos-vel" if dims % 2 == 0 else "per-dim") if normalize == "auto" else normalize
    groups = normalization_groups(scheme, dims)
    labeled = bool(labels)
    with atomic_dir(Path(out), overwrite) as tmp:
        writers = {}
        for split in SPLITS:
            arr = arrays.get(split, np.zeros((0, frames, n_nodes, dims)))
            writer = writers[split] = SplitWriter(tmp / f"{split}.parquet", arr.shape[1], n_nodes, row_group_size,
                                                  dims=dims, labeled=labeled, groups=groups)
            for a in range(0, len(arr), row_group_size):
                writer.append(arr[a:a + row_group_size], label_arrays[split][a:a + row_group_size] if labeled else None)
            writer.close()
        meta = build_meta(simulator="imported", n_balls=n_nodes, writers=writers,
                          source="import:" + ",".join(f"{s}={Path(files[s]).resolve()}" for s in given), seed=seed,
                          params={"normalization_scheme": scheme, "valid_from_train": valid is None,
                                  "valid_fraction": valid_fraction if valid is None else None})
        write_meta(tmp, meta)
    return meta


# ---- inferred graphs and forecasts out ----

INFER_SCHEMA = pa.schema([
    ("task_id", pa.int64()),
    ("modules", pa.list_(pa.int8())),  # [edges] the inferred module of each directed edge, sender-major
    ("probabilities", pa.list_(pa.float32())),  # [edges * modules] the proposal network's, edge-major
    ("sa_loss", pa.float64()),
])


def _check_out(out: Path, suffix: str, overwrite: bool) -> Path:
    out = Path(out)
    if out.suffix != suffix:
        raise NriRayError(f"--out {out}: expected a {suffix} file name")
    if out.exists() and not overwrite:
        raise NriRayError(f"--out {out}: already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise NriRayError(f"--out {out}: is a directory")
    return out


def _run_inputs(run_dir, device: str, *, data_dir=None, split: str = "test", trajectories=None, tasks: int = 0):
    """(models, cfg, meta, normalization, raw trajectories `[tasks, time, nodes, dims]`, task ids, labels or None)
    of a run and its input: a dataset split or a `.npy` array, checked against the run."""
    from .evaluate import read_for_run
    from .train import load_run

    if (data_dir is None) == (trajectories is None):
        raise NriRayError("give exactly one of --data DIR and --trajectories FILE.npy")
    models, cfg, meta, norm = load_run(run_dir, device)
    if data_dir is not None:
        _, part = read_for_run(data_dir, split, tasks, meta, run_dir)
        return models, cfg, meta, norm, part.trajectories, np.asarray(part.task_ids), part.labels
    raw = check_trajectories(load_array(trajectories, "--trajectories"), "--trajectories", trajectories,
                             nodes=meta["n_balls"], dims=meta["dims"])
    raw = raw[:tasks] if tasks else raw
    return models, cfg, meta, norm, raw, np.arange(len(raw), dtype=np.int64), None


def infer_graphs(run_dir, out, *, data_dir=None, split: str = "test", trajectories=None, labels=None,
                 sa_steps: int | None = None, tasks: int = 0, device: str = "auto", overwrite: bool = False) -> dict:
    """Infer every task's structure with a trained run; write one Parquet row per task to `out`.

    Returns a summary (tasks, mean SA loss, module shares; accuracies when labels exist: the
    dataset's, or `labels`, a `.npy` file of held-back labels, which only score)."""
    from .evaluate import META_TEST_SA_STEPS, check_frames, scores
    from .infer import infer_for_run, module_share

    out = _check_out(out, ".parquet", overwrite)
    models, cfg, meta, norm, raw, ids, known = _run_inputs(run_dir, device, data_dir=data_dir, split=split,
                                                            trajectories=trajectories, tasks=tasks)
    if labels is not None:
        known = check_labels(load_array(labels, "--labels"), "--labels", labels, len(raw), raw.shape[2])
    check_frames(raw.shape[1], cfg, meta, "--data" if data_dir is not None else f"--trajectories {trajectories}")
    dev = next(models.lib.parameters()).device
    traj = torch.as_tensor(norm.apply(raw), device=dev)  # the run's normalization
    steps = META_TEST_SA_STEPS if sa_steps is None else sa_steps
    inf = infer_for_run(models.lib, models.proposer, cfg, traj, torch.as_tensor(ids, device=dev), steps)
    k, edges = inf.probabilities.shape[-1], inf.structures.shape[1]
    modules = inf.structures.to(torch.int8).cpu().numpy()  # [tasks, edges]
    probs = inf.probabilities.float().cpu().numpy().reshape(len(ids), edges * k)  # [tasks, edges, K] -> edge-major
    table = pa.Table.from_arrays([
        pa.array(ids, pa.int64()),
        pa.ListArray.from_arrays(np.arange(0, (len(ids) + 1) * edges, edges, dtype=np.int32), pa.array(modules.reshape(-1))),
        pa.ListArray.from_arrays(np.arange(0, (len(ids) + 1) * edges * k, edges * k, dtype=np.int32),
                                 pa.array(probs.reshape(-1))),
        pa.array(inf.losses.double().cpu().numpy()),
    ], schema=INFER_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    return {"run": str(run_dir), "out": str(out), "tasks": len(ids), "edges": edges, "modules": k, "sa_steps": steps,
            "sa_loss": float(inf.losses.mean()), "module_share": module_share(inf.structures, k),
            **scores(inf, known, cfg.model.edge_modules)}


def predict_future(run_dir, trajectories, steps: int, out, *, sa_steps: int | None = None, device: str = "auto",
                   overwrite: bool = False) -> dict:
    """Infer each trajectory's structure, then roll it forward `steps` frames past its last frame.

    Writes `[tasks, steps, nodes, dims]` float64 in the input's units to `out` (.npy)."""
    from .evaluate import META_TEST_SA_STEPS, check_frames
    from .infer import infer_for_run, predict

    if steps < 1:
        raise NriRayError(f"--steps: got {steps}, expected at least 1")
    out = _check_out(out, ".npy", overwrite)
    models, cfg, meta, norm, raw, ids, _ = _run_inputs(run_dir, device, trajectories=trajectories)
    check_frames(raw.shape[1], cfg, meta, f"--trajectories {trajectories}")
    dev = next(models.lib.parameters()).device
    traj = torch.as_tensor(norm.apply(raw), device=dev)  # the run's normalization
    sa = META_TEST_SA_STEPS if sa_steps is None else sa_steps
    inf = infer_for_run(models.lib, models.proposer, cfg, traj, torch.as_tensor(ids, device=dev), sa)
    future = predict(models.lib, traj, inf.structures, traj.shape[1] - 1, steps)  # [tasks, steps, nodes, dims]
    raw_future = norm.invert(future.cpu().numpy())  # back to the input's units
    buf = io.BytesIO()
    np.save(buf, raw_future)
    atomic_write_bytes(out, buf.getvalue())
    return {"run": str(run_dir), "out": str(out), "tasks": len(ids), "steps": steps, "from_frame": raw.shape[1] - 1,
            "shape": list(raw_future.shape)}
