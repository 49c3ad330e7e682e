"""Any task, any batch: the chosen metric drives every decision; batch_fn unpacks batches."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TinyNet
from incop import prune
from incop.engine.outputs import read_metrics
from incop.errors import UserError
from incop.tools.cli import main


def regression(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    w = torch.linspace(-1, 1, 10)
    y = (x @ w + 0.1 * torch.randn(n, generator=g)).unsqueeze(1)
    return list(zip(x.split(64), y.split(64), strict=True))


def run(tmp_path, **options):
    torch.manual_seed(0)
    return prune(TinyNet(n_out=1), regression(), regression(seed=1), method="sap-acc", levels=3,
                 warmup_epochs=6, max_epochs=6, loss_fn=F.mse_loss, lr=0.02, out=tmp_path,
                 **options)  # fmt: skip


def test_the_loss_metric_drives_selection_on_a_regression_toy(tmp_path):
    result = run(tmp_path, metric="loss")
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert all(level.val_accuracy is None for level in result.levels)
    assert all(level.val_metric == level.val_loss for level in result.levels)
    dense = [r["val_loss"] for r in records if r["level"] == 0]
    # theta* is the warm-up epoch of lowest validation loss, not the last nor a "0.0 accuracy" one
    assert result.dense_metric == min(dense) and result.levels[0].val_loss == min(dense)
    assert dense[0] != min(dense), "the first epoch is best: selection would not be tested"
    for level in result.levels[1:]:
        losses = [r["val_loss"] for r in records if r["level"] == level.level]
        reached = [e for e, loss in enumerate(losses) if e >= 1 and loss <= result.dense_metric]
        expected = ("accuracy", reached[0]) if reached else ("cap", 6)
        assert (level.stop_reason, level.epochs) == expected


def test_a_callable_metric_with_its_direction_decides_like_the_loss(tmp_path):
    by_loss = run(tmp_path / "loss", metric="loss")

    def neg_mse(outputs, targets):
        return -F.mse_loss(outputs, targets).item()

    def mse(outputs, targets):
        return F.mse_loss(outputs, targets).item()

    for name, fn, higher in (("neg", neg_mse, True), ("pos", mse, False)):
        result = run(tmp_path / name, metric=fn, higher_is_better=higher)
        assert [lv.epochs for lv in result.levels] == [lv.epochs for lv in by_loss.levels]
        assert all(torch.equal(result.masks[n], by_loss.masks[n]) for n in result.masks)
        assert result.config.metric == f"callable:{fn.__name__}"


def test_accuracy_on_a_regression_task_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(UserError, match="metric='loss'"):
        run(tmp_path, metric="accuracy")


def test_dict_batches_work_through_batch_fn(tmp_path):
    x, y = torch.randn(128, 10), torch.randint(0, 3, (128,))
    batches = [{"image": x[i : i + 32], "label": y[i : i + 32]} for i in range(0, 128, 32)]
    with pytest.raises(UserError, match="batch_fn"):
        prune(TinyNet(), batches, batches, levels=1, warmup_epochs=1, max_epochs=1)
    result = prune(TinyNet(), batches, batches, levels=1, warmup_epochs=1, max_epochs=1,
                   batch_fn=lambda b: (b["image"], b["label"]))  # fmt: skip
    assert result.levels[1].remaining_fraction < 1


def test_metric_on_the_command_line(tmp_path, capsys):
    fast = ["--levels", "1", "--warmup-epochs", "2", "--max-epochs", "2"]
    assert main(["run", *fast, "--metric", "loss", "--out", str(tmp_path / "a")]) == 0
    assert "val loss" in capsys.readouterr().out
    config = tmp_path / "c.yaml"
    config.write_text("metric: 'callable:neg_mse'\n")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "b")]) == 2
    assert "was a Python function given to incop.prune" in capsys.readouterr().err
