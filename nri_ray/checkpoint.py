"""Atomic checkpoints and exact resume.

A checkpoint holds everything a run needs to continue bit for bit: module and proposal weights,
both optimizers' states, every task's structure, the temperature state, the plateau schedule,
the round, and the config. No RNG state is needed: every random draw is a pure function of
(seed, task id, round) (rng.py). Files are written to a temporary name and renamed, and loaded
with `torch.load(weights_only=True)` (no pickled objects).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .errors import NriRayError
from .io import atomic_write_bytes

LATEST = "checkpoint.pt"


def save(run_dir: Path, state: dict) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(run_dir) / LATEST
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load(run_dir: Path) -> dict:
    path = Path(run_dir) / LATEST
    if not path.exists():
        raise NriRayError(f"{path}: missing checkpoint; is {run_dir} a training run directory?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise NriRayError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e})") from None
    required = ("round", "config", "modules", "proposal", "structures", "meta")
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise NriRayError(f"{path}: not an nri-ray checkpoint (missing {', '.join(missing)})")
    return state
