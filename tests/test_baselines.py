"""The cheap baselines of issue 26 that the existing options express: one-shot pruning with a
fine-tune, and learning-rate rewinding as a named method."""

import json

import pytest

from incop.tools.cli import main


def test_oneshot_prunes_once_to_the_target_then_fine_tunes(tmp_path):
    run = tmp_path / "oneshot"
    argv = ["run", "--method", "oneshot", "--warmup-epochs", "2", "--finetune-epochs", "2",
            "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == [0, 1]
    assert summary["levels"][1]["epochs"] == 0
    assert summary["levels"][1]["remaining_fraction"] == pytest.approx(0.1, abs=1 / 50_200)
    assert summary["final"]["epochs"] == 2 and (run / "final" / "checkpoint.pt").is_file()


def test_lr_rewind_is_sap_with_learning_rate_rewinding():
    from incop.config import resolve

    named, spelled = resolve({"method": "lr-rewind"}), resolve({"method": "sap", "rewind": "lr"})
    assert {**named.to_dict(), "method": "sap"} == spelled.to_dict()
