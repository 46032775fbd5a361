"""The ImageNet -> CIFAR-10 table (no TensorFlow needed)."""

from __future__ import annotations

import itertools

import numpy as np

from common.labels import CIFAR10_CLASSES
from inference.imagenet_cifar import IMAGENET_NUM_CLASSES, IMAGENET_TO_CIFAR10, mapping_matrix


def test_every_cifar_class_is_mapped_and_nonempty():
    assert set(IMAGENET_TO_CIFAR10) == set(CIFAR10_CLASSES)
    for name, indices in IMAGENET_TO_CIFAR10.items():
        assert indices, name
        assert len(set(indices)) == len(indices), f"{name} lists an index twice"


def test_indices_in_range_and_disjoint():
    for name, indices in IMAGENET_TO_CIFAR10.items():
        assert all(isinstance(i, int) and 0 <= i < IMAGENET_NUM_CLASSES for i in indices), name
    for (a, ia), (b, ib) in itertools.combinations(IMAGENET_TO_CIFAR10.items(), 2):
        assert not set(ia) & set(ib), f"{a} and {b} share {sorted(set(ia) & set(ib))}"


def test_well_known_anchors():
    # Spot checks against the Keras ImageNet index (see the table in imagenet_cifar.py).
    assert set(range(151, 269)) == set(IMAGENET_TO_CIFAR10["dog"])  # Chihuahua .. Mexican hairless
    assert {281, 282, 283, 284, 285} == set(IMAGENET_TO_CIFAR10["cat"])
    assert {404, 895} <= set(IMAGENET_TO_CIFAR10["airplane"])  # airliner, warplane
    assert {30, 31, 32} == set(IMAGENET_TO_CIFAR10["frog"])
    assert 510 in IMAGENET_TO_CIFAR10["ship"] and 867 in IMAGENET_TO_CIFAR10["truck"]
    assert 817 in IMAGENET_TO_CIFAR10["automobile"] and 339 in IMAGENET_TO_CIFAR10["horse"]


def test_matrix_folds_probabilities():
    m = mapping_matrix()
    assert m.shape == (IMAGENET_NUM_CLASSES, len(CIFAR10_CLASSES))
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert (m.sum(axis=1) <= 1).all()  # each ImageNet class feeds at most one CIFAR class
    probs = np.zeros((2, IMAGENET_NUM_CLASSES), dtype=np.float32)
    probs[0, [207, 208]] = 0.4  # golden + Labrador retriever
    probs[0, 281] = 0.2  # tabby
    probs[1, 963] = 0.9  # pizza: no CIFAR class
    probs[1, 404] = 0.1  # airliner
    folded = probs @ m
    assert CIFAR10_CLASSES[int(folded[0].argmax())] == "dog"
    np.testing.assert_allclose(folded[0, CIFAR10_CLASSES.index("dog")], 0.8, rtol=1e-6)
    normalised = folded[1] / folded[1].sum()
    assert CIFAR10_CLASSES[int(normalised.argmax())] == "airplane" and normalised.max() == 1.0
