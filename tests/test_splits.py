"""Validation is held out of the training split and decides everything; the test split is
only reported."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SHARED
from incop.config import resolve
from incop.engine.experiment import build_batches
from incop.engine.imp import IMP
from incop.errors import UserError
from incop.workload.data import Batches, load_dataset, validation_split
from incop.workload.models import build_model

#: What decides the evaluation batch size of the splits (auto: no convolution, 256).
MLP = build_model("mlp", 1, 8, 10)


@pytest.mark.parametrize("method", ["incop-gf", "sap-acc"])
def test_no_decision_reads_the_test_split(method):
    config = resolve({"method": method, "levels": 3, "warmup_epochs": 3, "max_epochs": 4})
    dataset = load_dataset("digits")
    splits = build_batches(config, dataset, MLP)
    shuffled = dataset.test_y[
        torch.randperm(len(dataset.test_y), generator=torch.Generator().manual_seed(1))
    ]
    results = []
    for test_y in (dataset.test_y, shuffled):
        torch.manual_seed(config.seed)
        model = build_model(config.model, 1, 8, 10)
        test = Batches(dataset.test_x, test_y, splits.val.batch_size)
        results.append(IMP(config, model, splits.train, splits.val, test_data=test).run())
    a, b = results
    decided = ("remaining_fraction", "epochs", "stop_reason", "val_accuracy", "val_loss")
    assert [[lv[k] for k in decided] for lv in a.levels] == [
        [lv[k] for k in decided] for lv in b.levels
    ]
    for level in range(len(a.levels)):
        assert all(torch.equal(a.level_masks[level][n], b.level_masks[level][n]) for n in a.masks)
    assert [lv.test_accuracy for lv in a.levels] != [lv.test_accuracy for lv in b.levels]
    assert min(lv.test_accuracy for lv in a.levels) > 0.5  # the real labels: a real accuracy


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_validation_split_is_stratified_disjoint_and_complete(counts, fraction, seed):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    train, val = validation_split(labels, fraction, seed)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(labels)))
    for c, n in enumerate(counts):
        in_val = int((labels[val] == c).sum())
        if n >= 2:
            assert 1 <= in_val <= n - 1 and abs(in_val - fraction * n) <= 1
    again = validation_split(labels, fraction, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


DATASETS = [("digits", None)]
if (SHARED / "FashionMNIST").exists():
    DATASETS.append(("fashion-mnist", SHARED / "FashionMNIST"))


@pytest.mark.parametrize("name, folder", DATASETS)
def test_builtin_validation_comes_from_train_and_is_shared_by_methods_and_seeds(name, folder):
    dataset = load_dataset(name, folder)

    def splits(**values):
        return build_batches(resolve({"dataset": name, **values}), dataset, MLP)

    base = splits()
    n_train = len(dataset.train_y)
    assert len(base.val.x) == pytest.approx(0.1 * n_train, abs=10)
    assert len(base.train.x) + len(base.val.x) == n_train
    # validation rows are training rows, none of them also trained on
    train_idx, val_idx = validation_split(dataset.train_y, 0.1, 0)
    assert torch.equal(base.val.x, dataset.train_pixels[val_idx])
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert torch.equal(base.test.x, dataset.test_pixels)
    # The batches normalise what they hold as the whole dataset is normalised.
    assert torch.equal(torch.cat([x for x, _ in base.val]), dataset.train_x[val_idx])
    assert torch.equal(torch.cat([x for x, _ in base.test]), dataset.test_x)
    for other in (splits(seed=7), splits(method="lth"), splits(method="sap-acc", seed=2)):
        assert torch.equal(other.val.x, base.val.x) and torch.equal(other.val.y, base.val.y)
    assert not torch.equal(splits(split_seed=1).val.y, base.val.y)


def test_train_fraction_trains_on_a_stratified_share_of_the_training_part_only():
    dataset = load_dataset("digits", None)
    config = resolve({"train_fraction": 0.25})
    full = build_batches(resolve({}), dataset, MLP)
    part = build_batches(config, dataset, MLP)
    assert torch.equal(part.val.x, full.val.x)  # validation does not move
    assert len(part.train.x) == pytest.approx(0.25 * len(full.train.x), abs=10)
    full_rows = {tuple(row.flatten().tolist()) for row in full.train.x}
    assert all(tuple(row.flatten().tolist()) in full_rows for row in part.train.x)
    counts = torch.bincount(part.train.y, minlength=10).float()
    expected = 0.25 * torch.bincount(full.train.y, minlength=10).float()
    assert torch.all((counts - expected).abs() <= 1)
    assert torch.equal(
        build_batches(resolve({"train_fraction": 0.25, "seed": 3}), dataset, MLP).train.x,
        part.train.x,
    )  # the same rows for every seed of a comparison


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_train_fraction_out_of_range_is_refused(value):
    with pytest.raises(UserError, match=r"train_fraction.*\(0, 1\]"):
        resolve({"train_fraction": value})
