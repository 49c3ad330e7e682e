"""Issue 24's rules on scripted sequences: plateau rules on the flow and on the validation
metric, mask stability with the flow as a veto, the noise floor sigma, the EPI paper's Psi,
SNIP's two modes, and the Frobenius summary of the information flow."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import incop
from incop.engine.imp import IMP
from incop.engine.outputs import read_metrics
from incop.methods.at_init import snip_scores
from incop.methods.stopping import FlowPlateau, GradientFlowRule, LossPlateau, MaskFlow, MaskRule
from incop.methods.stopping.plateau import plateaued
from incop.methods.warmup_stop.epi import EPIStop, psi
from incop.tools.cli import main


def first_stop(rule, scores, distances=None, mask_distances=None):
    """The epoch and reason ``rule`` stops at on scripted per-epoch numbers (index = epoch)."""
    rule.target = 0.9
    distances = distances or [None] * len(scores)
    for epoch, (score, distance) in enumerate(zip(scores, distances, strict=True)):
        if mask_distances is not None:
            rule.mask_distance = mask_distances[epoch]
        reason = rule.decide(epoch, score, distance)
        if reason:
            return epoch, reason
    return None


def test_plateaued_at_the_tolerance():
    assert not plateaued([1.0], 0.05)  # nothing earlier
    assert not plateaued([1.0, 0.94], 0.05)  # fell by more than 5%
    assert plateaued([1.0, 0.95], 0.05)  # by exactly 5%: not more, so a plateau
    assert plateaued([0.5, 0.2, 0.6], 0.0)  # against the smallest earlier one, not the last


def test_flow_plateau_stops_once_the_distance_stops_falling():
    rule = FlowPlateau(max_epochs=10, plateau_tol=0.1, accuracy_clause=False)
    distances = [0.5, 0.3, 0.2, 0.19, 0.1]
    assert first_stop(rule, [0.0] * 5, distances) == (3, "flow-plateau")
    # min_epochs holds it back; the cap ends a distance that keeps falling.
    held = FlowPlateau(max_epochs=10, min_epochs=4, plateau_tol=0.1, accuracy_clause=False)
    assert first_stop(held, [0.0] * 6, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]) == (4, "flow-plateau")
    capped = FlowPlateau(max_epochs=3, plateau_tol=0.1, accuracy_clause=False)
    assert first_stop(capped, [0.0] * 5, [0.5, 0.4, 0.3, 0.2, 0.1]) == (3, "cap")
    # With the accuracy clause, a* reached stops it first; each level starts a new curve.
    clause = FlowPlateau(max_epochs=10, plateau_tol=0.1)
    assert first_stop(clause, [0.5, 0.95, 0.5], [0.5, 0.3, 0.2]) == (1, "accuracy")
    assert first_stop(rule, [0.0] * 3, [0.1, 0.05, 0.01]) is None  # history reset at epoch 0


def test_loss_plateau_is_early_stopping_with_patience():
    assert first_stop(LossPlateau(max_epochs=10), [0.5, 0.6, 0.6, 0.7]) == (2, "plateau")
    patient = LossPlateau(max_epochs=10, patience=2)
    assert first_stop(patient, [0.5, 0.6, 0.6, 0.55, 0.7]) == (3, "plateau")
    assert first_stop(LossPlateau(max_epochs=3), [0.1, 0.2, 0.3, 0.4, 0.5]) == (3, "cap")
    held = LossPlateau(max_epochs=10, min_epochs=3)
    assert first_stop(held, [0.5, 0.4, 0.4, 0.4]) == (3, "plateau")


def test_mask_flow_needs_both_the_mask_and_the_flow():
    rule = MaskFlow(max_epochs=10, eps=0.2, accuracy_clause=False, mask_eps=0.05)
    rule.mask = MaskRule(10, 1, 0.05)
    masks = [None, 0.2, 0.01, 0.01, 0.01]
    flows = [0.5, 0.1, 0.3, 0.19, 0.1]
    # epoch 1: flow in, mask moving; epoch 2: mask still, flow out; epoch 3: both.
    assert first_stop(rule, [0.0] * 5, flows, masks) == (3, "mask+flow")
    assert first_stop(rule, [0.0] * 3, [0.1, 0.1, 0.1], [None, 0.06, 0.05]) is None


class ScriptedNoise(GradientFlowRule):
    """A GF rule whose noise measurements (those on another probe set, or of the copy trained
    one more epoch) are read off a script: sigma must be their largest."""

    script = [0.2, 0.5, 0.3, 0.4]
    calls = []

    def measure(self, model, masks, probe=None):
        if probe is None:
            return super().measure(model, masks)
        self.calls.append(probe)
        return self.script[len(self.calls) - 1]


def test_sigma_is_the_largest_noise_distance_and_scales_eps(tmp_path):
    x = torch.randn(256, 10, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    data = incop.Batches(x, y, 32, shuffle=True)
    rule = ScriptedNoise(max_epochs=3, eps=2.0, eps_mode="noise", noise_probes=3)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    result = incop.prune(net, data, data, stop=rule, levels=1, warmup_epochs=1, max_epochs=3,
                         out=str(tmp_path / "run"))  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(rule.calls) == 4  # three other probe sets, then theta* one epoch on
    assert summary["noise_floor"] == {"gf": 0.5}
    assert summary["eps_used"] == pytest.approx(1.0)  # eps 2 x sigma 0.5
    assert rule.threshold == pytest.approx(1.0)
    assert result.cost["flows"] > 0


def test_a_noise_run_records_sigma_and_stops_for_the_reason_its_log_shows(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "incop-gf", "--eps-mode", "noise", "--eps", "1",
                 "--levels", "2", "--warmup-epochs", "2", "--max-epochs", "4",
                 "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    sigma = summary["noise_floor"]["gf"]
    assert sigma > 0 and summary["eps_used"] == pytest.approx(sigma)
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    for level in summary["levels"][1:]:
        last = [r for r in records if r["level"] == level["level"]][-1]
        if level["stop_reason"] == "flow":
            assert last["distance"] < summary["eps_used"]
        else:
            assert level["stop_reason"] in ("accuracy", "cap")
    assert summary["cost"]["flows"] > 0


@pytest.mark.parametrize("stop", ["gf-plateau", "if-plateau", "loss-plateau", "mask-gf", "mask-if"])
def test_each_new_rule_runs_end_to_end_on_digits(tmp_path, stop):
    out = tmp_path / "run"
    assert main(["run", "--method", "sap", "--stop", stop, "--levels", "2", "--warmup-epochs",
                 "2", "--max-epochs", "3", "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["stop"] == stop
    reasons = {level["stop_reason"] for level in summary["levels"][1:]}
    assert reasons <= set(incop.STOPPING_RULES.get(stop).reasons) | {"accuracy", "cap"}


@pytest.mark.parametrize(
    "flags", [["--method", "sap-mask"], ["--method", "sap", "--stop", "mask-gf"]]
)
def test_a_mask_rule_interrupted_mid_level_resumes_as_an_uninterrupted_run(
    tmp_path, monkeypatch, flags
):
    run = ["run", *flags, "--levels", "2", "--warmup-epochs", "2", "--max-epochs", "3"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*run, "--out", str(whole)]) == 0
    original = IMP.log

    def interrupted(self, level, epoch, clock, record):
        if level == 1 and epoch == 1:  # mid level: the rule's state comes back from state.pt
            raise KeyboardInterrupt
        return original(self, level, epoch, clock, record)

    monkeypatch.setattr(IMP, "log", interrupted)
    assert main([*run, "--out", str(cut)]) == 130
    monkeypatch.setattr(IMP, "log", original)
    assert main(["run", "--resume", str(cut)]) == 0

    def plain(folder):
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")}
                for r in read_metrics(folder / "metrics.jsonl")]  # fmt: skip

    assert plain(whole) == plain(cut)


def test_a_plateau_rule_refuses_an_eps_it_would_ignore(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--method", "sap", "--stop", "gf-plateau", "--eps", "0.3",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "eps: 0.3 would be ignored" in capsys.readouterr().err and not out.exists()


def test_psi_on_hand_built_unit_counts():
    a, b = {"c1": 10, "c2": 4}, {"c1": 8, "c2": 4}
    assert psi(a, b) == pytest.approx(1 - (2 / 18) / 2)
    assert psi(a, a) == 1.0 and psi({"c": 0}, {"c": 0}) == 1.0


def test_epi_units_ends_at_the_running_maximum_above_the_threshold():
    stop = EPIStop(window=1, threshold=0.9, min_epochs=0, mode="units")
    units = [[8, 4], [8, 4], [6, 4], [6, 4]]
    decided = []
    for epoch, (n1, n2) in enumerate(units):
        masks = {"c1": torch.arange(8)[:, None].repeat(1, 3) < n1,
                 "c2": torch.arange(4)[:, None].repeat(1, 3) < n2}  # fmt: skip
        stop.observe(epoch, lambda m=masks: m)
        decided.append((stop.similarity, stop.decide(epoch)))
    # epoch 1 equals epoch 0 (Psi 1); epoch 2 drops; epoch 3 is at 1 again: a running max.
    assert decided[0] == (None, False)
    assert decided[1] == (1.0, True)
    assert decided[2][0] == pytest.approx(1 - (2 / 14) / 2) and not decided[2][1]
    assert decided[3] == (1.0, True)


def test_epi_units_needs_channel_scope(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--warmup-stop", "epi", "--epi-mode", "units", "--out", str(out)]) == 2
    assert "only scope channel decides" in capsys.readouterr().err


def test_snip_scores_in_train_and_eval_mode_on_a_batchnorm_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():  # running statistics unlike the batch's
        net[1].running_mean.fill_(3.0)
        net[1].running_var.fill_(0.25)
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))
    masks = {"0.weight": torch.ones(8, 6, dtype=torch.bool),
             "3.weight": torch.ones(2, 8, dtype=torch.bool)}  # fmt: skip
    trained = snip_scores(net, masks, (x, y), F.cross_entropy)
    evaluated = snip_scores(net, masks, (x, y), F.cross_entropy, train=False)
    assert not torch.allclose(trained["0.weight"], evaluated["0.weight"])
    for mode, scores in ((True, trained), (False, evaluated)):
        copy = nn.Sequential(*[m for m in __import__("copy").deepcopy(net)]).train(mode)
        F.cross_entropy(copy(x), y).backward()
        assert torch.allclose(scores["0.weight"], (copy[0].weight.grad * copy[0].weight).abs())
    assert net[1].running_mean.eq(3.0).all()  # scored on a copy: statistics untouched


def test_the_frobenius_summary_compares_whole_matrices():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    batches = [(torch.randn(64, 6), torch.zeros(64))]
    flow = incop.information_flow(net, batches, summary="frobenius")
    assert torch.equal(flow.vector, torch.cat([c.flatten() for c in flow.matrices]))
    other = incop.information_flow(nn.Sequential(*[m for m in net]), batches, summary="frobenius")
    assert torch.equal(other.vector, flow.vector)


@pytest.mark.slow
def test_the_cost_frontier_study_runs_its_quick_version(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "cost_frontier.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path / "s"),
                           "--plot", str(tmp_path / "f.png")], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.split("family ")[1]
    for family in ("sap ", "sap-acc", "incop-gf", "gf-plateau", "loss-plateau", "mask-gf"):
        assert f"\n{family}" in table, family
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_a_plateau_rule_resumed_mid_level_decides_as_an_uninterrupted_one():
    from incop.methods.stopping import Reference

    scores = [0.5, 0.6, 0.7, 0.7]
    whole = LossPlateau(max_epochs=10)
    whole.prepare(Reference(model=None, masks={}, score=0.9))
    decisions = [whole.decide(e, s, None) for e, s in enumerate(scores)]
    first = LossPlateau(max_epochs=10)
    first.prepare(Reference(model=None, masks={}, score=0.9))
    for e, s in enumerate(scores[:2]):
        first.decide(e, s, None)
    resumed = LossPlateau(max_epochs=10)
    resumed.load_state_dict(first.state_dict(), Reference(model=None, masks={}, score=0.9))
    assert [resumed.decide(e, s, None) for e, s in enumerate(scores) if e >= 2] == decisions[2:]
    assert decisions == [None, None, None, "plateau"]
