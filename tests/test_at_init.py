"""Pruning at initialisation: SynFlow and SNIP against independent computations, and the
one-shot methods end to end."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import incop
from incop.config import resolve
from incop.core.masks import full_masks, prunable_parameters, remaining_fraction
from incop.errors import UserError
from incop.methods.at_init import PruneContext, snip_scores, synflow_scores
from incop.methods.pruners import SNIPPruner, SynFlowPruner
from incop.tools.cli import main
from incop.workload.data import Batches
from incop.workload.models import build_model


def mlp():
    torch.manual_seed(0)
    return build_model("mlp", 1, 8, 10)


def context(model, data=None, loss_fn=F.cross_entropy):
    example = torch.zeros(2, 1, 8, 8) if data is None else next(iter(data))[0]
    return PruneContext(model, data, loss_fn, 0, torch.device("cpu"), example)


def reference_synflow(model, target, iterations):
    """SynFlow written out as in Tanaka et al.'s code: the weights multiplied by their masks
    in the forward pass, every state tensor made absolute, scores |grad * w| of the raw
    weights, and a global threshold at the k-th smallest score (kthvalue) each round."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    state = {k: v.abs() for k, v in model.state_dict().items()}
    masks = {n: torch.ones_like(state[n]) for n in names}
    ones = torch.ones(1, 1, 8, 8)
    for k in range(1, iterations + 1):
        raw = {n: state[n].clone().requires_grad_(True) for n in names}
        params = {**state, **{n: raw[n] * masks[n] for n in names}}
        functional_call(model.eval(), params, (ones,)).sum().backward()
        scores = {n: (raw[n].grad * raw[n]).detach().abs() for n in names}
        flat = torch.cat([scores[n].flatten() for n in names])
        pruned = int((1 - target ** (k / iterations)) * flat.numel())
        if pruned < 1:
            continue
        threshold = torch.kthvalue(flat, pruned).values
        masks = {n: (scores[n] > threshold).float() for n in names}
    return {n: m.bool() for n, m in masks.items()}


def test_synflow_agrees_with_an_independent_implementation_and_hits_the_target():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    masks = full_masks(prunable_parameters(model))
    pruner = SynFlowPruner(target=0.02, iterations=100).bind(context(model))
    ours = pruner({}, masks, torch.Generator())
    theirs = reference_synflow(copy.deepcopy(model), 0.02, 100)
    total = sum(m.numel() for m in ours.values())
    agree = sum(int((ours[n] == theirs[n]).sum()) for n in ours) / total
    assert agree > 0.99
    assert abs(remaining_fraction(ours) - 0.02) <= 0.002
    assert all(m.any() for m in ours.values())  # no layer emptied
    # The model is as it was: weights, signs, and no gradients left behind.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_synflow_scores_are_the_path_sums_of_a_hand_computed_linear_chain():
    # y = w2 * |w1| * 1 on one input: R = |w1| |w2|, so each weight's score is R itself.
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(-2.0)
        net[1].weight.fill_(3.0)
    masks = {
        "0.weight": torch.ones(1, 1, dtype=torch.bool),
        "1.weight": torch.ones(1, 1, dtype=torch.bool),
    }
    scores = synflow_scores(net, masks, torch.zeros(5, 1))
    assert scores["0.weight"].item() == pytest.approx(6.0)
    assert scores["1.weight"].item() == pytest.approx(6.0)
    assert net[0].weight.item() == -2.0  # sign kept


def test_synflow_keeps_every_layer_where_magnitude_would_empty_one():
    model = mlp()
    with torch.no_grad():  # a layer of tiny weights: global magnitude pruning empties it
        model.get_parameter("fc3.weight").mul_(1e-4)
    masks = full_masks(prunable_parameters(model))
    ticket = SynFlowPruner(target=0.01, iterations=20).bind(context(model))({}, masks, None)
    assert all(int(m.sum()) >= 1 for m in ticket.values())
    assert abs(remaining_fraction(ticket) - 0.01) <= 0.002


def test_snip_scores_match_a_hand_computation():
    # L = sum over the batch of w2 . (W1 x): dL/dW1[i, j] = w2[i] * sum_x x[j], and
    # dL/dw2[i] = sum_x (W1 x)[i]; the scores are |w * dL/dw|.
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    w1 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    w2 = torch.tensor([[-1.0, 4.0]])
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[1].weight.copy_(w2)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    masks = {
        "0.weight": torch.ones(2, 2, dtype=torch.bool),
        "1.weight": torch.ones(1, 2, dtype=torch.bool),
    }
    scores = snip_scores(net, masks, (x, torch.zeros(2)), lambda out, y: out.sum())
    xsum = [1.0 + 3.0, 2.0 - 1.0]
    h = [[1 * 1 - 2 * 2, 0.5 * 1 + 3 * 2], [1 * 3 - 2 * -1, 0.5 * 3 + 3 * -1]]
    expected_1 = [
        [abs(w1[i, j].item() * w2[0, i].item() * xsum[j]) for j in range(2)] for i in range(2)
    ]
    expected_2 = [[abs(w2[0, i].item() * (h[0][i] + h[1][i])) for i in range(2)]]
    torch.testing.assert_close(scores["0.weight"], torch.tensor(expected_1))
    torch.testing.assert_close(scores["1.weight"], torch.tensor(expected_2))
    # Pruning to 2 of 6 weights keeps the two largest scores (one per tensor at least).
    batches = Batches(x, torch.zeros(2), 2)
    ticket = SNIPPruner(target=2 / 6, batch_size=2).bind(
        context(net, batches, lambda out, y: out.sum())
    )({}, masks, None)
    flat = torch.tensor([*sum(expected_1, []), *expected_2[0]])
    kept = torch.cat([ticket["0.weight"].flatten(), ticket["1.weight"].flatten()])
    assert int(kept.sum()) == 2
    assert kept[flat.argmax()]  # the most sensitive connection survives


def test_snip_leaves_the_model_and_the_random_state_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    before = copy.deepcopy(model.state_dict())
    data = Batches(torch.randn(64, 4), torch.randint(0, 3, (64,)), 16)
    masks = full_masks(prunable_parameters(model))
    rng = torch.get_rng_state()
    ticket = SNIPPruner(target=0.25, batch_size=32).bind(context(model, data))({}, masks, None)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert remaining_fraction(ticket) == pytest.approx(0.25, abs=0.01)


def test_pruners_that_score_with_the_network_refuse_to_run_unbound():
    model = mlp()
    with pytest.raises(RuntimeError, match="bind"):
        SynFlowPruner()({}, full_masks(prunable_parameters(model)), None)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "synflow", "levels": 3}, "levels: 3 is not allowed with target_remaining"),
        # sap takes a target since the pruning limit (issue 25): IMP then ends there.
        ({"method": "sap", "target_remaining": 0.1, "levels": 0}, "levels is 0"),
        ({"method": "lth", "snip_batch": 5}, "snip_batch: 5 would be ignored"),
        ({"method": "sap", "synflow_iterations": 5}, "synflow_iterations: 5 would be ignored"),
        ({"method": "snip", "target_remaining": 1.5}, "target_remaining: 1.5 is not allowed"),
        ({"method": "snip", "scope": "layer"}, "scope: 'layer' is not allowed"),
        ({"method": "random-init", "rate": 0.5}, "rate: 0.5 would be ignored"),
        ({"pruner": "synflow", "levels": 1}, "target_remaining: the synflow pruner needs it"),
    ],
)
def test_one_shot_settings_that_would_do_nothing_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        resolve(settings)


@pytest.mark.parametrize("method", ["synflow", "snip", "random-init"])
def test_at_init_methods_prune_once_then_train(method, tiny_data, tiny_model):
    train, val = tiny_data
    result = incop.prune(tiny_model, train, val, method=method, max_epochs=2, target_remaining=0.05)
    dense, ticket = result.levels
    assert dense.epochs == 0  # no warm-up: pruned untrained
    assert ticket.epochs == 2 and ticket.stop_reason == "cap"
    assert abs(ticket.remaining_fraction - 0.05) <= 0.002
    assert all(fraction > 0 for fraction in ticket.layer_remaining.values())


def test_synflow_on_the_default_dataset_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--method", "synflow", "--target-remaining", "0.02", "--max-epochs", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    level = summary["levels"][1]
    assert abs(level["remaining_fraction"] - 0.02) <= 0.002
    assert set(level["layer_remaining"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert min(level["layer_remaining"].values()) > 0
    assert summary["config"]["pruner"] == "synflow"


def test_list_describes_the_methods_and_settings(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for name, words in (
        ("synflow", "SynFlow at init"),
        ("snip", "SNIP at init"),
        ("random-init", "random at init"),
        ("target_remaining", "prune once"),
        ("snip_batch", "one batch"),
    ):
        line = next(line for line in printed.splitlines() if line.strip().startswith(name + " "))
        assert words in line
