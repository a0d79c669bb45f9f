"""Springs and charged-particle simulators of the NRI benchmark, vectorized over trajectories.

Implements the data generator of Kipf et al., "Neural Relational Inference for Interacting
Systems" (arXiv:1802.04687, `data/synthetic_sim.py`), exactly as `shared/spec/DATA.md` A1
describes it: 2-D balls (or, beyond the benchmark, balls in any number of spatial dimensions:
`draw_initial(..., dims=3)`) in a box with reflecting walls at +-5, dt = 0.001, kick-drift
symplectic Euler, one state saved every `sample_freq` steps with the first saved frame
overwritten, forces clipped per component at 0.1 / dt.

The original loops over trajectories in Python; here one numpy time loop advances a whole
batch of trajectories at once. Every arithmetic operation is the original's, in the original
order, on arrays with the original's inner layout, so that the same initial conditions give
the same bits (DATA.md A7): squared distances of charged particles are |a|^2 + |b|^2 - 2 a.b
with a (batched) matmul, and forces are summed over the last, contiguous axis of length n.

Layout inside this file is the original's, `[trajectories, space, balls]` per state (space = 2)
and `[trajectories, frames, space, balls]` for saved frames; `data.py` converts once to the
project-wide `[tasks, time, nodes, dims]`.

Randomness: `draw_initial` takes a `numpy.random.Generator`; `draw_initial_nri_exact` replays
the original script's legacy RNG stream (`np.random.seed(seed)`) trajectory by trajectory,
including the two discarded noise draws, through its own `RandomState` (the global RNG is
never touched).
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, NamedTuple

import numpy as np

SIMULATORS = ("springs", "charged")


@dataclasses.dataclass(frozen=True)
class SimSpec:
    """Physical constants of one simulator (DATA.md A1)."""

    name: str
    loc_std: float
    vel_norm: float
    interaction_strength: float
    box_size: float = 5.0
    dt: float = 0.001

    @property
    def max_force(self) -> float:
        # The original clips every force component at 0.1 / dt.
        return 0.1 / self.dt

    @property
    def edge_values(self) -> tuple[float, ...]:
        """Values the original `edges` matrix takes off the diagonal."""
        return (0.0, 1.0) if self.name == "springs" else (-1.0, 1.0)

    @property
    def edge_diagonal(self) -> float:
        """Diagonal of the original `edges` matrix: springs zero it, charged has q_i^2 = 1."""
        return 0.0 if self.name == "springs" else 1.0


SPECS = {
    "springs": SimSpec("springs", loc_std=0.5, vel_norm=0.5, interaction_strength=0.1),
    "charged": SimSpec("charged", loc_std=1.0, vel_norm=0.5, interaction_strength=1.0),
}


def get_spec(sim: str) -> SimSpec:
    if sim not in SPECS:
        raise ValueError(f"unknown simulator {sim!r}: expected one of {', '.join(SIMULATORS)}")
    return SPECS[sim]


def frames_for(length: int, sample_freq: int) -> int:
    """Number of saved frames: T / sample_freq - 1 (the first saved frame is overwritten)."""
    if length % sample_freq != 0:
        raise ValueError(f"length {length} is not a multiple of sample_freq {sample_freq}")
    return length // sample_freq - 1


class InitialConditions(NamedTuple):
    """Everything random about a batch of trajectories.

    Shape:
        edges: `[trajectories, balls, balls]` float64, the original `edges` matrix (springs:
            symmetric 0/1 with zero diagonal; charged: q q^T in {-1, +1}).
        loc: `[trajectories, space, balls]` float64, initial positions (space = 2 in the benchmark).
        vel: `[trajectories, space, balls]` float64, initial velocities (already rescaled).
    """

    edges: np.ndarray
    loc: np.ndarray
    vel: np.ndarray

    @property
    def count(self) -> int:
        """Number of trajectories."""
        return self.edges.shape[0]

    def slice(self, start: int, stop: int) -> "InitialConditions":
        return InitialConditions(self.edges[start:stop], self.loc[start:stop], self.vel[start:stop])


def _rescale_velocity(spec: SimSpec, vel: np.ndarray) -> np.ndarray:
    # The original: v_norm = sqrt((v ** 2).sum(axis=0)); v = v * vel_norm / v_norm, per ball.
    v_norm = np.sqrt((vel**2).sum(axis=-2, keepdims=True))  # [trajectories, 1, balls]
    return vel * spec.vel_norm / v_norm


def _edges_from_draw(spec: SimSpec, draw: np.ndarray) -> np.ndarray:
    """Turn the original's `np.random.choice` draw into its `edges` matrix (batched)."""
    n = draw.shape[-1] if spec.name == "springs" else draw.shape[-2]
    if spec.name == "springs":
        # draw: [trajectories, balls, balls]; symmetrize from the lower triangle, zero diagonal.
        lower = np.tril(draw)
        edges = lower + np.swapaxes(np.tril(draw, -1), -1, -2)
        edges[..., np.arange(n), np.arange(n)] = 0.0
        return edges
    # draw: charges [trajectories, balls, 1]; edges = q q^T.
    return np.matmul(draw, np.swapaxes(draw, -1, -2))


def draw_initial(sim: str, n_balls: int, count: int, rng: np.random.Generator, dims: int = 2) -> InitialConditions:
    """Draw `count` trajectories' initial conditions at once from a numpy Generator.

    Same distributions as the original (DATA.md A1), not the same stream: use
    `draw_initial_nri_exact` for bit-exact replay of the original script. `dims` spatial
    dimensions (the benchmark's 2; any other number draws each coordinate the same way).
    """
    spec = get_spec(sim)
    if sim == "springs":
        draw = rng.choice(np.array([0.0, 1.0]), size=(count, n_balls, n_balls))
    else:
        draw = rng.choice(np.array([-1.0, 1.0]), size=(count, n_balls, 1))
    edges = _edges_from_draw(spec, draw)
    loc = rng.standard_normal((count, dims, n_balls)) * spec.loc_std
    vel = _rescale_velocity(spec, rng.standard_normal((count, dims, n_balls)))
    return InitialConditions(edges, loc, vel)


def draw_initial_nri_exact(
    sim: str, n_balls: int, counts_and_frames: list[tuple[int, int]], seed: int
) -> list[InitialConditions]:
    """Replay the original generator's RNG stream, split after split.

    The original seeds the global legacy RNG once, then for every trajectory of train, valid and
    test in turn draws: the edge (or charge) choice, randn(2, n) positions, randn(2, n)
    velocities, and two randn(frames, 2, n) noise arrays multiplied by zero. Those draws are
    replayed here in that order from a `RandomState(seed)`, which yields the same stream as
    `np.random.seed(seed)` without touching the global RNG. The loop is over trajectories because
    the stream is sequential; it costs ~40 us per trajectory, the simulation none of it.

    Args:
        counts_and_frames: `(trajectories, saved frames)` for each split, in generation order.
    Returns:
        One `InitialConditions` per split.
    """
    spec = get_spec(sim)
    rs = np.random.RandomState(seed)
    n = n_balls
    if sim == "springs":
        values, size, p = np.array([0.0, 0.5, 1.0]), (n, n), [0.5, 0.0, 0.5]
    else:
        values, size, p = np.array([-1.0, 0.0, 1.0]), (n, 1), [0.5, 0.0, 0.5]
    out = []
    for count, frames in counts_and_frames:
        draws = np.empty((count,) + size)
        loc = np.empty((count, 2, n))
        vel = np.empty((count, 2, n))
        for i in range(count):
            draws[i] = rs.choice(values, size=size, p=p)
            loc[i] = rs.randn(2, n) * spec.loc_std
            vel[i] = rs.randn(2, n)
            rs.randn(frames, 2, n)  # the original's zero-scaled location noise
            rs.randn(frames, 2, n)  # and velocity noise
        out.append(InitialConditions(_edges_from_draw(spec, draws), loc, _rescale_velocity(spec, vel)))
    return out


def _clamp(spec: SimSpec, loc: np.ndarray, vel: np.ndarray) -> None:
    """Reflect off the walls in place, exactly as the original `_clamp` (over first, then under)."""
    box = spec.box_size
    if np.any(np.abs(loc) >= 3 * box):
        raise FloatingPointError("a particle left the box by more than one box width in one step")
    over = loc > box
    np.copyto(loc, 2 * box - loc, where=over)
    np.copyto(vel, -np.abs(vel), where=over)
    under = loc < -box
    np.copyto(loc, -2 * box - loc, where=under)
    np.copyto(vel, np.abs(vel), where=under)


def _sum_last_axis_is_left_to_right(n: int) -> bool:
    """Whether numpy's `x.sum(axis=-1)` over a contiguous axis of length n adds left to right.

    The original sums forces with `.sum(axis=-1)` over n balls. Summing the n slices one after
    another on a trajectory-last layout is much faster, but it is only the same arithmetic when
    numpy itself adds left to right (it does for small n; pairwise summation starts at 8+).
    Checked once per n on random data, so the fast path is never taken where it would differ.
    """
    if n not in _SUM_ORDER_CACHE:
        rows = np.random.default_rng(n).standard_normal((4096, n)) * np.logspace(-3, 3, n)
        chain = rows[:, 0].copy()
        for j in range(1, n):
            chain += rows[:, j]
        _SUM_ORDER_CACHE[n] = bool(np.array_equal(chain, rows.sum(axis=-1)))
    return _SUM_ORDER_CACHE[n]


_SUM_ORDER_CACHE: dict[int, bool] = {}


class _ForceField:
    """Forces on every ball of a batch, bit for bit as the original computes them.

    Works on a trajectory-last layout, `[space, balls, trajectories]`, so that every elementwise
    operation runs over long contiguous vectors; only the order of the arithmetic matters for
    exactness, and that is the original's.
    """

    def __init__(self, spec: SimSpec, edges: np.ndarray, space: int = 2):
        batch, n, _ = edges.shape
        self.spec, self.n = spec, n
        self.left_to_right = _sum_last_axis_is_left_to_right(n)
        if spec.name == "springs":
            # forces_size = -strength * edges with zero diagonal: constant over time.
            size = -spec.interaction_strength * edges
            size[:, np.arange(n), np.arange(n)] = 0.0
            self.springs_size = np.ascontiguousarray(size.transpose(1, 2, 0))  # [balls, balls, traj]
        else:
            self.charge_product = spec.interaction_strength * edges  # [trajectories, balls, balls]
        self.diff = np.empty((space, n, n, batch))  # [space, balls i, balls j, trajectories]
        self.force = np.empty((space, n, batch))  # [space, balls, trajectories]

    def _size(self, loc: np.ndarray) -> np.ndarray:
        """forces_size `[balls i, balls j, trajectories]` for the current positions."""
        if self.spec.name == "springs":
            return self.springs_size
        n = self.n
        # The original's `_l2(loc.T, loc.T)` = |a|^2 + |b|^2 - 2 a.b, with the a.b from a
        # (stacked) BLAS matmul as the original's `A.dot(B.T)`: BLAS may fuse multiply-adds,
        # so nothing else gives the same bits (DATA.md A7 (b)).
        loc_b = np.ascontiguousarray(loc.transpose(2, 0, 1))  # [trajectories, space, balls]
        loc_bt = np.swapaxes(loc_b, -1, -2)  # [trajectories, balls, space]
        sq = loc_b[:, 0] ** 2  # [trajectories, balls]: x^2 + y^2 (+ z^2 ...), added in coordinate order
        for d in range(1, loc_b.shape[1]):
            sq = sq + loc_b[:, d] ** 2
        dist = sq[:, :, None] + sq[:, None, :] - 2 * np.matmul(loc_bt, loc_b)  # [traj, balls, balls]
        with np.errstate(divide="ignore", invalid="ignore"):
            size = self.charge_product / np.power(dist, 3.0 / 2.0)
        size[:, np.arange(n), np.arange(n)] = 0.0  # self forces are zero
        return size.transpose(1, 2, 0)  # [balls i, balls j, trajectories] (a view)

    def __call__(self, loc: np.ndarray) -> np.ndarray:
        """Force `[space, balls, trajectories]` on positions `loc` `[space, balls, trajectories]`."""
        size = self._size(loc)
        diff = self.diff
        # diff[d, i, j] = loc[d, i] - loc[d, j]: the original's np.subtract.outer per coordinate.
        np.subtract(loc[:, :, None, :], loc[:, None, :, :], out=diff)
        np.multiply(size[None], diff, out=diff)  # forces_size * diff, [space, i, j, trajectories]
        force = self.force
        if self.left_to_right:
            np.copyto(force, diff[:, :, 0])
            for j in range(1, self.n):  # loop over balls (n is small), each over all trajectories
                force += diff[:, :, j]
        else:
            # numpy's own reduction order, on the original's [.., balls j] contiguous layout.
            force[...] = np.ascontiguousarray(diff.transpose(0, 1, 3, 2)).sum(axis=-1)
        return np.clip(force, -self.spec.max_force, self.spec.max_force, out=force)


def simulate(
    sim: str, init: InitialConditions, length: int, sample_freq: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate a batch of trajectories from their initial conditions.

    Args:
        sim: "springs" or "charged".
        init: initial conditions of the batch.
        length: integration steps T (5000 for train/valid, 10000 for test in the benchmark).
        sample_freq: save one state every this many steps.
    Returns:
        `(loc, vel)`, each `[trajectories, frames, space, balls]` float64 in the original layout,
        frames = length / sample_freq - 1.
    """
    spec = get_spec(sim)
    frames = frames_for(length, sample_freq)
    batch, space, n = init.loc.shape
    # Saved frames, trajectory-last while integrating: [frames, space, balls, trajectories].
    loc_out = np.zeros((frames, space, n, batch))
    vel_out = np.zeros((frames, space, n, batch))
    loc = np.ascontiguousarray(init.loc.transpose(1, 2, 0))  # [space, balls, trajectories]
    vel = np.ascontiguousarray(init.vel.transpose(1, 2, 0))  # [space, balls, trajectories]
    forces = _ForceField(spec, init.edges, space)
    dt = spec.dt
    step_buf = np.empty_like(loc)
    _clamp(spec, loc, vel)
    # The original stores this state as frame 0, but frame 0 is overwritten at step sample_freq.
    vel += np.multiply(dt, forces(loc), out=step_buf)
    counter = 0
    for step in range(1, length):
        loc += np.multiply(dt, vel, out=step_buf)
        _clamp(spec, loc, vel)
        if step % sample_freq == 0:
            loc_out[counter] = loc
            vel_out[counter] = vel
            counter += 1
        vel += np.multiply(dt, forces(loc), out=step_buf)
    # [frames, space, balls, trajectories] -> [trajectories, frames, space, balls], the original layout.
    return (np.ascontiguousarray(loc_out.transpose(3, 0, 1, 2)), np.ascontiguousarray(vel_out.transpose(3, 0, 1, 2)))


def _simulate_chunk(args):
    sim, init, length, sample_freq = args
    return simulate(sim, init, length, sample_freq)


def simulate_chunks(
    sim: str,
    init: InitialConditions,
    length: int,
    sample_freq: int,
    chunk_size: int = 1000,
    workers: int = 1,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> None:
    """Simulate `init` in chunks of `chunk_size`, in order, over `workers` processes.

    Chunks are independent (the simulation consumes no randomness), so the result does not
    depend on `chunk_size` or `workers`. `on_chunk(start, loc, vel)` receives each chunk in order.
    """
    jobs = [(sim, init.slice(a, a + chunk_size), length, sample_freq) for a in range(0, init.count, chunk_size)]
    starts = list(range(0, init.count, chunk_size))
    if workers <= 1 or len(jobs) <= 1:
        results = map(_simulate_chunk, jobs)
        for start, (loc, vel) in zip(starts, results):
            if on_chunk:
                on_chunk(start, loc, vel)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for start, (loc, vel) in zip(starts, pool.map(_simulate_chunk, jobs)):
            if on_chunk:
                on_chunk(start, loc, vel)
