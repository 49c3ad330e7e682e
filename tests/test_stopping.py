import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from incop.config import resolve
from incop.methods.stopping import (
    AccuracyRule,
    FlowRule,
    GradientFlowRule,
    InformationFlowRule,
    Reference,
    StoppingRule,
)


def first_stop(rule, accuracies, distances=None):
    """The epoch at which ``rule`` stops on scripted per-epoch metrics (index = epoch)."""
    rule.target = 0.9
    distances = distances or [None] * len(accuracies)
    for epoch, (acc, dist) in enumerate(zip(accuracies, distances, strict=True)):
        reason = rule.decide(epoch, acc, dist)
        if reason:
            return epoch, reason
    return None


def test_fixed_stops_at_the_cap_whatever_the_metrics():
    assert first_stop(StoppingRule(max_epochs=3), [1.0] * 10) == (3, "cap")
    assert first_stop(StoppingRule(max_epochs=0), [0.0]) == (0, "cap")


def test_accuracy_rule_fires_at_first_epoch_within_delta():
    accs = [0.5, 0.7, 0.87, 0.95, 0.99]
    assert first_stop(AccuracyRule(max_epochs=10, delta=0.05), accs) == (2, "accuracy")
    assert first_stop(AccuracyRule(max_epochs=10, delta=0.0), accs) == (3, "accuracy")
    assert first_stop(AccuracyRule(max_epochs=1, delta=0.0), accs) == (1, "cap")


def test_min_epochs_holds_a_rule_back():
    accs = [0.95, 0.95, 0.95, 0.95]
    assert first_stop(AccuracyRule(max_epochs=10, min_epochs=0), accs) == (0, "accuracy")
    assert first_stop(AccuracyRule(max_epochs=10, min_epochs=2), accs) == (2, "accuracy")


def test_flow_rule_fires_on_distance_below_eps_or_on_dense_accuracy():
    rule = FlowRule(max_epochs=10, eps=0.1)
    assert first_stop(rule, [0.5, 0.6, 0.7, 0.8], [0.5, 0.3, 0.09, 0.01]) == (2, "flow")
    # distance never below eps: stops when accuracy reaches a* = 0.9
    assert first_stop(rule, [0.5, 0.6, 0.91, 0.8], [0.5, 0.3, 0.2, 0.2]) == (2, "accuracy")
    # a distance equal to eps is not below it
    assert first_stop(rule, [0.5, 0.5, 0.5], [0.1, 0.1, 0.05]) == (2, "flow")
    assert first_stop(FlowRule(max_epochs=2, eps=0.1), [0.1] * 3, [1.0] * 3) == (2, "cap")


class ScriptedFlow(FlowRule):
    """A flow rule whose 'flow' is read off a script, to check the measure -> decide wiring."""

    def flow(self, model, masks):
        return self.script.pop(0)


def test_flow_rule_measures_distance_to_the_reference_flow():
    rule = ScriptedFlow(max_epochs=5, eps=0.5, distance="l2")
    rule.script = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0]), torch.tensor([1.3, 1.4])]
    rule.prepare(Reference(model=None, masks={}, score=0.9, probe=[]))
    assert rule.measure(None, {}) == pytest.approx(2.0)
    assert rule.measure(None, {}) == pytest.approx(0.5)
    assert rule.decide(1, 0.1, 0.5) is None and rule.decide(1, 0.1, 0.49) == "flow"


@pytest.mark.parametrize(
    "method, rule_type", [("incop-if", InformationFlowRule), ("incop-gf", GradientFlowRule)]
)
def test_methods_build_their_rules_with_every_part_overridable(method, rule_type):
    rule = resolve(
        {"method": method, "max_epochs": 7, "eps": 0.3, "distance": "cosine"}
    ).build_stopping_rule()
    assert isinstance(rule, rule_type)
    assert (rule.max_epochs, rule.eps, rule.distance) == (7, 0.3, "cosine")
    assert isinstance(resolve({"method": "sap-acc"}).build_stopping_rule(), AccuracyRule)
    assert type(resolve({"method": "sap"}).build_stopping_rule()) is StoppingRule


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1), min_size=1, max_size=12),
    distances=st.lists(st.floats(0, 2), min_size=12, max_size=12),
    eps=st.floats(0.01, 1),
    max_epochs=st.integers(0, 11),
)
def test_without_the_accuracy_clause_a_flow_rule_never_stops_on_accuracy(
    scores, distances, eps, max_epochs
):
    clause_off = FlowRule(max_epochs=max_epochs, eps=eps, accuracy_clause=False)
    found = first_stop(clause_off, scores, distances[: len(scores)])
    assert found is None or found[1] in ("flow", "cap")
    if found and found[1] == "flow":
        assert distances[found[0]] < eps
    # and it is the clause that makes the difference: with it, a score >= a* stops
    with_clause = first_stop(
        FlowRule(max_epochs=max_epochs, eps=eps), scores, distances[: len(scores)]
    )
    reached = [e for e, s in enumerate(scores) if e >= 1 and s >= 0.9 and distances[e] >= eps]
    if reached and (found is None or found[0] > reached[0]) and reached[0] < max_epochs:
        assert with_clause == (reached[0], "accuracy")


def test_accuracy_clause_flag_is_refused_where_no_flow_rule_would_use_it():
    from incop.errors import UserError

    assert (
        resolve({"method": "incop-gf", "accuracy_clause": False})
        .build_stopping_rule()
        .accuracy_clause
        is False
    )
    with pytest.raises(UserError, match="accuracy_clause: false would be ignored"):
        resolve({"method": "sap", "accuracy_clause": False})


def scripted_pruner(masks_per_call):
    """A pruner that returns the next mask of a script, whatever the weights."""
    script = list(masks_per_call)
    return lambda weights, masks, generator: {"w": script.pop(0)}


def test_the_mask_rule_fires_once_the_next_mask_settles():
    from incop.methods.stopping import MaskRule

    alive = torch.ones(10, dtype=torch.bool)
    nexts = [
        torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool),  # epoch 0
        torch.tensor([1, 1, 1, 0, 0, 1, 1, 0, 0, 0], dtype=torch.bool),  # 4 of 10 changed
        torch.tensor([1, 1, 1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool),  # 2 of 10
        torch.tensor([1, 1, 1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool),  # 0 of 10
    ]
    rule = MaskRule(max_epochs=10, eps=0.25, pruner=scripted_pruner(nexts))
    rule.prepare(Reference(model=None, masks={}, score=0.9))
    model = torch.nn.Module()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(10)))
    distances = [rule.measure(model, {"w": alive}) for _ in nexts]
    assert distances == [None, 0.4, 0.2, 0.0]
    assert first_stop(rule, [0.0] * 4, distances) == (2, "mask")
    # only alive weights count: of the 2 decisions that change, one is of a pruned weight
    half = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    rule = MaskRule(max_epochs=10, eps=0.25, pruner=scripted_pruner(nexts[1:3]))
    rule.prepare(Reference(model=None, masks={}, score=0.9))
    assert [rule.measure(model, {"w": half}) for _ in range(2)] == [None, 1 / 7]


def test_the_mask_rule_starts_afresh_at_each_level():
    from incop.methods.stopping import MaskRule

    same = torch.ones(4, dtype=torch.bool)
    rule = MaskRule(max_epochs=10, eps=0.5, pruner=scripted_pruner([same] * 3))
    rule.prepare(Reference(model=None, masks={}, score=0.9))
    model = torch.nn.Module()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(4)))
    assert rule.measure(model, {"w": same}) is None
    pruned = torch.tensor([1, 1, 1, 0], dtype=torch.bool)  # a prune happened: new level
    assert rule.measure(model, {"w": pruned}) is None
    assert rule.measure(model, {"w": pruned}) == 0.0
