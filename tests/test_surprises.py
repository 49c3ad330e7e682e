"""No surprises: the saved config reproduces its run, nothing the user types is silently
ignored, and --help tells the truth."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import SHARED
from incop.tools.cli import main

MNIST = SHARED / "MNIST-10k"
SMALL = ["--levels", "2", "--warmup-epochs", "1", "--max-epochs", "2", "--dataset", "mnist"]


def incop(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "incop", *args], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def levels(folder):
    summary = json.loads((folder / "summary.json").read_text())
    keys = ("remaining_fraction", "epochs", "val_accuracy", "stop_reason")
    return [{k: lv[k] for k in keys} for lv in summary["levels"]]


def masks(folder, level):
    return torch.load(folder / "levels" / str(level) / "checkpoint.pt")["masks"]


@pytest.mark.slow
def test_the_saved_config_reproduces_the_run_from_another_directory(tmp_path):
    first, second = tmp_path / "first", tmp_path / "elsewhere" / "deep"
    first.mkdir()
    second.mkdir(parents=True)
    data = os.path.relpath(MNIST, first)  # a relative --data-dir, as users type it
    made = incop("run", *SMALL, "--method", "incop-gf", "--data-dir", data, "--out", "a", cwd=first)
    assert made.returncode == 0, made.stderr
    again = incop("run", "--config", str(first / "a" / "config.yaml"), "--out", "b", cwd=second)
    assert again.returncode == 0, again.stderr
    assert levels(first / "a") == levels(second / "b")
    for level in (1, 2):
        a, b = masks(first / "a", level), masks(second / "b", level)
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_resume_takes_a_new_data_dir_and_nothing_that_changes_results(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(MNIST, data)
    run = tmp_path / "run"
    flags = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1", "--dataset", "mnist"]
    assert main(["run", *flags, "--data-dir", str(data), "--out", str(run)]) == 0
    (run / "state.pt").unlink()  # killed before its first save: the resume must load the data
    moved = tmp_path / "moved"
    data.rename(moved)
    assert main(["run", "--resume", str(run)]) == 2
    assert "files not found" in capsys.readouterr().err
    assert main(["run", "--resume", str(run), "--data-dir", str(moved)]) == 0
    assert main(["run", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "remove lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["compare", "--method", "incop-gf"], "unknown option --method for incop compare"
         " (did you mean '--methods'?)"),
        (["run", "--levles", "3"], "unknown option --levles for incop run (did you mean"
         " '--levels'?)"),
        (["run", "--max-epoch", "3"], "did you mean '--max-epochs'?"),
        (["compare", "--trial", "2"], "did you mean '--trials'?"),
    ],
)  # fmt: skip
def test_abbreviated_or_unknown_options_are_refused_with_the_closest(tmp_path, capsys, argv, hint):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert hint in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_if_skip_pattern_matching_no_layer_is_refused(tmp_path, capsys):
    fast = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1", "--out", str(tmp_path)]
    assert main(["run", "--method", "incop-if", "--if-skip", "fc9", *fast]) == 2
    assert "if_skip: pattern 'fc9' matches no prunable layer" in capsys.readouterr().err
    assert main(["run", "--method", "sap", "--if-skip", "fc2", *fast]) == 2
    err = capsys.readouterr().err
    assert "if_skip: ['fc2'] would be ignored" in err


def test_help_shows_real_defaults_choices_and_per_method_values(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    assert "_MISSING_TYPE" not in text and "dataclasses" not in text
    assert "--if-skip A,B information flow: module-name patterns left out (residual" in text
    assert "default: *downsample*,*shortcut*" in text
    for field, allowed in [
        ("--stop", "allowed: fixed, accuracy, if, gf"),
        ("--rewind", "allowed: init, epoch:K, dense, none, lr"),
        ("--scope", "allowed: global, layer, neuron"),
        ("--schedule", "allowed: none, cosine, step"),
        ("--distance", "allowed: l2, relative, cosine"),
        ("--optimizer", "allowed: sgd, adam"),
        ("--pruner", "allowed: lth, random, sap"),
        ("--if-summary", "allowed: mean, abs-mean"),
        ("--on-divergence", "allowed: continue, stop"),
    ]:
        section = text.split(f"{field} STR", 1)[1].split(" --", 1)[0]
        assert allowed in section, field
    eps = text.split("--eps FLOAT", 1)[1].split(" --", 1)[0]
    assert "default: 0.1" in eps and "incop-if 3.0" in eps and "incop-gf 3.0" in eps
    eps_mode = text.split("--eps-mode STR", 1)[1].split(" --", 1)[0]
    assert "default: absolute" in eps_mode and "incop-gf noise" in eps_mode
    distance = text.split("--distance STR", 1)[1].split(" --", 1)[0]
    assert "incop-gf relative" in distance


@pytest.mark.parametrize("method", ["incop-gf", "sap-acc", "sap"])
def test_the_progress_total_is_the_epochs_that_ran(method, tmp_path):
    from helpers import TinyNet, blobs
    from incop.config import resolve
    from incop.engine.imp import IMP
    from incop.engine.outputs import RunWriter

    x, y = blobs()
    flow = {"probe_size": 64, "eps": 0.5} if method == "incop-gf" else {}
    config = resolve({"method": method, "levels": 3, "warmup_epochs": 2, "max_epochs": 6,
                      **flow})  # fmt: skip
    imp = IMP(config, TinyNet(), [(x, y)], [blobs(seed=1)], writer=RunWriter(tmp_path))
    result = imp.run()
    ran = sum(level.epochs for level in result.levels)
    assert imp.bar.total == imp.bar.done == ran
    if method != "sap":
        assert ran < 2 + 3 * 6, "no level stopped early: the test shows nothing"


def test_compare_shows_the_shared_warmup_and_the_table_explains_stops(tmp_path, capsys):
    flags = ["--levels", "1", "--warmup-epochs", "2", "--max-epochs", "2"]
    assert (
        main(["compare", "--methods", "sap", "--seeds", "0", *flags, "--out", str(tmp_path / "c")])
        == 0
    )
    assert "warm-up" in capsys.readouterr().err
    assert main(["run", *flags, "--method", "sap", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "stop:\n  warmup    the dense network" in out and "cap       retrained the full" in out
