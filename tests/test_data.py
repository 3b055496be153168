"""The embedded task: deterministic, split by base digit, and the search's larger val split."""
from __future__ import annotations

import numpy as np

from deploy_nas.data import RENDERS, SEARCH_VAL_RENDERS, cluttered_digits_splits, search_splits


def test_search_val_adds_renderings_of_the_val_digits_and_keeps_train_and_test():
    splits = cluttered_digits_splits(16, 3)
    search = search_splits(16, 3)
    n_val = len(splits["val"]) // RENDERS["val"]
    assert len(search["val"]) == SEARCH_VAL_RENDERS * n_val
    assert np.array_equal(search["val"].images[:len(splits["val"])], splits["val"].images)  # the training's val first
    assert np.array_equal(search["test"].images, splits["test"].images)
    labels = search["val"].labels.reshape(SEARCH_VAL_RENDERS, n_val)  # each rendering: the same digits in order
    assert (labels == labels[0]).all()
    extra = search["val"].images[len(splits["val"]):]
    assert not any(np.array_equal(extra[i], splits["val"].images[i]) for i in range(0, n_val, 37))  # new renderings
    again = search_splits.__wrapped__(16, 3)  # regenerated, not cached: bit-identical
    assert np.array_equal(again["val"].images, search["val"].images)
