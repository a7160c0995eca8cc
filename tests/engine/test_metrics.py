"""Class-wise metrics on hand-made predictions: exact numbers, summaries, empty classes."""

import math

import numpy as np
import pytest
import torch

from fairat.engine.metrics import accuracy_from_counts, classwise_accuracy, classwise_counts, summarize

NAMES = ["cat", "dog", "ship"]
# cat: 2 of 4 right, dog: 1 of 1, ship: 0 of 3
LABELS = [0, 0, 0, 0, 1, 2, 2, 2]
CORRECT = [True, False, True, False, True, False, False, False]


def test_classwise_accuracy_exact_and_keyed_by_name():
    acc = classwise_accuracy(CORRECT, LABELS, NAMES)
    assert acc == {"cat": 0.5, "dog": 1.0, "ship": 0.0}
    assert list(acc) == NAMES


def test_accepts_numpy_and_torch():
    expected = classwise_accuracy(CORRECT, LABELS, NAMES)
    assert classwise_accuracy(np.array(CORRECT), np.array(LABELS), NAMES) == expected
    assert classwise_accuracy(torch.tensor(CORRECT), torch.tensor(LABELS), NAMES) == expected
    # 0/1 integers work as flags too
    assert classwise_accuracy(torch.tensor(CORRECT).int(), torch.tensor(LABELS), NAMES) == expected


def test_counts_are_integers_and_merge_exactly():
    hits, totals = classwise_counts(CORRECT, LABELS, 3)
    assert hits.dtype == np.int64 and totals.dtype == np.int64
    assert hits.tolist() == [2, 1, 0] and totals.tolist() == [4, 1, 3]
    # two shards summed give the same counts as the whole
    h1, t1 = classwise_counts(CORRECT[:5], LABELS[:5], 3)
    h2, t2 = classwise_counts(CORRECT[5:], LABELS[5:], 3)
    assert (h1 + h2).tolist() == hits.tolist() and (t1 + t2).tolist() == totals.tolist()
    assert accuracy_from_counts(h1 + h2, t1 + t2, NAMES) == {"cat": 0.5, "dog": 1.0, "ship": 0.0}


def test_zero_example_class_names_it():
    with pytest.raises(ValueError, match="bird"):
        classwise_accuracy([True, False], [0, 0], ["cat", "bird"])
    with pytest.raises(ValueError, match="dog"):
        accuracy_from_counts([1, 0], [2, 0], ["cat", "dog"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        classwise_counts([True], [3], 3)
    with pytest.raises(ValueError, match="entries"):
        classwise_counts([True, False], [0], 3)
    with pytest.raises(ValueError):
        accuracy_from_counts([3], [2], ["cat"])
    with pytest.raises(ValueError):
        summarize({})


def test_summarize_exact():
    s = summarize({"cat": 0.5, "dog": 1.0, "ship": 0.0})
    assert s["average"] == pytest.approx(0.5)
    assert (s["worst"], s["worst_class"]) == (0.0, "ship")
    assert (s["best"], s["best_class"]) == (1.0, "dog")
    assert s["gap"] == 1.0
    # population std of (0.5, 1, 0): sqrt(((0)^2 + 0.5^2 + 0.5^2) / 3)
    assert s["std"] == pytest.approx(math.sqrt(0.5 / 3))
    assert all(isinstance(v, (float, str)) for v in s.values())


def test_summarize_ties_and_single_class():
    s = summarize({"a": 0.2, "b": 0.2, "c": 0.9})
    assert s["worst_class"] == "a"
    one = summarize({"only": 0.7})
    assert one["gap"] == 0.0 and one["std"] == 0.0 and one["worst_class"] == "only"
