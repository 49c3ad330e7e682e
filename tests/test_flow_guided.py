"""Flow-guided pruning against docs/flow-guided.md's formula, worked out by hand."""

import pytest
import torch
from torch import nn

import incop
from incop.config import resolve
from incop.core.masks import full_masks, prunable_parameters
from incop.errors import UserError
from incop.methods.at_init import PruneContext
from incop.methods.flow_guided import FlowGuidedPruner, guide_factors, layer_sensitivity
from incop.methods.pruners import MagnitudePruner
from incop.workload.data import Batches


def chain():
    """x -> (x, 2x) -> (2x, 11x) -> -9x: three bias-free linear layers, every channel a
    multiple of the input, so each correlation is +1, -1 or (a dead channel) 0."""
    net = nn.Sequential(
        nn.Linear(1, 2, bias=False), nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [2.0]]))
        net[1].weight.copy_(torch.tensor([[1.0, 0.5], [3.0, 4.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
    return net


def probe():
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    return Batches(x, torch.zeros(64, dtype=torch.long), 64)


# IF of the chain: pair (1, 2) all +1 (mean 1), pair (2, 3) all -1 (mean -1). Half of the
# weights go (rho = 0.5), so each tensor in turn loses its floor(0.5 * alive) smallest:
# - layer 0 loses w=1: h1 = (0, 2x), a dead channel: pair (1, 2) mean 0.5; s = 0.5
# - layer 1 loses 0.5 and 1: h2 = (0, 11x): pair means 0.5 and -0.5; s = 0.5 + 0.5 = 1
# - layer 2 loses its first 1 (a tie, stable order): h3 = -11x, no pair moves; s = 0
SENSITIVITY = {"0.weight": 0.5, "1.weight": 1.0, "2.weight": 0.0}
FACTORS = {"0.weight": 2.0, "1.weight": 3.0, "2.weight": 1.0}  # 1 + s / mean(s), mean 0.5


def test_sensitivities_and_factors_are_the_hand_computed_ones():
    net = chain()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = full_masks(prunable_parameters(net))
    batches = list(probe())
    sensitivity = layer_sensitivity(net, masks, batches, 0.5, skip=())
    assert sensitivity == pytest.approx(SENSITIVITY, abs=1e-9)
    assert guide_factors(sensitivity) == pytest.approx(FACTORS)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_factors_are_one_when_the_flow_cannot_tell_layers_apart():
    assert guide_factors({"a": 0.0, "b": 0.0}) == {"a": 1.0, "b": 1.0}
    assert guide_factors({"a": 1.0, "b": 3.0}) == {"a": 1.5, "b": 2.5}


def test_the_pruner_keeps_the_base_count_and_ranks_by_the_guided_score():
    net = chain()
    masks = full_masks(prunable_parameters(net))
    context = PruneContext(net, probe(), None, 0, torch.device("cpu"), torch.zeros(1, 1))
    pruner = FlowGuidedPruner(MagnitudePruner(rate=0.5), probe_size=64, skip=()).bind(context)
    weights = {n: p.detach() for n, p in prunable_parameters(net).items()}
    scores = pruner.guided_scores(weights, masks, 0.5)
    for name, factor in FACTORS.items():
        torch.testing.assert_close(scores[name], weights[name].abs() * factor)
    ticket = pruner(weights, masks, torch.Generator())
    # Guided scores: layer 0 (2, 4), layer 1 (3, 1.5, 9, 12), layer 2 (1, 1); 4 of 8 stay,
    # each tensor's best first (4, 12, and layer 2's first 1), then the largest rest: 9.
    assert ticket["0.weight"].flatten().tolist() == [False, True]
    assert ticket["1.weight"].flatten().tolist() == [False, False, True, True]
    assert ticket["2.weight"].flatten().tolist() == [True, False]


def test_flow_guided_where_it_would_do_nothing_is_refused():
    with pytest.raises(UserError, match="score: flow-guided ranks the weights"):
        resolve({"method": "sap", "score": "flow-guided", "scope": "layer"})
    with pytest.raises(UserError, match="score: flow-guided ranks the weights"):
        resolve({"method": "random", "score": "flow-guided"})


def test_flow_guided_sap_end_to_end_keeps_sap_counts(tiny_data, tiny_model):
    train, val = tiny_data
    settings = {"method": "sap", "levels": 2, "warmup_epochs": 2, "max_epochs": 1}
    guided = incop.prune(tiny_model, train, val, score="flow-guided", probe_size=128, **settings)
    assert [lv.epochs for lv in guided.levels] == [2, 1, 1]
    assert 0 < guided.levels[-1].remaining_fraction < guided.levels[1].remaining_fraction < 1
