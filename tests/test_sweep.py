"""Issue 23: sweeps of a comparison, the protocol controls (frozen prune counts, fine-tune from
the dense weights), the cost frontier and the paired statistics."""

import json

import pytest
import torch
import yaml

from incop.engine import imp as imp_module
from incop.methods.pruning import hold_counts
from incop.tools import study
from incop.tools.cli import main
from incop.tools.compare import Variant, run_comparison

#: The issue's command, sized down (warm-up of 3 epochs) so that it runs in seconds.
SWEEP = ["compare", "--methods", "sap,sap-acc", "--sweep", "delta=0,0.01", "--sweep",
         "max_epochs=1,2", "--trials", "2", "--levels", "2", "--warmup-epochs", "3",
         "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "cmp"
    assert main([*SWEEP, "--out", str(out)]) == 0
    return out


def test_a_sweep_writes_one_run_per_point_and_seed(swept):
    comparison = json.loads((swept / "comparison.json").read_text())
    # sap uses max_epochs only (its rule is fixed, delta is the accuracy rule's): 2 points;
    # sap-acc both: 4 points.
    points = {
        "sap": ["max_epochs=1", "max_epochs=2"],
        "sap-acc": [f"delta={d},max_epochs={e}" for d in ("0.0", "0.01") for e in (1, 2)],
    }
    for method, names in points.items():
        for name in names:
            for seed in (0, 1):
                run = swept / method / name / f"seed-{seed}"
                assert (run / "summary.json").is_file(), run
                config = yaml.safe_load((run / "config.yaml").read_text())
                for pair in name.split(","):
                    field, value = pair.split("=")
                    assert str(config[field]) == value
    runs = comparison["runs"]
    assert len(runs) == 12
    expected = set()
    for method, names in points.items():
        for name in names:
            params = tuple(sorted((k, yaml.safe_load(v)) for k, v in
                                  (pair.split("=") for pair in name.split(","))))  # fmt: skip
            expected |= {(method, params, seed) for seed in (0, 1)}
    assert {(r["method"], tuple(sorted(r["params"].items())), r["seed"]) for r in runs} == expected
    for run in runs:
        summary = json.loads((swept / run["folder"] / "summary.json").read_text())
        assert run["cost"] == summary["cost"] and run["cost"]["search"] > 0
        assert run["cost_dense_epochs"] == pytest.approx(
            summary["cost"]["search"] / summary["dense_epoch"]
        )
        for key in ("epochs", "remaining_fraction", "val_accuracy", "test_accuracy"):
            assert run[key] is not None
    # One dense warm-up per seed, shared by every point (none differs before the prune).
    warmups = {json.loads((swept / r["folder"] / "summary.json").read_text())["levels"][0][
        "val_accuracy"] for r in runs if r["seed"] == 0}  # fmt: skip
    assert len(warmups) == 1


def test_a_sweep_has_its_frontier_and_paired_intervals(swept):
    frontier = json.loads((swept / "frontier.json").read_text())
    assert (swept / "frontier.png").read_bytes().startswith(b"\x89PNG")
    assert len(frontier["points"]) == 6
    assert any(p.get("pareto") for p in frontier["points"])
    assert set(frontier["cheapest_within_tolerance"]) == {"sap", "sap-acc"}
    comparison = json.loads((swept / "comparison.json").read_text())
    paired = comparison["analysis"]["paired"]
    assert len(paired) == 4  # every sap-acc point, against sap at its max_epochs
    for pair in paired:
        assert pair["baseline_params"] == {"max_epochs": pair["params"]["max_epochs"]}
        low, high = pair["test_accuracy_points"]["interval"]
        assert low <= pair["test_accuracy_points"]["mean"] <= high
    text = (swept / "report.md").read_text()
    assert "Paired per-seed differences against sap" in text
    assert "95% bootstrap interval" in text and "binomial standard error" in text
    assert "![frontier figure](frontier.png)" in text


def test_resume_continues_a_sweep(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    settings = {"levels": 1, "warmup_epochs": 1, "threads": 1}
    sweep = {"max_epochs": ["1", "2"]}
    original, calls = imp_module.IMP.run, []

    def failing(self, *args, **kwargs):
        calls.append(self.config.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(imp_module.IMP, "run", failing)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(settings, ["sap"], [0], out=out, sweep=sweep)
    monkeypatch.setattr(imp_module.IMP, "run", original)
    assert (out / "sap" / "max_epochs=1" / "seed-0" / "summary.json").is_file()
    assert not (out / "sap" / "max_epochs=2" / "seed-0" / "summary.json").exists()
    assert main(["compare", "--resume", str(out)]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["params"] for r in comparison["runs"]] == [{"max_epochs": 1}, {"max_epochs": 2}]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "sap,lth", "--sweep", "delta=0,0.1"], "no chosen method (sap, lth) uses"),
        (["--sweep", "deltta=0,0.1"], "unknown field 'deltta'"),
        (["--sweep", "max_epochs=1,a"], "max_epochs"),
        (["--sweep", "max_epochs=1,-1"], "max_epochs"),
        (["--sweep", "delta="], "an empty value"),
        (["--sweep", "delta"], "give FIELD=V1,V2"),
        (["--sweep", "delta=0,0"], "given more than once"),
        (["--sweep", "stop=fixed,gf"], "stop cannot be swept"),
        (["--sweep", "include=a,b"], "holds a list"),
        (["--sweep", "max_epochs=1,2", "--max-epochs", "3"], "also set as --max-epochs"),
        (["--baseline", "lth"], "baseline: 'lth' is not among the methods"),
        (["--sweep", "sap:delta=0,0.1"], "would be ignored: sap does not use it"),
        (["--sweep", "lth:max_epochs=1,2"], "'lth' is not among the methods"),
        (
            ["--sweep", "max_epochs=1,2", "--sweep", "sap:max_epochs=3,4"],
            "sap already sweeps max_epochs",
        ),
    ],
)
def test_bad_sweeps_are_refused_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "cmp"
    base = ["compare", "--methods", "sap,sap-acc", "--trials", "1", "--levels", "1"]
    if "--methods" in flags:
        base = ["compare", "--trials", "1", "--levels", "1"]
    assert main([*base, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "sap"
    assert main(["run", "--method", "sap", "--levels", "2", "--warmup-epochs", "2",
                 "--max-epochs", "1", "--threads", "1", "--out", str(out)]) == 0  # fmt: skip
    return out


def test_frozen_counts_give_every_method_the_reference_counts(reference, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "lth,incop-gf,random", "--trials", "1", "--levels", "2",
                 "--warmup-epochs", "2", "--max-epochs", "2", "--threads", "1",
                 "--prune-counts", "frozen", "--counts-from", str(reference),
                 "--out", str(out)]) == 0  # fmt: skip
    expected = json.loads((reference / "summary.json").read_text())["levels"]
    for method in ("lth", "incop-gf", "random"):
        levels = json.loads((out / method / "seed-0" / "summary.json").read_text())["levels"]
        assert len(levels) == len(expected)
        for got, want in zip(levels, expected, strict=True):
            assert got["layer_remaining"] == want["layer_remaining"], method
            assert got["remaining_fraction"] == want["remaining_fraction"]
    # Frozen counts are recorded, in summary.json and the report.
    summary = json.loads((out / "lth" / "seed-0" / "summary.json").read_text())
    assert summary["config"]["prune_counts"] == "frozen"
    assert f"frozen to those of {reference}" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--levels", "2", "--model", "lenet5"],
            "is a run of the model 'mlp'; this run's is 'lenet5'",
        ),
        (["--levels", "3"], "pruned 2 level(s); this run needs 3"),
        (["--levels", "2", "--include", "fc1.weight"], "pruned other weights"),
    ],
)
def test_counts_from_a_run_that_does_not_fit_is_refused(reference, tmp_path, capsys, flags,
                                                        message):  # fmt: skip
    for command in (["run", "--method", "sap"], ["compare", "--methods", "sap", "--trials", "1"]):
        out = tmp_path / command[0]
        code = main([*command, "--prune-counts", "frozen", "--counts-from", str(reference),
                     *flags, "--out", str(out)])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (command, err)
        assert not out.exists()


def test_counts_from_a_folder_without_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--prune-counts", "frozen", "--counts-from", str(tmp_path),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "holds no finished run" in capsys.readouterr().err
    assert not out.exists()


def test_hold_counts_keeps_what_the_pruner_kept_first_then_by_magnitude():
    w = {"a": torch.tensor([0.1, -0.9, 0.5, 0.3, 0.0, 0.7])}
    before = {"a": torch.tensor([True, True, True, True, False, True])}
    proposed = {"a": torch.tensor([True, False, False, True, False, False])}
    # Keep 3: the pruner's two (0.1 and 0.3), then the largest it removed (-0.9).
    assert hold_counts(w, before, proposed, {"a": 3})["a"].tolist() == [
        True, True, False, True, False, False]  # fmt: skip
    # Keep 1: of the pruner's two, the larger.
    assert hold_counts(w, before, proposed, {"a": 1})["a"].tolist() == [
        False, False, False, True, False, False]  # fmt: skip
    with pytest.raises(ValueError, match="cannot keep 6 of 5"):
        hold_counts(w, before, proposed, {"a": 6})


@pytest.mark.parametrize("start", ["last", "dense"])
def test_finetune_from_says_where_the_fine_tune_starts(tmp_path, monkeypatch, start):
    from incop.config import resolve
    from incop.engine.experiment import run_experiment

    seen = []
    original = imp_module.IMP.run_epoch

    def watching(self, clock, *, train, measure=True):
        if not measure and not seen:  # the fine-tune's first epoch: its starting weights
            seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return original(self, clock, train=train, measure=measure)

    monkeypatch.setattr(imp_module.IMP, "run_epoch", watching)
    # rewind none: the last level's weights are retrained ones, not theta* under a mask.
    config = resolve({"method": "sap", "levels": 1, "warmup_epochs": 2, "max_epochs": 2,
                      "threads": 1, "rewind": "none", "finetune_epochs": 1,
                      "finetune_from": start, "out": str(tmp_path)})  # fmt: skip
    result = run_experiment(config)
    dense = torch.load(sorted((tmp_path / "snapshots").glob("dense-*.pt"))[0], weights_only=True)
    last = torch.load(tmp_path / "levels" / "1" / "checkpoint.pt", weights_only=True)
    last = last.get("state_dict", last)
    for name, mask in result.masks.items():
        on_theta = torch.allclose(seen[0][name], dense[name] * mask)
        on_last = torch.allclose(seen[0][name], last[name])
        assert (on_theta, on_last) == ((True, False) if start == "dense" else (False, True)), name


def test_bootstrap_and_front_by_hand():
    assert study.binomial_se(0.9, 100) == pytest.approx(0.03)
    low, high = study.bootstrap_interval([1.0, 1.0, 1.0])
    assert low == high == 1.0
    low, high = study.bootstrap_interval([-1.0, 1.0, 2.0, 0.5])
    assert low < 0.625 < high
    point = lambda c, a: {"cost_dense_epochs": {"mean": c}, "val_accuracy": {"mean": a}}  # noqa: E731
    frontier = [point(1, 0.9), point(2, 0.95), point(3, 0.94), point(2, 0.95), point(0.5, 0.5)]
    # (3, 0.94) is beaten by (2, 0.95); the two equal points both stay.
    assert study.pareto_front(frontier) == [4, 0, 1, 3]
    assert study.matching({"delta": 0.0, "max_epochs": 2}, [{"max_epochs": 1},
                                                           {"max_epochs": 2}]) == 1  # fmt: skip
    assert study.matching({"delta": 0.0}, [{"max_epochs": 1}, {"max_epochs": 2}]) is None


def test_the_tolerance_is_to_the_dense_network_of_the_runs_that_trained_one():
    def run(method, seed, val, dense_val, warmup):
        return {"method": method, "params": {}, "seed": seed, "cost_dense_epochs": 5.0 + seed,
                "remaining_fraction": 0.4, "val_accuracy": val, "test_accuracy": val - 0.01,
                "dense_val_accuracy": dense_val, "dense_test_accuracy": dense_val - 0.01,
                "cost": {"warmup": warmup, "search": 1.0}}  # fmt: skip

    # RigL trains sparse from the start: its records hold the untrained network's accuracy.
    runs = [run("sap", s, 0.896, 0.90, 5.0) for s in (0, 1)]
    runs += [run("rigl", s, 0.86, 0.10, 0.0) for s in (0, 1)]
    analysis = study.analyse({"runs": runs}, "sap", tolerance=0.5)
    assert analysis["dense"]["val_accuracy"] == pytest.approx(0.90)
    assert analysis["dense"]["test_accuracy"] == pytest.approx(0.89)
    held = analysis["cheapest_within_tolerance"]
    # Pooled with RigL's 0.10, the dense accuracy would be 0.50 and RigL's 0.86 "within" it.
    assert held["rigl"]["point"] is None
    assert held["sap"]["point"]["val_accuracy"]["mean"] == pytest.approx(0.896)
    # Records of an incop that counted no costs: every method then trained a dense network.
    old = [{k: v for k, v in r.items() if k != "cost"} for r in runs[:2]]
    assert study.analyse({"runs": old})["dense"]["val_accuracy"] == pytest.approx(0.90)


def test_report_pairs_with_another_baseline_and_tolerance(swept, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(swept, folder)
    assert main(["report", str(folder), "--baseline", "sap-acc", "--tolerance", "100"]) == 0
    analysis = json.loads((folder / "comparison.json").read_text())["analysis"]
    assert analysis["baseline"] == "sap-acc" and analysis["tolerance_points"] == 100
    # Within 100 points every point qualifies: the cheapest is the least cost of each method.
    frontier = json.loads((folder / "frontier.json").read_text())
    for method, held in frontier["cheapest_within_tolerance"].items():
        costs = [p["cost_dense_epochs"]["mean"] for p in frontier["points"]
                 if p["method"] == method]  # fmt: skip
        assert held["point"]["cost_dense_epochs"]["mean"] == min(costs)
    # sap's points (max_epochs only) each match two sap-acc points (both deltas): no pair.
    assert analysis["paired"] == []
    text = (folder / "report.md").read_text()
    assert "No paired statistics against sap-acc: no other point has one point of sap-acc" in text
    capsys.readouterr()
    assert main(["report", str(folder), "--baseline", "lth"]) == 2
    assert "baseline: 'lth' is not among the methods" in capsys.readouterr().err


def test_a_sweep_for_one_method_only(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "sap,sap-acc", "--sweep", "sap:max_epochs=1,2",
                 "--sweep", "sap-acc:delta=0,0.01", "--trials", "1", "--levels", "1",
                 "--warmup-epochs", "2", "--threads", "1", "--out", str(out)]) == 0  # fmt: skip
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    assert [(r["method"], r["params"]) for r in runs] == [
        ("sap", {"max_epochs": 1}), ("sap", {"max_epochs": 2}),
        ("sap-acc", {"delta": 0.0}), ("sap-acc", {"delta": 0.01})]  # fmt: skip
    assert (out / "sap-acc" / "delta=0.01" / "seed-0" / "summary.json").is_file()


def test_the_cost_figure_keeps_a_collapsed_method_from_squashing_the_others():
    from incop.tools.report import _styles, cost_figure

    def point(method, cost, val, test):
        return {"method": method, "params": {}, "seeds": [0, 1], "remaining_fraction":
                {"mean": 0.035, "std": 0.0}, "cost_dense_epochs": {"mean": cost, "std": 0.0},
                "val_accuracy": {"mean": val, "std": 0.002},
                "test_accuracy": {"mean": test, "std": 0.003}}  # fmt: skip

    points = [point("sap", 9.0, 0.895, 0.894), point("set", 1.4, 0.52, 0.53)]
    analysis = {"points": points, "tolerance_points": 0.5,
                "dense": {"val_accuracy": 0.896, "test_accuracy": 0.895}}  # fmt: skip
    styles = _styles([Variant(p["method"]) for p in points])
    (ax,) = cost_figure(analysis, styles, band=2.0).axes
    # The bar is 89.6 - 0.5 = 89.1 %: the axis shows 2 points under it and 0.2 over the top of
    # sap's error bars (89.7 %).
    low, high = ax.get_ylim()
    assert low == pytest.approx(87.1) and high == pytest.approx(89.7 + 0.2)
    assert [t.get_text() for t in ax.texts] == ["below the scale: set 53.0 % test"]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == [pytest.approx(89.1)]
    (unbanded,) = cost_figure(analysis, styles).axes
    assert unbanded.get_ylim()[0] < 53 and not unbanded.texts
