"""The vectorized simulators against a per-trajectory loop in the original's style, bit for bit."""
import numpy as np
import pytest
import reference_sim as ref

from nri_ray import simulate


@pytest.mark.parametrize("sim", ["springs", "charged"])
@pytest.mark.parametrize("n_balls", [3, 5, 10])
def test_batched_equals_original_loop_bit_for_bit(sim, n_balls):
    length, freq, count, seed = 1500, 100, 6, 11
    rs = np.random.RandomState(seed)
    loc_ref, vel_ref, edges_ref = ref.generate(sim, rs, count, n_balls, length, freq)
    (init,) = simulate.draw_initial_nri_exact(sim, n_balls, [(count, 14)], seed)
    loc, vel = simulate.simulate(sim, init, length, freq)
    assert loc.shape == vel.shape == (count, 14, 2, n_balls)
    np.testing.assert_array_equal(init.edges, edges_ref)
    np.testing.assert_array_equal(loc, loc_ref)
    np.testing.assert_array_equal(vel, vel_ref)


def test_exact_replay_over_three_splits_matches_original_script():
    files = ref.generate_splits("springs", 5, 4, 3, 2, n=5, length=1000, length_test=2000)
    inits = simulate.draw_initial_nri_exact("springs", 5, [(4, 9), (3, 9), (2, 19)], 5)
    for split, init, length in zip(("train", "valid", "test"), inits, (1000, 1000, 2000)):
        loc, vel = simulate.simulate("springs", init, length, 100)
        np.testing.assert_array_equal(loc, files[f"loc_{split}_springs5.npy"])
        np.testing.assert_array_equal(vel, files[f"vel_{split}_springs5.npy"])
        np.testing.assert_array_equal(init.edges, files[f"edges_{split}_springs5.npy"])


def test_chunks_and_workers_do_not_change_the_result():
    init = simulate.draw_initial("charged", 5, 7, np.random.default_rng(0))
    whole = simulate.simulate("charged", init, 1000, 100)
    parts = {}
    simulate.simulate_chunks("charged", init, 1000, 100, chunk_size=3, workers=2,
                             on_chunk=lambda start, loc, vel: parts.__setitem__(start, (loc, vel)))
    assert sorted(parts) == [0, 3, 6]
    np.testing.assert_array_equal(np.concatenate([parts[s][0] for s in sorted(parts)]), whole[0])
    np.testing.assert_array_equal(np.concatenate([parts[s][1] for s in sorted(parts)]), whole[1])


def test_same_seed_same_draws_and_different_seed_different():
    a = simulate.draw_initial("springs", 5, 50, np.random.default_rng(1))
    b = simulate.draw_initial("springs", 5, 50, np.random.default_rng(1))
    c = simulate.draw_initial("springs", 5, 50, np.random.default_rng(2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.loc, c.loc)


def test_initial_distributions_follow_the_benchmark():
    init = simulate.draw_initial("springs", 5, 4000, np.random.default_rng(0))
    speed = np.sqrt((init.vel**2).sum(axis=1))  # [trajectories, balls]
    np.testing.assert_allclose(speed, 0.5, rtol=1e-12)  # every ball's speed is exactly vel_norm
    assert abs(init.loc.std() - 0.5) < 0.01
    off = init.edges[:, ~np.eye(5, dtype=bool)]
    assert set(np.unique(off)) == {0.0, 1.0} and abs(off.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(init.edges, init.edges.transpose(0, 2, 1))  # undirected springs
    charged = simulate.draw_initial("charged", 5, 100, np.random.default_rng(0))
    assert set(np.unique(charged.edges)) == {-1.0, 1.0}
    np.testing.assert_array_equal(charged.edges[:, np.arange(5), np.arange(5)], 1.0)


def test_springs_conserve_momentum_away_from_the_walls():
    # Spring forces are pairwise equal and opposite, so total momentum is constant while no
    # ball reaches a wall (small start box, short horizon).
    init = simulate.draw_initial("springs", 5, 20, np.random.default_rng(4))
    init = init._replace(loc=init.loc * 0.5)
    loc, vel = simulate.simulate("springs", init, 2000, 100)
    assert np.abs(loc).max() < 5
    momentum = vel.sum(axis=-1)  # [trajectories, frames, 2]
    np.testing.assert_allclose(momentum, np.broadcast_to(momentum[:, :1], momentum.shape), rtol=0, atol=1e-12)
    assert np.abs(vel - vel[:, :1]).max() > 1e-3  # and the springs did act


def test_charged_forces_are_clipped_and_walls_reflect():
    # Two opposite charges almost on top of each other: the force clip must keep things finite.
    init = simulate.InitialConditions(
        edges=np.array([[[1.0, -1.0], [-1.0, 1.0]]]),
        loc=np.array([[[4.9, 4.9001], [0.0, 0.0]]]),
        vel=np.array([[[0.5, -0.5], [0.0, 0.0]]]),
    )
    loc, vel = simulate.simulate("charged", init, 2000, 100)
    assert np.isfinite(loc).all() and np.abs(loc).max() <= 5.0


def test_length_must_be_a_multiple_of_sample_freq():
    with pytest.raises(ValueError, match="multiple"):
        simulate.frames_for(1050, 100)
