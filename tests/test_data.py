"""Datasets on disk: layout, row-range reads, normalization, NRI import/export round trips."""
import json

import numpy as np
import pyarrow.parquet as pq
import reference_sim as ref

from nri_ray import graph
from nri_ray.cli import main
from nri_ray.config import GenerateConfig
from nri_ray.data import Dataset, Normalization, edges_to_labels
from nri_ray.datagen import generate
from nri_ray.nri_files import export_nri, import_nri


def test_generated_dataset_layout(tiny_dataset, tiny_cfg):
    ds = Dataset(tiny_dataset)
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["simulator"] == "springs" and meta["seed"] == 3
    assert meta["counts"] == {"train": 24, "valid": 8, "test": 8}
    assert meta["frames"] == {"train": 9, "valid": 9, "test": 19}
    train = ds.read("train")
    assert train.trajectories.shape == (24, 9, 5, 4) and train.trajectories.dtype == np.float32
    assert train.labels.shape == (24, 20) and train.labels.dtype == np.int8
    np.testing.assert_array_equal(train.task_ids, np.arange(24))
    # NRI normalization: the train split spans exactly [-1, 1] in positions and velocities.
    assert train.trajectories[..., :2].min() == -1 and train.trajectories[..., :2].max() == 1
    assert train.trajectories[..., 2:].min() == -1 and train.trajectories[..., 2:].max() == 1
    assert ds.read("test").trajectories.shape == (8, 19, 5, 4)
    assert pq.ParquetFile(tiny_dataset / "train.parquet").num_row_groups == 3  # 10 + 10 + 4


def test_raw_storage_is_float64_and_normalization_inverts(tiny_dataset):
    ds = Dataset(tiny_dataset)
    raw = ds.read("valid", normalize=False).trajectories
    assert raw.dtype == np.float64
    norm = ds.normalization
    np.testing.assert_allclose(norm.invert(norm.apply(raw)), raw, atol=1e-5)


def test_row_range_reads_equal_slices_of_the_whole(tiny_dataset):
    ds = Dataset(tiny_dataset)
    whole = ds.read("train")
    for a, b in [(0, 24), (3, 17), (10, 20), (23, 24), (5, 5)]:
        part = ds.read("train", a, b)
        np.testing.assert_array_equal(part.task_ids, whole.task_ids[a:b])
        np.testing.assert_array_equal(part.trajectories, whole.trajectories[a:b])
        np.testing.assert_array_equal(part.labels, whole.labels[a:b])


def test_labels_follow_the_edge_matrix_in_sender_major_order():
    edges = np.zeros((1, 3, 3))
    edges[0, 0, 2] = edges[0, 2, 0] = 1.0
    labels = edges_to_labels("springs", edges)
    senders, receivers = graph.edge_index(3)
    assert list(zip(senders, receivers)) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    np.testing.assert_array_equal(labels[0], [0, 1, 0, 0, 1, 0])
    charged = np.array([[[1.0, -1.0], [-1.0, 1.0]]])
    np.testing.assert_array_equal(edges_to_labels("charged", charged)[0], [0, 0])  # opposite signs


def _write_nri(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in files.items():
        np.save(directory / name, arr)


def test_import_then_export_returns_identical_arrays(tmp_path):
    for sim in ("springs", "charged"):
        files = ref.generate_splits(sim, 1, 5, 3, 2, n=5, length=1000, length_test=2000)
        _write_nri(tmp_path / f"src_{sim}", files)
        import_nri(tmp_path / f"src_{sim}", tmp_path / f"ds_{sim}", sim, 5)
        export_nri(tmp_path / f"ds_{sim}", tmp_path / f"out_{sim}")
        for name, arr in files.items():
            back = np.load(tmp_path / f"out_{sim}" / name)
            assert back.dtype == np.float64 and back.shape == arr.shape
            np.testing.assert_array_equal(back, arr)


def test_nri_exact_generate_then_export_equals_the_original_script(tmp_path):
    for sim in ("springs", "charged"):
        cfg = GenerateConfig(sim=sim, num_train=4, num_valid=3, num_test=2, length=1000, length_test=2000,
                             seed=7, nri_exact=True, chunk_size=2, workers=1)
        generate(cfg, tmp_path / f"ds_{sim}", progress=False)
        assert main(["data", "export-nri", str(tmp_path / f"ds_{sim}"), "--out", str(tmp_path / f"e_{sim}")]) == 0
        files = ref.generate_splits(sim, 7, 4, 3, 2, n=5, length=1000, length_test=2000)
        for name, arr in files.items():
            np.testing.assert_array_equal(np.load(tmp_path / f"e_{sim}" / name), arr)


def test_seeded_generation_is_reproducible(tmp_path, tiny_cfg):
    generate(tiny_cfg, tmp_path / "a", progress=False)
    generate(tiny_cfg.replace(workers=2, chunk_size=7), tmp_path / "b", progress=False)
    generate(tiny_cfg.replace(seed=4), tmp_path / "c", progress=False)
    a, b, c = (Dataset(tmp_path / x).read("train", normalize=False) for x in "abc")
    np.testing.assert_array_equal(a.trajectories, b.trajectories)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.trajectories, c.trajectories)


def test_normalization_merge_is_the_min_max_of_both():
    def nri(loc_min, loc_max, vel_min, vel_max):
        return Normalization.from_dict(dict(loc_min=loc_min, loc_max=loc_max, vel_min=vel_min, vel_max=vel_max))

    a, b = nri(-1.0, 2.0, -3.0, 4.0), nri(-2.0, 1.0, -1.0, 5.0)
    assert a.merge(b) == nri(-2.0, 2.0, -3.0, 5.0)
    assert a.merge(b).to_dict() == dict(loc_min=-2.0, loc_max=2.0, vel_min=-3.0, vel_max=5.0)
