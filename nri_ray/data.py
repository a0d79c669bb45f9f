"""Datasets on disk: one Parquet file per split plus `meta.json`; NRI `.npy` import and export.

A dataset is a directory::

    meta.json        simulator, parameters, seed, counts, frames per split, normalization, version
    train.parquet    one row per task: task_id (int64), trajectory (fixed_shape_tensor float64
    valid.parquet      [time, nodes, dims], raw units), labels (fixed_size_list int8 [edges])
    test.parquet

Trajectories are stored raw, in float64, exactly as the simulator or the imported file gave them,
so export is lossless. Readers normalize as NRI does (DATA.md A3: one scalar min/max for positions
and one for velocities, from the train split, mapped to [-1, 1]) and hand out float32. Row groups
of a few thousand tasks let a shard read rows [a, b) without reading the rest.

Labels are int8 `[tasks, edges]`, sender-major off-diagonal (graph.py). Springs: 1 = spring.
Charged: 1 = same-sign charges (repulsive), as NRI's `(e + 1) / 2`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import graph
from .errors import DataError
from .io import atomic_write_text
from .simulate import get_spec

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
DIMS = 4  # x, y, vx, vy
META_FIELDS = ("format_version", "simulator", "n_balls", "counts", "frames", "normalization")


class Split(NamedTuple):
    """Rows [a, b) of one split.

    Shape:
        task_ids: `[tasks]` int64.
        trajectories: `[tasks, time, nodes, dims]`, float32 normalized (or float64 raw).
        labels: `[tasks, edges]` int8.
    """

    task_ids: np.ndarray
    trajectories: np.ndarray
    labels: np.ndarray


# ---- conversions between the NRI file layout and the project layout (the one permute) ----

def nri_to_tasks(loc: np.ndarray, vel: np.ndarray) -> np.ndarray:
    """NRI `loc`, `vel` `[sims, time, 2, balls]` -> trajectories `[tasks, time, nodes, 4]`."""
    return np.concatenate([loc.transpose(0, 1, 3, 2), vel.transpose(0, 1, 3, 2)], axis=-1)


def tasks_to_nri(trajectories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `nri_to_tasks`: `[tasks, time, nodes, 4]` -> C-ordered `loc`, `vel`."""
    loc = trajectories[..., 0:2].transpose(0, 1, 3, 2)  # [sims, time, 2, balls]
    vel = trajectories[..., 2:4].transpose(0, 1, 3, 2)
    return np.ascontiguousarray(loc), np.ascontiguousarray(vel)


def edges_to_labels(sim: str, edges: np.ndarray) -> np.ndarray:
    """NRI `edges` `[sims, balls, balls]` -> labels `[sims, edges]` int8 (NRI's `(e + 1) / 2`)."""
    off = graph.matrix_to_edges(edges)  # [sims, edges]
    return (off if sim == "springs" else (off + 1) / 2).astype(np.int8)


def labels_to_edges(sim: str, labels: np.ndarray, n_balls: int) -> np.ndarray:
    """Inverse of `edges_to_labels`, with the original diagonal (springs 0, charged q_i^2 = 1)."""
    values = labels.astype(np.float64) if sim == "springs" else 2.0 * labels - 1.0
    return graph.edges_to_matrix(values, n_balls, get_spec(sim).edge_diagonal)


# ---- normalization ----

class Normalization(NamedTuple):
    """Scalar min/max of raw positions and velocities over the train split (DATA.md A3)."""

    loc_min: float
    loc_max: float
    vel_min: float
    vel_max: float

    @staticmethod
    def of(trajectories: np.ndarray) -> "Normalization":
        loc, vel = trajectories[..., 0:2], trajectories[..., 2:4]
        return Normalization(float(loc.min()), float(loc.max()), float(vel.min()), float(vel.max()))

    def merge(self, other: "Normalization | None") -> "Normalization":
        if other is None:
            return self
        return Normalization(min(self.loc_min, other.loc_min), max(self.loc_max, other.loc_max),
                             min(self.vel_min, other.vel_min), max(self.vel_max, other.vel_max))

    def apply(self, trajectories: np.ndarray) -> np.ndarray:
        """Raw `[tasks, time, nodes, 4]` -> float32 in [-1, 1] (train range): 2 (x - min) / (max - min) - 1."""
        lo = np.array([self.loc_min] * 2 + [self.vel_min] * 2)
        hi = np.array([self.loc_max] * 2 + [self.vel_max] * 2)
        return (2.0 * (trajectories - lo) / (hi - lo) - 1.0).astype(np.float32)

    def invert(self, normalized: np.ndarray) -> np.ndarray:
        lo = np.array([self.loc_min] * 2 + [self.vel_min] * 2)
        hi = np.array([self.loc_max] * 2 + [self.vel_max] * 2)
        return (np.asarray(normalized, np.float64) + 1.0) * (hi - lo) / 2.0 + lo


# ---- writing ----

def _schema(frames: int, n_balls: int) -> pa.Schema:
    return pa.schema([
        ("task_id", pa.int64()),
        ("trajectory", pa.fixed_shape_tensor(pa.float64(), (frames, n_balls, DIMS))),
        ("labels", pa.list_(pa.int8(), graph.num_edges(n_balls))),
    ])


class SplitWriter:
    """Appends tasks to one split's Parquet file in row groups of `row_group_size` tasks."""

    def __init__(self, path: Path, frames: int, n_balls: int, row_group_size: int):
        self.path, self.frames, self.n_balls = path, frames, n_balls
        self.schema = _schema(frames, n_balls)
        self.row_group_size = row_group_size
        self.writer = pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=False)
        self.pending: list[Split] = []
        self.count = 0
        self.label_ones = 0
        self.normalization: Normalization | None = None

    def append(self, trajectories: np.ndarray, labels: np.ndarray) -> None:
        """Add raw trajectories `[tasks, time, nodes, 4]` float64 and labels `[tasks, edges]`."""
        ids = np.arange(self.count, self.count + len(trajectories), dtype=np.int64)
        self.count += len(trajectories)
        self.label_ones += int(labels.sum())
        self.normalization = Normalization.of(trajectories).merge(self.normalization)
        self.pending.append(Split(ids, np.asarray(trajectories, np.float64), labels.astype(np.int8)))
        if sum(len(p.task_ids) for p in self.pending) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        ids = np.concatenate([p.task_ids for p in self.pending])
        traj = np.ascontiguousarray(np.concatenate([p.trajectories for p in self.pending]))
        labels = np.concatenate([p.labels for p in self.pending])
        self.pending = []
        table = pa.Table.from_arrays([
            pa.array(ids),
            pa.FixedShapeTensorArray.from_numpy_ndarray(traj),
            pa.FixedSizeListArray.from_arrays(pa.array(labels.reshape(-1)), labels.shape[1]),
        ], schema=self.schema)
        self.writer.write_table(table, row_group_size=self.row_group_size)

    def close(self) -> None:
        self._flush()
        self.writer.close()


def write_meta(directory: Path, meta: dict) -> None:
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")


def build_meta(*, simulator: str, n_balls: int, writers: dict[str, SplitWriter], source: str,
               seed: int | None = None, nri_exact: bool | None = None, params: dict | None = None) -> dict:
    norm = writers["train"].normalization
    if norm is None or not all(math.isfinite(v) for v in norm):
        raise DataError("train split: no finite values to normalize with")
    if norm.loc_max == norm.loc_min or norm.vel_max == norm.vel_min:
        raise DataError("train split: positions or velocities are constant; cannot normalize")
    n_edges = graph.num_edges(n_balls)
    return {
        "format_version": FORMAT_VERSION,
        "simulator": simulator,
        "n_balls": n_balls,
        "dims": DIMS,
        "source": source,
        "seed": seed,
        "nri_exact": nri_exact,
        "params": params or {},
        "counts": {s: w.count for s, w in writers.items()},
        "frames": {s: w.frames for s, w in writers.items()},
        "label_balance": {s: w.label_ones / max(1, w.count * n_edges) for s, w in writers.items()},
        "normalization": norm._asdict(),
        "row_group_size": writers["train"].row_group_size,
    }


# ---- reading ----

class Dataset:
    """A dataset directory, validated on open; reads rows of a split without reading the rest."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.meta = read_meta(self.dir)
        self.sim: str = self.meta["simulator"]
        self.n_balls: int = self.meta["n_balls"]
        self.normalization = Normalization(**self.meta["normalization"])
        self._files: dict[str, pq.ParquetFile] = {}

    def num_tasks(self, split: str) -> int:
        return int(self.meta["counts"][split])

    def frames(self, split: str) -> int:
        return int(self.meta["frames"][split])

    def _file(self, split: str) -> pq.ParquetFile:
        if split not in SPLITS:
            raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        if split in self._files:
            return self._files[split]
        path = self.dir / f"{split}.parquet"
        if not path.exists():
            raise DataError(f"{path}: missing split file")
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        expected = _schema(self.frames(split), self.n_balls)
        if not pf.schema_arrow.equals(expected):
            raise DataError(f"{path}: schema {pf.schema_arrow} does not match meta.json; expected {expected}")
        if pf.metadata.num_rows != self.num_tasks(split):
            raise DataError(f"{path}: {pf.metadata.num_rows} rows, meta.json counts.{split} says {self.num_tasks(split)}")
        self._files[split] = pf
        return pf

    def read(self, split: str, start: int = 0, stop: int | None = None, normalize: bool = True) -> Split:
        """Tasks [start, stop) of `split`; only the row groups that hold them are read."""
        pf = self._file(split)
        stop = self.num_tasks(split) if stop is None else stop
        if not 0 <= start <= stop <= self.num_tasks(split):
            raise DataError(f"{split}: rows [{start}, {stop}) outside [0, {self.num_tasks(split)})")
        groups, first, offset = [], None, 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if offset < stop and offset + rows > start:
                groups.append(g)
                first = offset if first is None else first
            offset += rows
        path = self.dir / f"{split}.parquet"
        try:
            table = pf.read_row_groups(groups) if groups else _schema(self.frames(split), self.n_balls).empty_table()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: cannot read rows [{start}, {stop}) ({e})") from None
        table = table.slice(start - (first or 0), stop - start)
        ids = np.array(table.column("task_id").to_numpy())  # a writable copy
        traj = table.column("trajectory").combine_chunks().to_numpy_ndarray() if len(ids) else np.zeros(
            (0, self.frames(split), self.n_balls, DIMS))
        labels = table.column("labels").combine_chunks().flatten().to_numpy().reshape(len(ids), graph.num_edges(self.n_balls))
        if not np.isfinite(traj).all():
            raise DataError(f"{path}: trajectory contains NaN or Inf in rows [{start}, {stop})")
        return Split(ids, self.normalization.apply(traj) if normalize else traj, labels.astype(np.int8))


def read_meta(directory: Path) -> dict:
    path = Path(directory) / "meta.json"
    if not Path(directory).is_dir():
        raise DataError(f"{directory}: not a dataset directory (does not exist)")
    if not path.exists():
        raise DataError(f"{path}: missing; {directory} is not an nri-ray dataset")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version!r} is not supported (this nri-ray reads {FORMAT_VERSION})")
    missing = [f for f in META_FIELDS if f not in meta]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    if meta["simulator"] not in ("springs", "charged"):
        raise DataError(f"{path}: simulator {meta['simulator']!r}, expected springs or charged")
    norm = meta["normalization"]
    if not isinstance(norm, dict) or sorted(norm) != sorted(Normalization._fields):
        raise DataError(f"{path}: normalization must have {', '.join(Normalization._fields)}")
    return meta
