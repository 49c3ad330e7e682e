"""The final fine-tune: masks untouched, pruned weights exactly zero, best validation kept."""

import json

import pytest
import torch

from helpers import TinyNet, blobs
from incop import prune
from incop.engine.outputs import read_metrics
from incop.tools.cli import main


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_fine_tune_keeps_the_masks_and_every_pruned_weight_at_zero(tmp_path, optimizer):
    x, y = blobs()
    model = TinyNet()
    result = prune(model, list(zip(x.split(64), y.split(64), strict=True)), [blobs(seed=1)],
                   test_data=[blobs(seed=2)], method="lth", levels=2, warmup_epochs=2,
                   max_epochs=2, finetune_epochs=4, optimizer=optimizer, weight_decay=0.01,
                   out=tmp_path)  # fmt: skip
    last = result.level_masks[-1]
    final = torch.load(tmp_path / "final" / "checkpoint.pt")
    for name, mask in last.items():
        assert torch.equal(final["masks"][name], mask) and torch.equal(result.masks[name], mask)
        assert (final["state_dict"][name][~mask] == 0).all()
        assert (model.get_parameter(name)[~mask] == 0).all()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("phase") == "finetune"]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    scores = [result.levels[-1].val_accuracy] + [r["val_accuracy"] for r in records]
    assert result.final.val_accuracy == max(scores)
    assert result.final.best_epoch == scores.index(max(scores))
    assert result.final.epochs == 4 and result.final.test_accuracy is not None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["epochs"] == 4
    assert set(summary["final"]) >= {"epochs", "val_accuracy", "test_accuracy", "train_seconds"}


def test_a_resumed_run_gives_the_same_fine_tuned_ticket(tmp_path):
    flags = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1", "--finetune-epochs", "3"]
    out = tmp_path / "run"
    assert main(["run", "--method", "sap-mask", *flags, "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())["final"]
    assert main(["run", "--resume", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())["final"]
    timing = ("train_seconds", "eval_seconds")
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in again.items() if k not in timing
    }


def test_presets_fine_tune_as_long_as_a_level():
    from incop.config import resolve

    for preset in ("paper-resnet18-cifar10", "cpu-small"):
        config = resolve({"preset": preset})
        assert config.finetune_epochs == config.max_epochs > 0
