import json

import pytest
import yaml

from incop.engine import phases
from incop.errors import UserError
from incop.tools.compare import aggregate, run_comparison


def summary(epochs, accuracies, remaining, seconds=1.0, flow=0.5, reasons=None, final=None):
    """A hand-made summary.json: level 0 (dense) then one entry per level."""
    reasons = reasons or ["warmup"] + ["cap"] * (len(epochs) - 1)
    levels = [
        {
            "level": k,
            "remaining_fraction": r,
            "epochs": e,
            "val_accuracy": a,
            "train_seconds": seconds * e,
            "eval_seconds": 0.1,
            "flow_seconds": flow,
            "macs_fraction": r,
            "stop_reason": why,
        }
        for k, (e, a, r, why) in enumerate(zip(epochs, accuracies, remaining, reasons, strict=True))
    ]
    return {"levels": levels, "dense_accuracy": accuracies[0], "config": {}, "final": final}


def test_aggregate_means_stds_and_ratios_by_hand():
    runs = {
        "sap": [summary([5, 10, 10], [0.9, 0.88, 0.86], [1, 0.8, 0.6]),
                summary([5, 10, 10], [0.9, 0.90, 0.88], [1, 0.8, 0.6])],
        "incop-gf": [summary([5, 2, 4], [0.9, 0.87, 0.85], [1, 0.8, 0.6]),
                     summary([5, 4, 6], [0.9, 0.89, 0.87], [1, 0.8, 0.6])],
    }  # fmt: skip
    result = aggregate(runs)
    sap, gf = result["methods"]["sap"]["totals"], result["methods"]["incop-gf"]["totals"]
    assert sap["retrain_epochs"] == {"mean": 20.0, "std": 0.0}
    assert gf["retrain_epochs"]["mean"] == 8.0
    assert gf["retrain_epochs"]["std"] == pytest.approx(2**0.5 * 2)  # 6 and 10: sample std
    assert gf["final_accuracy"]["mean"] == pytest.approx(0.86)
    assert gf["final_remaining_fraction"]["mean"] == pytest.approx(0.6)
    # wall = retraining train + eval (levels >= 1) + flow (all levels, the dense reference too)
    assert sap["wall_seconds"]["mean"] == pytest.approx(20 + 0.2 + 1.5)
    assert gf["wall_seconds"]["mean"] == pytest.approx(8 + 0.2 + 1.5)
    ratios = result["ratios"]["incop-gf"]
    assert ratios["epochs_vs_sap"] == pytest.approx(0.4)
    assert ratios["wall_vs_sap"] == pytest.approx(9.7 / 21.7)
    assert "epochs_vs_lth" not in ratios
    level1 = result["methods"]["incop-gf"]["levels"][1]
    assert level1["epochs"]["mean"] == 3.0 and level1["val_accuracy"]["mean"] == pytest.approx(0.88)


@pytest.mark.slow
def test_one_warm_up_per_seed_shared_by_every_method_and_resume_reuses_it(tmp_path, monkeypatch):
    calls = []
    original = phases.warm_up

    def counting(loop, *args, **kwargs):
        calls.append(loop.config.seed)
        return original(loop, *args, **kwargs)

    monkeypatch.setattr(phases, "warm_up", counting)
    settings = {"levels": 1, "warmup_epochs": 2, "max_epochs": 1}
    out = tmp_path / "cmp"
    result = run_comparison(settings, ["lth", "sap", "incop-gf"], seeds=[0, 1], out=out)
    assert sorted(calls) == [0, 1]
    for seed in (0, 1):
        dense = {
            m: json.loads((out / m / f"seed-{seed}" / "summary.json").read_text())["levels"][0]
            for m in ("lth", "sap", "incop-gf")
        }
        assert len({lv["val_accuracy"] for lv in dense.values()}) == 1
        assert len({lv["train_seconds"] for lv in dense.values()}) == 1
    assert set(result["methods"]) == {"lth", "sap", "incop-gf"}
    assert json.loads((out / "comparison.json").read_text())["methods"] == result["methods"]
    calls.clear()
    again = run_comparison(settings, ["lth", "sap", "incop-gf"], [0, 1], out=out, mode="resume")
    assert calls == [] and again["methods"] == result["methods"]


def test_stop_reasons_are_counted_and_the_fine_tune_is_in_the_totals():
    tuned = {"epochs": 3, "train_seconds": 3.0, "eval_seconds": 0.3, "val_accuracy": 0.91,
             "test_accuracy": 0.9}  # fmt: skip
    runs = {
        "sap": [summary([5, 10, 10], [0.9, 0.88, 0.86], [1, 0.8, 0.6], final=tuned)] * 2,
        "incop-gf": [
            summary([5, 2, 4], [0.9, 0.87, 0.85], [1, 0.8, 0.6],
                    reasons=["warmup", "flow", "accuracy"], final=tuned),
            summary([5, 4, 6], [0.9, 0.89, 0.87], [1, 0.8, 0.6],
                    reasons=["warmup", "flow", "flow"], final=tuned),
        ],
    }  # fmt: skip
    result = aggregate(runs)
    gf = result["methods"]["incop-gf"]
    assert gf["stopped_by"] == {"flow": 3, "accuracy": 1}
    assert [lv["stop_reasons"] for lv in gf["levels"]] == [
        {"warmup": 2},
        {"flow": 2},
        {"accuracy": 1, "flow": 1},
    ]
    assert gf["totals"]["retrain_epochs"]["mean"] == 8.0
    assert gf["totals"]["finetune_epochs"]["mean"] == 3.0
    assert gf["totals"]["epochs"]["mean"] == 11.0
    assert gf["totals"]["final_accuracy"]["mean"] == pytest.approx(0.91)  # the fine-tuned one
    assert gf["totals"]["final_test_accuracy"]["mean"] == pytest.approx(0.9)
    assert gf["totals"]["wall_seconds"]["mean"] == pytest.approx(8 + 0.2 + 1.5 + 3.3)
    assert result["ratios"]["incop-gf"]["epochs_vs_sap"] == pytest.approx(11 / 23)


def test_imp_and_pruning_at_init_in_one_comparison(tmp_path):
    settings = {"levels": 2, "warmup_epochs": 2, "max_epochs": 1, "target_remaining": 0.05}
    out = tmp_path / "cmp"
    result = run_comparison(settings, ["sap", "synflow", "random-init"], seeds=[0], out=out)
    levels = {m: entry["levels"] for m, entry in result["methods"].items()}
    # sap follows the comparison's schedule; the at-init methods prune the untrained network
    # once, to target_remaining, and train one phase.
    assert [lv["epochs"]["mean"] for lv in levels["sap"]][0] == 2 and len(levels["sap"]) == 3
    for method in ("synflow", "random-init"):
        assert [lv["epochs"]["mean"] for lv in levels[method]] == [0, 1]
        assert levels[method][1]["remaining_fraction"]["mean"] == pytest.approx(0.05, abs=0.002)
    config = yaml.safe_load((out / "synflow" / "seed-0" / "config.yaml").read_text())
    assert (config["levels"], config["warmup_epochs"]) == (1, 0)
    assert (
        yaml.safe_load((out / "sap" / "seed-0" / "config.yaml").read_text())["target_remaining"]
        is None
    )


@pytest.mark.parametrize(
    ("methods", "settings", "message"),
    [
        (["sap", "incop-gf"], {"target_remaining": 0.1}, "target_remaining: would be ignored"),
        (["synflow", "snip"], {"levels": 3}, "levels: would be ignored: only IMP methods"),
    ],
)
def test_a_comparison_setting_no_method_uses_is_refused(tmp_path, methods, settings, message):
    with pytest.raises(UserError, match=message):
        run_comparison(settings, methods, seeds=[0], out=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_a_target_reaches_every_method_that_prunes_once_and_no_imp_method():
    from incop.tools.compare import check_plan, method_config

    settings = {"target_remaining": 0.05, "levels": 3}
    for method in ("synflow", "oneshot", "rigl", "set", "lomp"):
        assert method_config(settings, method, 0).target_remaining == 0.05, method
        assert method_config(settings, method, 0).levels == 1, method
    assert method_config(settings, "sap", 0).target_remaining is None
    assert method_config(settings, "sap", 0).levels == 3
    check_plan(["sap", "oneshot"], [0], settings)
    with pytest.raises(UserError, match="levels: would be ignored: only IMP methods"):
        check_plan(["oneshot", "rigl"], [0], {"levels": 3})
