"""Datasets on disk: one Parquet file per split plus `meta.json`; NRI `.npy` import and export.

A dataset is a directory::

    meta.json        simulator, parameters, seed, counts, frames per split, dims, labeled,
                     normalization, version
    train.parquet    one row per task: task_id (int64), trajectory (fixed_shape_tensor float64
    valid.parquet      [time, nodes, dims], raw units), labels (fixed_size_list int8 [edges];
    test.parquet       absent when the dataset is unlabeled)

Trajectories are stored raw, in float64, exactly as the simulator or the imported file gave them,
so export is lossless. Readers normalize and hand out float32: each group of state dimensions
shares one scalar min/max from the train split, mapped to [-1, 1]. The NRI layout (dims = 4:
x, y, vx, vy) uses NRI's groups (DATA.md A3: one scalar for positions, one for velocities); other
data names its scheme in meta.json (`Normalization`). Row groups of a few thousand tasks let a
shard read rows [a, b) without reading the rest.

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
NRI_DIMS = 4  # the NRI layout: x, y, vx, vy
SIMULATORS = ("springs", "charged", "imported")  # meta.json "simulator": a generator, or a user's import
META_FIELDS = ("format_version", "simulator", "n_balls", "counts", "frames", "normalization")


class Split(NamedTuple):
    """Rows [a, b) of one split.

    Shape:
        task_ids: `[tasks]` int64.
        trajectories: `[tasks, time, nodes, dims]`, float32 normalized (or float64 raw).
        labels: `[tasks, edges]` int8, or None for an unlabeled dataset.
    """

    task_ids: np.ndarray
    trajectories: np.ndarray
    labels: np.ndarray | None


# ---- conversions between the NRI file layout and the project layout (the one permute) ----

def nri_to_tasks(loc: np.ndarray, vel: np.ndarray) -> np.ndarray:
    """NRI `loc`, `vel` `[sims, time, space, balls]` -> trajectories `[tasks, time, nodes, 2 * space]`
    (positions, then velocities; space = 2 in NRI's files)."""
    return np.concatenate([loc.transpose(0, 1, 3, 2), vel.transpose(0, 1, 3, 2)], axis=-1)


def tasks_to_nri(trajectories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `nri_to_tasks`: `[tasks, time, nodes, 2 * space]` -> C-ordered `loc`, `vel`."""
    space = trajectories.shape[-1] // 2
    loc = trajectories[..., :space].transpose(0, 1, 3, 2)  # [sims, time, space, balls]
    vel = trajectories[..., space:].transpose(0, 1, 3, 2)
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

NORMALIZATION_SCHEMES = ("pos-vel", "per-dim", "global")


def normalization_groups(scheme: str, dims: int) -> tuple[tuple[int, ...], ...]:
    """The groups of state dimensions that share one scalar min/max under `scheme`.

    pos-vel: the first half of the dimensions (positions) one group, the second half (velocities)
    another: NRI's rule (DATA.md A3) for any number of spatial dimensions; needs even dims.
    per-dim: every dimension its own range. global: one range for all.
    """
    if scheme == "pos-vel":
        if dims % 2:
            raise DataError(f"--normalize pos-vel: needs an even number of state dims (positions then "
                            f"velocities), got {dims}; use per-dim or global")
        return (tuple(range(dims // 2)), tuple(range(dims // 2, dims)))
    if scheme == "per-dim":
        return tuple((d,) for d in range(dims))
    if scheme == "global":
        return (tuple(range(dims)),)
    raise DataError(f"--normalize: got {scheme!r}, expected one of {', '.join(NORMALIZATION_SCHEMES)}")


NRI_GROUPS = normalization_groups("pos-vel", NRI_DIMS)  # ((0, 1), (2, 3)): positions, velocities


class Normalization(NamedTuple):
    """Scalar min/max of each group of raw state dimensions over the train split.

    Applied as 2 (x - min) / (max - min) - 1 per dimension, with its group's min and max. The NRI
    layout's groups are positions (0, 1) and velocities (2, 3), stored in meta.json as today's
    `loc_min`/`loc_max`/`vel_min`/`vel_max`; other groupings as `groups`/`min`/`max` lists.
    """

    groups: tuple[tuple[int, ...], ...]
    mins: tuple[float, ...]
    maxs: tuple[float, ...]

    @staticmethod
    def of(trajectories: np.ndarray, groups=NRI_GROUPS) -> "Normalization":
        """From raw `[tasks, time, nodes, dims]` trajectories."""
        return Normalization(tuple(tuple(g) for g in groups),
                             tuple(float(trajectories[..., list(g)].min()) for g in groups),
                             tuple(float(trajectories[..., list(g)].max()) for g in groups))

    @property
    def dims(self) -> int:
        return sum(len(g) for g in self.groups)

    def merge(self, other: "Normalization | None") -> "Normalization":
        if other is None:
            return self
        return Normalization(self.groups, tuple(map(min, self.mins, other.mins)), tuple(map(max, self.maxs, other.maxs)))

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """`[dims]` lower and upper ends: each dimension gets its group's scalar range."""
        lo, hi = np.empty(self.dims), np.empty(self.dims)
        for g, a, b in zip(self.groups, self.mins, self.maxs):
            lo[list(g)], hi[list(g)] = a, b
        return lo, hi

    def apply(self, trajectories: np.ndarray) -> np.ndarray:
        """Raw `[tasks, time, nodes, dims]` -> float32 in [-1, 1] (train range): 2 (x - min) / (max - min) - 1."""
        lo, hi = self._bounds()
        return (2.0 * (trajectories - lo) / (hi - lo) - 1.0).astype(np.float32)

    def invert(self, normalized: np.ndarray) -> np.ndarray:
        lo, hi = self._bounds()
        return (np.asarray(normalized, np.float64) + 1.0) * (hi - lo) / 2.0 + lo

    def check(self, where: str) -> None:
        """Refuse ranges that cannot normalize (non-finite, or a constant group)."""
        if not all(math.isfinite(v) for v in self.mins + self.maxs):
            raise DataError(f"{where}: no finite values to normalize with")
        for g, a, b in zip(self.groups, self.mins, self.maxs):
            if a == b:
                what = ("positions or velocities" if self.groups == NRI_GROUPS
                        else f"state dimension(s) {list(g)}")
                raise DataError(f"{where}: {what} are constant; cannot normalize")

    def to_dict(self) -> dict:
        if self.groups == NRI_GROUPS:  # the NRI layout keeps the format it always had
            return {"loc_min": self.mins[0], "loc_max": self.maxs[0], "vel_min": self.mins[1], "vel_max": self.maxs[1]}
        return {"groups": [list(g) for g in self.groups], "min": list(self.mins), "max": list(self.maxs)}

    @staticmethod
    def from_dict(d, where: str = "normalization") -> "Normalization":
        """From `to_dict`'s output (either form); malformed input is a DataError naming `where`."""
        nri = ("loc_min", "loc_max", "vel_min", "vel_max")
        try:
            if isinstance(d, dict) and sorted(d) == sorted(nri):
                return Normalization(NRI_GROUPS, (float(d["loc_min"]), float(d["vel_min"])),
                                     (float(d["loc_max"]), float(d["vel_max"])))
            if isinstance(d, dict) and sorted(d) == ["groups", "max", "min"]:
                groups = tuple(tuple(int(i) for i in g) for g in d["groups"])
                flat = sorted(i for g in groups for i in g)
                if flat == list(range(len(flat))) and len(d["min"]) == len(d["max"]) == len(groups) > 0:
                    return Normalization(groups, tuple(map(float, d["min"])), tuple(map(float, d["max"])))
        except (TypeError, ValueError):
            pass
        raise DataError(f"{where}: expected either {', '.join(nri)} or groups/min/max lists that cover "
                        f"dimensions 0..dims-1 once")


# ---- writing ----

def _schema(frames: int, n_balls: int, dims: int = NRI_DIMS, labeled: bool = True) -> pa.Schema:
    fields = [("task_id", pa.int64()), ("trajectory", pa.fixed_shape_tensor(pa.float64(), (frames, n_balls, dims)))]
    if labeled:
        fields.append(("labels", pa.list_(pa.int8(), graph.num_edges(n_balls))))
    return pa.schema(fields)


class SplitWriter:
    """Appends tasks to one split's Parquet file in row groups of `row_group_size` tasks."""

    def __init__(self, path: Path, frames: int, n_balls: int, row_group_size: int, *, dims: int = NRI_DIMS,
                 labeled: bool = True, groups=NRI_GROUPS):
        self.path, self.frames, self.n_balls, self.dims, self.labeled = path, frames, n_balls, dims, labeled
        self.groups = groups
        self.schema = _schema(frames, n_balls, dims, labeled)
        self.row_group_size = row_group_size
        self.writer = pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=False)
        self.pending: list[Split] = []
        self.count = 0
        self.label_ones = 0
        self.normalization: Normalization | None = None

    def append(self, trajectories: np.ndarray, labels: np.ndarray | None) -> None:
        """Add raw trajectories `[tasks, time, nodes, dims]` float64 and labels `[tasks, edges]` (None: unlabeled)."""
        ids = np.arange(self.count, self.count + len(trajectories), dtype=np.int64)
        self.count += len(trajectories)
        if self.labeled:
            self.label_ones += int(labels.sum())
            labels = labels.astype(np.int8)
        self.normalization = Normalization.of(trajectories, self.groups).merge(self.normalization)
        self.pending.append(Split(ids, np.asarray(trajectories, np.float64), labels))
        if sum(len(p.task_ids) for p in self.pending) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        ids = np.concatenate([p.task_ids for p in self.pending])
        traj = np.ascontiguousarray(np.concatenate([p.trajectories for p in self.pending]))
        columns = [pa.array(ids), pa.FixedShapeTensorArray.from_numpy_ndarray(traj)]
        if self.labeled:
            labels = np.concatenate([p.labels for p in self.pending])
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(labels.reshape(-1)), labels.shape[1]))
        self.pending = []
        table = pa.Table.from_arrays(columns, schema=self.schema)
        self.writer.write_table(table, row_group_size=self.row_group_size)

    def close(self) -> None:
        self._flush()
        self.writer.close()


def write_meta(directory: Path, meta: dict) -> None:
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")


def build_meta(*, simulator: str, n_balls: int, writers: dict[str, SplitWriter], source: str,
               seed: int | None = None, nri_exact: bool | None = None, params: dict | None = None) -> dict:
    train = writers["train"]
    norm = train.normalization
    if norm is None:
        raise DataError("train split: no finite values to normalize with")
    norm.check("train split")
    n_edges = graph.num_edges(n_balls)
    return {
        "format_version": FORMAT_VERSION,
        "simulator": simulator,
        "n_balls": n_balls,
        "dims": train.dims,
        "labeled": train.labeled,
        "source": source,
        "seed": seed,
        "nri_exact": nri_exact,
        "params": params or {},
        "counts": {s: w.count for s, w in writers.items()},
        "frames": {s: w.frames for s, w in writers.items()},
        "label_balance": {s: w.label_ones / max(1, w.count * n_edges) for s, w in writers.items()} if train.labeled else None,
        "normalization": norm.to_dict(),
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
        self.dims: int = self.meta.get("dims", NRI_DIMS)
        self.labeled: bool = self.meta.get("labeled", True)  # datasets written before imports carry labels
        self.normalization = Normalization.from_dict(self.meta["normalization"], f"{self.dir / 'meta.json'}: normalization")
        self._files: dict[str, pq.ParquetFile] = {}

    def require_labels(self, what: str) -> None:
        if not self.labeled:
            raise DataError(f"{self.dir}: an unlabeled dataset; {what} needs relation labels")

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
        expected = self._schema(split)
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
            table = pf.read_row_groups(groups) if groups else self._schema(split).empty_table()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: cannot read rows [{start}, {stop}) ({e})") from None
        table = table.slice(start - (first or 0), stop - start)
        ids = np.array(table.column("task_id").to_numpy())  # a writable copy
        traj = table.column("trajectory").combine_chunks().to_numpy_ndarray() if len(ids) else np.zeros(
            (0, self.frames(split), self.n_balls, self.dims))
        labels = None
        if self.labeled:
            labels = table.column("labels").combine_chunks().flatten().to_numpy().reshape(
                len(ids), graph.num_edges(self.n_balls)).astype(np.int8)
        if not np.isfinite(traj).all():
            raise DataError(f"{path}: trajectory contains NaN or Inf in rows [{start}, {stop})")
        return Split(ids, self.normalization.apply(traj) if normalize else traj, labels)

    def _schema(self, split: str) -> pa.Schema:
        return _schema(self.frames(split), self.n_balls, self.dims, self.labeled)


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
    if meta["simulator"] not in SIMULATORS:
        raise DataError(f"{path}: simulator {meta['simulator']!r}, expected one of {', '.join(SIMULATORS)}")
    dims = meta.get("dims", NRI_DIMS)
    if not isinstance(dims, int) or dims < 1:
        raise DataError(f"{path}: dims {dims!r}, expected a positive integer")
    if Normalization.from_dict(meta["normalization"], f"{path}: normalization").dims != dims:
        raise DataError(f"{path}: normalization covers a different number of dims than dims = {dims}")
    return meta
