"""Kuramoto phase oscillators as the NRI successors' benchmark defines them, vectorized over trajectories.

Dynamics: N oscillators with phases phi_i and intrinsic frequencies w_i,

    dphi_i/dt = w_i + sum_j A[i, j] sin(phi_j - phi_i),

where A[i, j] = 1 means oscillator j pulls oscillator i (a directed edge j -> i). A trajectory
draws every off-diagonal A[i, j] as a fair coin, w_i ~ U[1, 10) and phi_i(0) ~ U[0, 2 pi).

The public generators integrate each trajectory with an adaptive Runge-Kutta 4(5) solver and read
the phases on a grid of dt = 0.01. Here one numpy loop over that grid advances a whole batch of
trajectories at once with classical Runge-Kutta 4 (`substeps` fixed steps per grid interval), so
the same initial conditions give phases within the solvers' tolerance of the public ones, not the
same bits; `tests/test_kuramoto.py` measures the gap against a 16x finer step.

Observed features per frame, in this order (`FEATURES`), on every 10th grid point:
- `dphi`: the forward difference (phi(t + dt) - phi(t)) / dt, min-max scaled per oscillator and
  trajectory to [-1, 1]; an oscillator with no incoming edge gets 0 throughout;
- `sin_phi`: sin(phi);
- `phi`: the unwrapped phase, min-max scaled per oscillator and trajectory to [-1, 1];
- `w`: the intrinsic frequency mapped from [1, 10] to [-1, 1], repeated over time.
The scaling ranges are taken over the full (test-length) trajectory before it is cut to its
split's frame count, as the public generators do, so train and test frames share one scale.

Layout: phases `[trajectories, grid, oscillators]`; features `[tasks, time, nodes, 4]` (the
project-wide layout). No part of this file reads or writes the global numpy RNG.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

FEATURES = ("dphi", "sin_phi", "phi", "w")
GRID_DT = 0.01   # the grid the phases are read on
FRAME_EVERY = 10  # one observed frame per this many grid points
FREQ_LOW, FREQ_HIGH = 1.0, 10.0


class KuramotoInitial(NamedTuple):
    """Everything random about a batch of Kuramoto trajectories.

    Shape:
        coupling: `[trajectories, oscillators, oscillators]` float64 0/1, receiver-major: row i holds
            the oscillators that pull oscillator i (zero diagonal).
        freq: `[trajectories, oscillators]` intrinsic frequencies in [1, 10).
        phase: `[trajectories, oscillators]` initial phases in [0, 2 pi).
    """

    coupling: np.ndarray
    freq: np.ndarray
    phase: np.ndarray

    @property
    def count(self) -> int:
        """Number of trajectories."""
        return self.coupling.shape[0]

    def edge_matrix(self) -> np.ndarray:
        """`[trajectories, nodes, nodes]` in the project's sender-major convention: entry [s, r] = 1
        when s pulls r, that is the transpose of `coupling`."""
        return np.swapaxes(self.coupling, -1, -2)


def draw_initial(n_nodes: int, count: int, rng: np.random.Generator) -> KuramotoInitial:
    """Draw `count` trajectories' couplings, frequencies and initial phases from `rng`."""
    if n_nodes < 2:
        raise ValueError(f"kuramoto: n_nodes must be at least 2, got {n_nodes}")
    coupling = rng.integers(0, 2, size=(count, n_nodes, n_nodes)).astype(np.float64)
    coupling[:, np.arange(n_nodes), np.arange(n_nodes)] = 0.0  # no self-coupling
    freq = rng.uniform(FREQ_LOW, FREQ_HIGH, size=(count, n_nodes))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(count, n_nodes))
    return KuramotoInitial(coupling, freq, phase)


def _rate(phase: np.ndarray, freq: np.ndarray, coupling: np.ndarray) -> np.ndarray:
    """dphi/dt for a batch: phase, freq `[trajectories, oscillators]`, coupling receiver-major."""
    # diff[b, i, j] = phi_j - phi_i: oscillator j's pull on receiver i.
    diff = phase[:, None, :] - phase[:, :, None]
    return freq + (coupling * np.sin(diff)).sum(axis=-1)


def integrate(init: KuramotoInitial, grid_points: int, substeps: int = 4) -> np.ndarray:
    """Phases `[trajectories, grid_points, oscillators]` on the grid t = 0, 0.01, 0.02, ...

    Classical RK4 with `substeps` equal steps per grid interval, one loop over time for the batch.
    """
    if substeps < 1:
        raise ValueError(f"kuramoto: substeps must be at least 1, got {substeps}")
    h = GRID_DT / substeps
    out = np.empty((init.count, grid_points, init.freq.shape[-1]))
    phase = init.phase.astype(np.float64, copy=True)
    out[:, 0] = phase
    for t in range(1, grid_points):
        for _ in range(substeps):
            k1 = _rate(phase, init.freq, init.coupling)
            k2 = _rate(phase + 0.5 * h * k1, init.freq, init.coupling)
            k3 = _rate(phase + 0.5 * h * k2, init.freq, init.coupling)
            k4 = _rate(phase + h * k3, init.freq, init.coupling)
            phase = phase + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out[:, t] = phase
    return out


def _scale_per_oscillator(x: np.ndarray) -> np.ndarray:
    """Min-max scale `[trajectories, time, oscillators]` to [-1, 1] over time, per oscillator;
    a constant series maps to -1 (its range is zero)."""
    low = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (x - low) * 2.0 / np.where(span > 0, span, 1.0) - 1.0, -1.0)


def features(init: KuramotoInitial, phases: np.ndarray, frames: int) -> np.ndarray:
    """Observed features `[tasks, frames, nodes, 4]` (FEATURES) from the grid phases.

    `phases` must hold at least FRAME_EVERY * frames + 1 grid points; the scaling ranges are
    taken over every observed frame the grid allows (the test length), then the first `frames`
    are kept.
    """
    grid = phases.shape[1]
    available = (grid - 1 + FRAME_EVERY - 1) // FRAME_EVERY  # frames with a forward difference
    if frames > available:
        raise ValueError(f"kuramoto: {frames} frames need {FRAME_EVERY * (frames - 1) + 2} grid points, got {grid}")
    rate = np.diff(phases, axis=1)[:, ::FRAME_EVERY] / GRID_DT  # [trajectories, available, oscillators]
    phase = phases[:, :-1][:, ::FRAME_EVERY]                     # same frames
    rate = _scale_per_oscillator(rate)
    isolated = init.coupling.sum(axis=-1) == 0                    # [trajectories, oscillators]: no incoming edge
    rate = np.where(isolated[:, None, :], 0.0, rate)
    sin_phi = np.sin(phase)
    phase = _scale_per_oscillator(phase)
    freq = (init.freq - FREQ_LOW) * 2.0 / (FREQ_HIGH - FREQ_LOW) - 1.0
    freq = np.broadcast_to(freq[:, None, :], rate.shape)         # repeated over time
    stacked = np.stack([rate, sin_phi, phase, freq], axis=-1)   # [tasks, available, nodes, 4]
    return stacked[:, :frames].astype(np.float32)


def simulate(init: KuramotoInitial, frames: int, test_frames: int = 99, substeps: int = 4) -> np.ndarray:
    """Features `[tasks, frames, nodes, 4]` scaled over a `test_frames`-long trajectory, as the
    public generators scale train and valid trajectories (99 frames: 1000 grid points)."""
    if frames > test_frames:
        raise ValueError(f"kuramoto: frames {frames} exceed test_frames {test_frames}")
    grid = FRAME_EVERY * (test_frames + 1)  # the public grid: (test_frames + 1) frames of 10 points
    return features(init, integrate(init, grid, substeps), frames)
