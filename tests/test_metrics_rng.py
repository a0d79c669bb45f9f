"""Edge accuracy up to relabeling; counter-based random numbers."""
import numpy as np
import torch

from nri_ray import rng
from nri_ray.metrics import confusion, edge_accuracy, matched_accuracy


def test_k2_accuracy_is_invariant_to_relabeling():
    labels = np.array([[0, 1, 1, 0], [1, 1, 0, 0]])
    assert edge_accuracy(labels, labels, 2) == 1.0
    assert edge_accuracy(1 - labels, labels, 2) == 1.0  # the global flip
    mostly = labels.copy()
    mostly[0, 0] = 1
    assert edge_accuracy(1 - mostly, labels, 2) == 7 / 8


def test_one_global_matching_not_one_per_task():
    labels = np.array([[0, 1, 0, 1], [0, 1, 0, 1]])
    structures = np.array([[0, 1, 0, 1], [1, 0, 1, 0]])  # task 2 flipped: per-task max would say 1.0
    assert edge_accuracy(structures, labels, 2) == 0.5


def test_k3_maps_modules_to_relations():
    labels = np.array([[0, 0, 1, 1, 1, 0]])
    structures = np.array([[2, 2, 0, 1, 1, 2]])  # modules 0 and 1 both carry relation 1
    assert edge_accuracy(structures, labels, 3) == 1.0
    conf = confusion(structures, labels, 3)
    assert conf.tolist() == [[0, 1], [0, 2], [3, 0]]
    assert matched_accuracy(np.array([[5, 1], [2, 4], [0, 0]])) == 9 / 12


def test_k_less_than_relations_uses_injective_matching():
    conf = np.array([[1, 5, 0], [4, 0, 0]])  # 2 modules, 3 relation types
    assert matched_accuracy(conf) == 9 / 10


def test_random_numbers_depend_only_on_coordinates():
    ids = torch.tensor([5, 9, 11, 400])
    a = rng.uniform(3, ids, 7, rng.NODE, 6)
    b = rng.uniform(3, ids[[2, 0]], 7, rng.NODE, 6)  # other batch composition and order
    torch.testing.assert_close(b, a[[2, 0]])
    assert not torch.equal(a, rng.uniform(3, ids, 8, rng.NODE, 6))
    assert not torch.equal(a, rng.uniform(4, ids, 7, rng.NODE, 6))
    assert not torch.equal(a, rng.uniform(3, ids, 7, rng.EDGES, 6))
    many = rng.uniform(0, torch.arange(20000), 0, rng.ACCEPT, 5)
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.005
    assert abs(many.std().item() - (1 / 12) ** 0.5) < 0.005
