"""When the dense warm-up ends: the EPI indicator on scripted masks, end to end, on resume."""

import json

import pytest
import torch

from incop.config import resolve
from incop.engine.imp import IMP
from incop.engine.outputs import read_metrics
from incop.errors import UserError
from incop.methods.warmup_stop import EPI_THRESHOLD, EPIStop, WarmupStop, mask_iou
from incop.tools.cli import main


def masks(*kept, size=10):
    """A one-tensor mask keeping the positions in ``kept``."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[list(kept)] = True
    return {"w": mask}


def test_iou_of_kept_weights():
    assert mask_iou(masks(0, 1, 2, 3), masks(2, 3, 4, 5)) == pytest.approx(2 / 6)
    assert mask_iou(masks(0, 1), masks(0, 1)) == 1.0
    assert mask_iou(masks(), masks()) == 1.0


# Epoch by epoch, the first prune's mask; with window 2 the similarity of epoch t is the
# smaller IoU with epochs t-1 and t-2: epoch 3: min(IoU(m3, m2), IoU(m3, m1)) = min(4/6, 2/8);
# epoch 4: min(5/5, 4/6) = 4/6; epoch 5: min(5/6, 5/6) = 5/6 >= 0.8, so it ends after 5.
SCRIPT = [
    masks(0, 1, 2, 3, 4),
    masks(2, 3, 4, 5, 6),
    masks(3, 4, 5, 6, 7),
    masks(3, 4, 5, 6, 7),
    masks(3, 4, 5, 6, 7, 8),
]
SIMILARITIES = [None, None, min(4 / 6, 2 / 8), 4 / 6, 5 / 6]


def test_epi_ends_the_warm_up_at_the_first_epoch_the_window_agrees():
    stop = EPIStop(window=2, threshold=0.8, min_epochs=1)
    seen, ended = [], []
    for epoch, mask in enumerate(SCRIPT, start=1):
        seen.append(stop.observe(epoch, lambda mask=mask: mask))
        ended.append(stop.decide(epoch))
    assert seen == pytest.approx(SIMILARITIES)
    assert ended == [False, False, False, False, True]


def test_epi_never_ends_before_min_epochs_and_fixed_never_ends():
    stop = EPIStop(window=1, threshold=0.5, min_epochs=4)
    decisions = []
    for epoch in range(1, 6):
        stop.observe(epoch, lambda: masks(0, 1, 2))  # the same mask every epoch: IoU 1
        decisions.append(stop.decide(epoch))
    assert decisions == [False, False, False, True, True]
    fixed = WarmupStop()
    assert fixed.observe(3, lambda: pytest.fail("fixed needs no mask")) is None
    assert not fixed.decide(100)


def test_epi_state_round_trip_gives_the_same_decisions():
    first = EPIStop(window=2, threshold=0.8)
    for epoch, mask in enumerate(SCRIPT[:3], start=1):
        first.observe(epoch, lambda mask=mask: mask)
    second = EPIStop(window=2, threshold=0.8)
    second.load_state_dict(first.state_dict())
    for epoch, mask in enumerate(SCRIPT[3:], start=4):
        assert second.observe(epoch, lambda mask=mask: mask) == first.observe(
            epoch, lambda mask=mask: mask
        )
        assert second.decide(epoch) == first.decide(epoch)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epi_threshold": 0.5}, "epi_threshold: 0.5 would be ignored"),
        ({"warmup_stop": "epi", "warmup_epochs": 3}, "can never end a warm-up of 3 epochs"),
        ({"warmup_stop": "epi", "epi_threshold": 1.5}, "epi_threshold: 1.5 is not allowed"),
        ({"warmup_stop": "epi", "rewind": "epoch:2"}, "set min_warmup_epochs >= 2"),
        ({"warmup_stop": "epi", "min_warmup_epochs": 11}, "min_warmup_epochs: 11 is not"),
    ],
)
def test_epi_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        resolve(settings)


EPI_RUN = ["run", "--method", "sap", "--warmup-stop", "epi", "--warmup-epochs", "20",
           "--levels", "1", "--max-epochs", "1"]  # fmt: skip


def test_epi_on_the_default_dataset_ends_the_warm_up_early(tmp_path):
    out = tmp_path / "run"
    assert main([*EPI_RUN, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    dense = summary["levels"][0]
    assert dense["stop_reason"] == "epi" and dense["epochs"] < 20
    warmup = [r for r in read_metrics(out / "metrics.jsonl") if r["level"] == 0]
    assert len(warmup) == dense["epochs"]
    assert warmup[-1]["epi_similarity"] >= EPI_THRESHOLD
    assert all(r.get("epi_similarity", 0) < EPI_THRESHOLD for r in warmup[:-1])
    # theta* is the epoch the indicator ended on, whatever epoch validated best.
    assert summary["dense_accuracy"] == warmup[-1]["val_accuracy"]


def test_an_interrupted_epi_warm_up_resumes_with_its_window(tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*EPI_RUN, "--out", str(whole)]) == 0
    ended_at = json.loads((whole / "summary.json").read_text())["levels"][0]["epochs"]
    original = IMP.log

    def interrupted(self, level, epoch, clock, record):
        if level == 0 and epoch == ended_at:  # the window is full: it must come back
            raise KeyboardInterrupt
        return original(self, level, epoch, clock, record)

    monkeypatch.setattr(IMP, "log", interrupted)
    assert main([*EPI_RUN, "--out", str(cut)]) == 130  # as after Ctrl-C
    assert not (cut / "summary.json").exists()
    monkeypatch.setattr(IMP, "log", original)
    assert main(["run", "--resume", str(cut)]) == 0

    def plain(folder):
        return [
            {k: v for k, v in r.items() if not k.endswith("_seconds")}
            for r in read_metrics(folder / "metrics.jsonl")
        ]

    assert plain(whole) == plain(cut)
