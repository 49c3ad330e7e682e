import json

import pytest
import torch

from helpers import TinyNet, blobs
from incop import prune
from incop.config import resolve
from incop.engine.imp import IMP
from incop.engine.outputs import read_metrics


def test_loop_on_a_user_model_with_plain_lists_of_batches(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = blobs()
    train = list(zip(x.split(32), y.split(32), strict=True))
    xv, yv = blobs(seed=1)
    result = prune(
        model,
        train,
        [(xv, yv)],
        method="lth",
        levels=3,
        max_epochs=2,
        warmup_epochs=3,
        out=tmp_path,
    )
    assert [r.level for r in result.levels] == [0, 1, 2, 3]
    fractions = [r["remaining_fraction"] for r in result.levels]
    assert fractions[0] == 1.0
    assert fractions == sorted(fractions, reverse=True) and len(set(fractions)) == 4
    assert fractions[1] == pytest.approx(0.8, abs=0.01)
    assert [r.epochs for r in result.levels] == [3, 2, 2, 2]
    assert result.dense_accuracy > 0.8
    for name, mask in result.masks.items():
        assert mask.dtype == torch.bool
        assert (model.get_parameter(name)[~mask] == 0).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [lv["remaining_fraction"] for lv in summary["levels"]] == fractions
    assert summary["dense_accuracy"] == result.dense_accuracy
    for k in range(4):
        ckpt = torch.load(tmp_path / "levels" / str(k) / "checkpoint.pt")
        assert set(ckpt["masks"]) == set(result.masks)
        assert torch.equal(ckpt["masks"]["hidden.weight"], result.level_masks[k]["hidden.weight"])
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    # warm-up epochs 1..3, then epochs 0..2 per level
    assert len(metrics) == 3 + 3 * 3
    assert "val_accuracy" in metrics[-1] and metrics[-1]["level"] == 3
    assert (tmp_path / "config.yaml").exists()


def _imp(tiny_model, tiny_data, **overrides):
    settings = {"method": "sap", "levels": 1, "warmup_epochs": 3, "max_epochs": 0, "min_epochs": 0}
    imp = IMP(resolve({**settings, **overrides}), tiny_model, *tiny_data)
    return imp, imp.run()


def _assert_weights_are(model, reference, masks):
    for name, tensor in reference.items():
        expected = tensor * masks[name] if name in masks else tensor
        assert torch.equal(model.state_dict()[name], expected), name


def test_rewind_init_restores_initial_weights(tiny_model, tiny_data):
    theta0 = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    imp, result = _imp(tiny_model, tiny_data, rewind="init")
    _assert_weights_are(tiny_model, theta0, result.masks)


def test_rewind_dense_restores_the_best_dense_weights(tiny_model, tiny_data):
    imp, result = _imp(tiny_model, tiny_data, rewind="dense")
    _assert_weights_are(tiny_model, imp.state.snapshots["dense"], result.masks)
    assert not torch.equal(
        imp.state.snapshots["dense"]["out.weight"], imp.state.snapshots["init"]["out.weight"]
    )


def test_rewind_epoch_k_restores_weights_after_k_dense_epochs(tiny_data):
    torch.manual_seed(0)
    one_epoch = TinyNet()
    _imp(one_epoch, tiny_data, warmup_epochs=1, levels=0)
    theta1 = {k: v.clone() for k, v in one_epoch.state_dict().items()}
    torch.manual_seed(0)
    model = TinyNet()
    imp, result = _imp(model, tiny_data, warmup_epochs=3, rewind="epoch:1")
    _assert_weights_are(model, theta1, result.masks)


@pytest.mark.parametrize("mode", ["none", "lr"])
def test_rewind_none_and_lr_keep_weights(tiny_model, tiny_data, mode):
    imp, result = _imp(tiny_model, tiny_data, rewind=mode, schedule="cosine")
    _assert_weights_are(tiny_model, imp.state.snapshots["dense"], result.masks)
    # `none` carries the warm-up's optimiser state (momentum) on; `lr` starts a fresh one.
    carried_state = any(imp.state.optimizer.state[p] for p in tiny_model.parameters())
    assert carried_state == (mode == "none")


@pytest.mark.parametrize("rewind", ["none", "lr", "dense", "epoch:1"])
def test_every_retraining_phase_runs_its_own_schedule_logging_the_rate_it_used(tmp_path, rewind):
    x, y = blobs()
    prune(TinyNet(), [(x, y)], [blobs(seed=1)], method="lth", levels=2, warmup_epochs=3,
          max_epochs=4, rewind=rewind, schedule="cosine", lr=0.1, out=tmp_path)  # fmt: skip
    cosine = [0.1 * (1 + torch.cos(torch.tensor(e * torch.pi / 4)).item()) / 2 for e in range(4)]
    for level in (1, 2):
        rates = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["level"] == level]
        # epoch 0 (no training) shows the rate epoch 1 will use; epochs 1..4 the rate used
        assert rates == pytest.approx([cosine[0], *cosine]), rates
    dense = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["level"] == 0]
    assert dense == pytest.approx([0.1 * (1 + torch.cos(torch.tensor(e * torch.pi / 3)).item()) / 2
                                   for e in range(3)])  # fmt: skip


def test_fixed_epochs_and_dense_reference_are_logged(tiny_model, tiny_data, tmp_path):
    result = prune(tiny_model, *tiny_data, method="sap", levels=2, max_epochs=2, warmup_epochs=2)
    assert [r.stop_reason for r in result.levels] == ["warmup", "cap", "cap"]
    assert all(r.train_seconds > 0 for r in result.levels)
    assert "level" in result.table() and "remaining" in result.table()
