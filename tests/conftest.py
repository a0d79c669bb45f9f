"""Shared fixtures: tiny datasets generated once per session, and the reference generator."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # reference_sim: the original-style generator


@pytest.fixture(scope="session")
def tiny_cfg():
    from nri_ray.config import GenerateConfig

    return GenerateConfig(num_train=24, num_valid=8, num_test=8, length=1000, length_test=2000,
                          sample_freq=100, seed=3, chunk_size=10, workers=1, row_group_size=10)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_cfg):
    """A small springs5 dataset: 24/8/8 tasks, 9 frames (19 for test), row groups of 10."""
    from nri_ray.datagen import generate

    out = tmp_path_factory.mktemp("data") / "springs5"
    generate(tiny_cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def own_arrays(tmp_path_factory):
    """3-D springs (state dims 6) as a user would have them: raw .npy arrays, labels apart
    (train.npy, valid.npy, test.npy, labels_{split}.npy): 24/6/6 tasks, 9 frames (19 for test)."""
    import numpy as np

    from nri_ray.config import GenerateConfig
    from nri_ray.data import Dataset
    from nri_ray.datagen import generate

    cfg = GenerateConfig(dims=3, num_train=24, num_valid=6, num_test=6, length=1000, length_test=2000,
                         seed=7, workers=1, row_group_size=10)
    root = tmp_path_factory.mktemp("own")
    generate(cfg, root / "generated", progress=False)
    ds = Dataset(root / "generated")
    for split in ("train", "valid", "test"):
        part = ds.read(split, normalize=False)
        np.save(root / f"{split}.npy", part.trajectories)
        np.save(root / f"labels_{split}.npy", part.labels)
    return root


@pytest.fixture(scope="session")
def unlabeled_3d(own_arrays):
    """`own_arrays` imported without labels (`nri-ray data import`)."""
    from nri_ray.user_data import import_arrays

    out = own_arrays / "unlabeled"
    import_arrays(out, train=own_arrays / "train.npy", valid=own_arrays / "valid.npy", test=own_arrays / "test.npy")
    return out
