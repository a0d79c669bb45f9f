"""The batched Kuramoto simulator: draws, the integrator's accuracy, coupling direction, features."""
import numpy as np
import pytest

from nri_ray import graph, kuramoto as K


def _init(n=5, count=6, seed=0):
    return K.draw_initial(n, count, np.random.default_rng(seed))


def test_draws_are_seeded_and_in_range():
    a, b = _init(seed=3), _init(seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a.coupling.shape == (6, 5, 5) and a.freq.shape == a.phase.shape == (6, 5)
    assert np.all(a.coupling[:, np.arange(5), np.arange(5)] == 0)
    assert set(np.unique(a.coupling)) <= {0.0, 1.0}
    assert a.freq.min() >= 1 and a.freq.max() < 10 and a.phase.min() >= 0 and a.phase.max() < 2 * np.pi
    big = K.draw_initial(5, 2000, np.random.default_rng(1))
    off = graph.matrix_to_edges(big.coupling)
    assert abs(off.mean() - 0.5) < 0.01  # each directed edge a fair coin
    with pytest.raises(ValueError, match="n_nodes must be at least 2"):
        K.draw_initial(1, 3, np.random.default_rng(0))


def test_rk4_matches_a_16x_finer_step_and_is_exact_without_coupling():
    init = _init(n=5, count=8, seed=2)
    coarse = K.integrate(init, 1000, substeps=4)
    fine = K.integrate(init, 1000, substeps=64)
    assert np.abs(coarse - fine).max() < 1e-6
    free = init._replace(coupling=np.zeros_like(init.coupling))
    phases = K.integrate(free, 200)
    t = np.arange(200) * K.GRID_DT
    np.testing.assert_allclose(phases, free.phase[:, None, :] + free.freq[:, None, :] * t[None, :, None], atol=1e-9)


def test_an_edge_j_to_i_moves_i_and_not_j():
    coupling = np.zeros((1, 2, 2))
    coupling[0, 0, 1] = 1.0  # oscillator 1 pulls oscillator 0
    init = K.KuramotoInitial(coupling, np.array([[2.0, 5.0]]), np.array([[0.0, 1.0]]))
    base = K.integrate(init, 300)
    sender_changed = K.integrate(init._replace(freq=np.array([[2.0, 6.0]])), 300)
    receiver_changed = K.integrate(init._replace(freq=np.array([[3.0, 5.0]])), 300)
    assert np.abs(sender_changed[0, :, 0] - base[0, :, 0]).max() > 1e-2  # the receiver feels the sender
    np.testing.assert_allclose(receiver_changed[0, :, 1], base[0, :, 1], atol=1e-12)  # the sender feels nothing
    # The project's edge matrix is sender-major: [s, r] = 1 for s -> r, so the label of 1 -> 0 is set.
    labels = graph.matrix_to_edges(init.edge_matrix())
    senders, receivers = graph.edge_index(2)
    assert labels[0, (senders == 1) & (receivers == 0)][0] == 1 and labels[0, (senders == 0) & (receivers == 1)][0] == 0


def test_features_scaled_and_cut_like_the_public_generators():
    init = _init(n=5, count=50, seed=4)
    test = K.simulate(init, 99)
    train = K.simulate(init, 49)
    assert test.shape == (50, 99, 5, 4) and train.shape == (50, 49, 5, 4) and test.dtype == np.float32
    np.testing.assert_array_equal(train, test[:, :49])  # one scale for train and test frames
    assert test.min() >= -1 - 1e-6 and test.max() <= 1 + 1e-6
    # w: the intrinsic frequency mapped from [1, 10] to [-1, 1], constant over time.
    np.testing.assert_allclose(test[:, :, :, 3], np.broadcast_to(((init.freq - 1) * 2 / 9 - 1)[:, None], (50, 99, 5)),
                               atol=1e-6)
    # sin phi of the grid phase at every 10th point.
    phases = K.integrate(init, 1000)
    np.testing.assert_allclose(test[:, :, :, 1], np.sin(phases[:, :990:10]), atol=1e-6)
    # An oscillator with no incoming edge has a zero rate feature; the rest span [-1, 1].
    isolated = init.coupling.sum(-1) == 0
    assert isolated.any()
    assert np.all(test[..., 0].transpose(0, 2, 1)[isolated] == 0)
    full = K.features(init, phases, 100)[..., 0].transpose(0, 2, 1)[~isolated]
    np.testing.assert_allclose(full.min(axis=1), -1, atol=1e-6)
    np.testing.assert_allclose(full.max(axis=1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="exceed test_frames"):
        K.simulate(init, 100)
