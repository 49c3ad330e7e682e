import json
import subprocess
import sys

import pytest
import yaml

from incop.tools.cli import main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "incop", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sap", "incop-if", "incop-gf"])
def test_incop_run_on_digits_writes_the_run_folder(tmp_path, capsys, method):
    out = tmp_path / "run"
    code = main(
        ["run", "--method", method, "--levels", "2", "--warmup-epochs", "2", "--max-epochs", "3",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "level" in printed and "remaining" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == [0, 1, 2]
    assert summary["config"]["method"] == method
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == method
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    retrain = [r for r in records if r["level"] > 0]
    if method != "sap":
        # flow rules log their distance every epoch, epoch 0 included
        assert all("distance" in r for r in retrain)
        assert summary["levels"][0]["flow_seconds"] > 0
    for k in range(3):
        assert (out / "levels" / str(k) / "checkpoint.pt").exists()


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    result = run_cli("run", "--method", "sapp", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "method" in result.stderr and "did you mean 'sap'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_missing_data_files_are_named(tmp_path):
    result = run_cli("run", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "train-images-idx3-ubyte.gz" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for name in ("incop-gf", "resnet18", "fashion-mnist", "torch-prune", "compact"):
        assert name in printed


@pytest.mark.slow
def test_incop_compare_writes_every_file_and_report_rebuilds_the_same(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        ["compare", "--methods", "sap,incop-gf", "--trials", "2", "--levels", "1",
         "--warmup-epochs", "1", "--max-epochs", "2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "incop-gf" in capsys.readouterr().out
    for name in ("comparison.json", "compare.yaml", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    for plot in ("accuracy", "sparsity", "epochs", "time", "distance"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{plot}.{ext}").exists()
    for method in ("sap", "incop-gf"):
        for seed in (0, 1):
            assert (out / method / f"seed-{seed}" / "summary.json").exists()
    report = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report


@pytest.mark.parametrize("flag", [["--accuracy-clause", "false"], ["--no-accuracy-clause"]])
def test_flow_rules_without_the_accuracy_clause_on_the_default_dataset(tmp_path, flag):
    out = tmp_path / "run"
    settings = ["--levels", "3", "--warmup-epochs", "2", "--max-epochs", "3"]
    assert main(["run", "--method", "incop-gf", *flag, *settings, "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["accuracy_clause"] is False
    reasons = [lv["stop_reason"] for lv in json.loads((out / "summary.json").read_text())["levels"]]
    assert "accuracy" not in reasons and set(reasons[1:]) <= {"flow", "cap"}


def test_sap_mask_with_a_fine_tune_on_the_default_dataset(tmp_path):
    out = tmp_path / "run"
    flags = ["--levels", "3", "--warmup-epochs", "2", "--max-epochs", "6"]
    assert (
        main(["run", "--method", "sap-mask", "--finetune-epochs", "2", *flags, "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["epochs"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    retrained = [r for r in records if r["level"] > 0 and r["epoch"] > 0 and "phase" not in r]
    assert retrained and all(r["distance"] >= 0 for r in retrained)
    assert any(lv["stop_reason"] == "mask" for lv in summary["levels"])
