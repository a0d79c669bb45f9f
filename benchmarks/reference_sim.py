"""A per-trajectory generator in the style of the original NRI script (DATA.md A1, A2).

Written here for two uses: the baseline that `benchmarks/simulate.py` times against the
vectorized generator, and the reference that the bit-exactness tests compare against. It follows
the original's structure: one trajectory at a time, a Python loop over time steps with ~15 small
numpy operations on `[2, balls]` arrays, edge/charge sampling with `np.random.choice`, two
zero-scaled noise draws, and files laid out as the original writes them. It draws from the RNG
it is given (a `RandomState`, whose stream equals the global one after `np.random.seed`).
"""
from __future__ import annotations

import numpy as np

BOX, DT = 5.0, 0.001
MAX_F = 0.1 / DT
PARAMS = {  # loc_std, vel_norm, interaction_strength
    "springs": (0.5, 0.5, 0.1),
    "charged": (1.0, 0.5, 1.0),
}


def _clamp(loc, vel):
    assert np.all(loc < BOX * 3) and np.all(loc > -BOX * 3)
    over = loc > BOX
    loc[over] = 2 * BOX - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -BOX
    loc[under] = -2 * BOX - loc[under]
    vel[under] = np.abs(vel[under])
    return loc, vel


def _l2(a, b):
    a_norm = (a**2).sum(axis=1).reshape(a.shape[0], 1)
    b_norm = (b**2).sum(axis=1).reshape(1, b.shape[0])
    return a_norm + b_norm - 2 * a.dot(b.transpose())


def _force(sim, edges, loc, n, strength):
    with np.errstate(divide="ignore", invalid="ignore"):
        if sim == "springs":
            size = -strength * edges
        else:
            size = strength * edges / np.power(_l2(loc.transpose(), loc.transpose()), 3.0 / 2.0)
        np.fill_diagonal(size, 0)
    f = (
        size.reshape(1, n, n)
        * np.concatenate(
            (
                np.subtract.outer(loc[0, :], loc[0, :]).reshape(1, n, n),
                np.subtract.outer(loc[1, :], loc[1, :]).reshape(1, n, n),
            )
        )
    ).sum(axis=-1)
    f[f > MAX_F] = MAX_F
    f[f < -MAX_F] = -MAX_F
    return f


def sample_trajectory(sim, rs, n=5, length=5000, sample_freq=100):
    """One trajectory, as the original `sample_trajectory`. Returns loc, vel `[frames, 2, n]`, edges."""
    loc_std, vel_norm, strength = PARAMS[sim]
    t_save = int(length / sample_freq - 1)
    if sim == "springs":
        edges = rs.choice(np.array([0.0, 0.5, 1.0]), size=(n, n), p=[0.5, 0, 0.5])
        edges = np.tril(edges) + np.tril(edges, -1).T
        np.fill_diagonal(edges, 0)
    else:
        charges = rs.choice(np.array([-1.0, 0.0, 1.0]), size=(n, 1), p=[0.5, 0, 0.5])
        edges = charges.dot(charges.transpose())
    loc = np.zeros((t_save, 2, n))
    vel = np.zeros((t_save, 2, n))
    loc_next = rs.randn(2, n) * loc_std
    vel_next = rs.randn(2, n)
    v_norm = np.sqrt((vel_next**2).sum(axis=0)).reshape(1, -1)
    vel_next = vel_next * vel_norm / v_norm
    loc[0, :, :], vel[0, :, :] = _clamp(loc_next, vel_next)
    counter = 0
    vel_next += DT * _force(sim, edges, loc_next, n, strength)
    for i in range(1, length):
        loc_next += DT * vel_next
        loc_next, vel_next = _clamp(loc_next, vel_next)
        if i % sample_freq == 0:
            loc[counter, :, :], vel[counter, :, :] = loc_next, vel_next
            counter += 1
        vel_next += DT * _force(sim, edges, loc_next, n, strength)
    loc += rs.randn(t_save, 2, n) * 0.0
    vel += rs.randn(t_save, 2, n) * 0.0
    return loc, vel, edges


def generate(sim, rs, num_sims, n=5, length=5000, sample_freq=100):
    """The original `generate_dataset`: stacked loc, vel `[sims, frames, 2, n]` and edges."""
    out = [sample_trajectory(sim, rs, n, length, sample_freq) for _ in range(num_sims)]
    return tuple(np.stack(x) for x in zip(*out))


def generate_splits(sim, seed, num_train, num_valid, num_test, n=5, length=5000, length_test=10000, sample_freq=100):
    """All three splits from one seeded stream, as the original script; keys as its file names."""
    rs = np.random.RandomState(seed)
    files = {}
    for split, count, t in (("train", num_train, length), ("valid", num_valid, length), ("test", num_test, length_test)):
        loc, vel, edges = generate(sim, rs, count, n, t, sample_freq)
        suffix = f"_{sim}{n}"
        files[f"loc_{split}{suffix}.npy"] = loc
        files[f"vel_{split}{suffix}.npy"] = vel
        files[f"edges_{split}{suffix}.npy"] = edges
    return files
