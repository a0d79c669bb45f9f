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
