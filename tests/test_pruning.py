import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from incop import pq_index, sap_prune_count
from incop.core.masks import count_alive, full_masks
from incop.methods.pruners import MagnitudePruner, RandomPruner, SAPPruner

GEN = torch.Generator().manual_seed(0)


def power_mean(w, s):
    return (sum(abs(x) ** s for x in w) / len(w)) ** (1 / s)


@pytest.mark.parametrize(
    "w, p, q",
    [
        ([1.0, 2.0, 3.0, 4.0], 0.5, 1.0),
        ([3.0, -4.0], 1.0, 2.0),
        ([0.1, 0.0, 5.0, -2.0, 1.0], 1.0, 2.0),
    ],
)
def test_pq_index_matches_the_formula_by_hand(w, p, q):
    d = len(w)
    lp = sum(abs(x) ** p for x in w) ** (1 / p)
    lq = sum(abs(x) ** q for x in w) ** (1 / q)
    by_norms = 1 - d ** (1 / q - 1 / p) * lp / lq
    by_means = 1 - power_mean(w, p) / power_mean(w, q)
    assert by_norms == pytest.approx(by_means)
    assert pq_index(torch.tensor(w, dtype=torch.float64), p, q) == pytest.approx(
        by_norms, abs=1e-12
    )


def test_pq_index_hand_value():
    # w = (3, -4), p=1, q=2: 1 - 2^(-1/2) * 7 / 5
    assert pq_index(torch.tensor([3.0, -4.0]), 1.0, 2.0) == pytest.approx(
        1 - 7 / (5 * math.sqrt(2))
    )


def test_pq_index_of_a_constant_vector_is_zero_and_one_hot_is_largest():
    assert pq_index(torch.full((100,), 0.3), 0.5, 1.0) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(100)
    one_hot[7] = 1.0
    # 1 - d^(1/q - 1/p): the sparsest vector of dimension d
    assert pq_index(one_hot, 0.5, 1.0) == pytest.approx(1 - 100 ** (1 - 2))


def test_normal_sanity_values_from_method_md():
    w = torch.randn(2_000_000, generator=torch.Generator().manual_seed(1))
    pqi12 = pq_index(w, 1.0, 2.0)
    assert pqi12 == pytest.approx(1 - math.sqrt(2 / math.pi), abs=2e-3)
    assert sap_prune_count(w.numel(), pqi12, 1.0, 2.0) / w.numel() == pytest.approx(0.363, abs=3e-3)
    pqi051 = pq_index(w, 0.5, 1.0)
    assert pqi051 == pytest.approx(0.153, abs=2e-3)
    assert sap_prune_count(w.numel(), pqi051, 0.5, 1.0) / w.numel() == pytest.approx(
        0.153, abs=3e-3
    )


def test_pq_index_edge_cases():
    assert pq_index(torch.tensor([]), 0.5, 1.0) == 0.0
    assert pq_index(torch.zeros(10), 0.5, 1.0) == 0.0
    # scale-free: tiny and huge weights give the same answer, no under/overflow
    w = torch.tensor([1.0, 2.0, 3.0])
    assert pq_index(w * 1e-30, 1.0, 2.0) == pytest.approx(pq_index(w, 1.0, 2.0))
    assert pq_index(w * 1e30, 1.0, 2.0) == pytest.approx(pq_index(w, 1.0, 2.0))
    with pytest.raises(ValueError, match="0 < p < q"):
        pq_index(w, 2.0, 1.0)


def test_sap_prune_count_by_hand():
    # r = d (1+eta)^(-q/(q-p)) (1-pqi)^(qp/(q-p)); c = floor(d min(gamma(1 - r/d), beta))
    d, pqi, p, q = 1000, 0.2, 1.0, 2.0
    # r = 1000 * 0.8^2 = 640 exactly, so c = 360 (a naive float product floors to 359)
    assert sap_prune_count(d, pqi, p, q) == 360
    # eta_r = 1: r/d = (1 + 1)^(-2) * 0.64 = 0.16, so c = 840; eta_r = 3: beta caps c at 900
    assert sap_prune_count(d, pqi, p, q, eta_r=1.0) == 840
    assert sap_prune_count(d, pqi, p, q, eta_r=3.0) == 900  # 1 - 0.04 = 0.96 > beta 0.9
    assert sap_prune_count(d, pqi, p, q, gamma=0.5) == 180
    assert sap_prune_count(d, 0.0, p, q) == 0
    assert sap_prune_count(0, 0.5, p, q) == 0


@settings(max_examples=200, deadline=None)
@given(
    d=st.integers(0, 10**6),
    pqi=st.floats(0, 0.999),
    pq=st.sampled_from([(0.5, 1.0), (1.0, 2.0), (0.3, 0.7)]),
    eta=st.floats(0, 5),
    gamma=st.floats(0.01, 5),
    beta=st.floats(0.01, 0.99),
)
def test_sap_prune_count_is_bounded_by_beta(d, pqi, pq, eta, gamma, beta):
    c = sap_prune_count(d, pqi, *pq, eta_r=eta, gamma=gamma, beta=beta)
    assert 0 <= c <= math.floor(d * beta + 1e-6)


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(20, 10, generator=g),
        "b.weight": torch.randn(5, 20, generator=g) * 3,
    }


def test_lth_global_removes_rate_of_alive_smallest_first():
    w = _weights()
    masks = full_masks(w)
    new = MagnitudePruner(rate=0.2, scope="global")(w, masks, GEN)
    assert count_alive(new) == 300 - 60
    kept = torch.cat([w[n][new[n]].abs() for n in w])
    removed = torch.cat([w[n][~new[n]].abs() for n in w])
    assert removed.max() <= kept.min()
    # a second round removes 20% of what is alive, and never revives
    newer = MagnitudePruner(rate=0.2, scope="global")(w, new, GEN)
    assert count_alive(newer) == 240 - 48
    assert all((newer[n] <= new[n]).all() for n in w)


def test_lth_layer_scope_prunes_each_tensor_at_the_rate():
    w = _weights()
    new = MagnitudePruner(rate=0.5, scope="layer")(w, full_masks(w), GEN)
    assert int(new["a.weight"].sum()) == 100 and int(new["b.weight"].sum()) == 50


def test_random_pruner_rate_and_seed():
    w = _weights()
    a = RandomPruner(rate=0.3)(w, full_masks(w), torch.Generator().manual_seed(5))
    b = RandomPruner(rate=0.3)(w, full_masks(w), torch.Generator().manual_seed(5))
    c = RandomPruner(rate=0.3)(w, full_masks(w), torch.Generator().manual_seed(6))
    assert count_alive(a) == 210
    assert all(torch.equal(a[n], b[n]) for n in w)
    assert not all(torch.equal(a[n], c[n]) for n in w)


@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_sap_prunes_the_count_of_its_scope(scope):
    w = _weights()
    masks = full_masks(w)
    pruner = SAPPruner(p=1.0, q=2.0, scope=scope)
    new = pruner(w, masks, GEN)
    if scope == "global":
        alive = torch.cat([w[n].flatten() for n in w])
        expected = 300 - pruner.count(alive)
    elif scope == "layer":
        expected = sum(w[n].numel() - pruner.count(w[n].flatten()) for n in w)
    else:
        expected = sum(row.numel() - pruner.count(row) for n in w for row in w[n])
    assert count_alive(new) == expected
    assert count_alive(new) < 300


def test_keep_at_least_one_weight_per_tensor():
    w = {"big.weight": torch.full((10, 10), 100.0), "tiny.weight": torch.full((2, 2), 1e-3)}
    new = MagnitudePruner(rate=0.9, scope="global")(w, full_masks(w), GEN)
    assert int(new["tiny.weight"].sum()) == 1
    # nothing alive stays nothing alive: d = 0 in a scope prunes nothing and does not crash
    dead = {
        "big.weight": torch.ones(10, 10, dtype=torch.bool),
        "tiny.weight": torch.zeros(2, 2, dtype=torch.bool),
    }
    newer = SAPPruner(scope="layer")(w, dead, GEN)
    assert int(newer["tiny.weight"].sum()) == 0


def test_sap_on_all_zero_weights_prunes_nothing():
    w = {"z.weight": torch.zeros(4, 4)}
    new = SAPPruner()(w, full_masks(w), GEN)
    assert count_alive(new) == 16


@pytest.mark.parametrize(
    "w, p, q, expected",
    [
        # k of d entries infinite: 1 - (k/d)^(1/p - 1/q), whatever the finite entries are
        ([float("inf"), 1.0, 2.0, 3.0], 0.5, 1.0, 1 - (1 / 4) ** (2 - 1)),
        ([float("-inf"), float("inf"), 0.0, 5.0], 1.0, 2.0, 1 - (2 / 4) ** (1 - 0.5)),
        ([float("inf")] * 3, 0.5, 1.0, 0.0),
    ],
)
def test_pq_index_of_infinite_weights_is_the_limit_not_nan(w, p, q, expected):
    value = pq_index(torch.tensor(w), p, q)
    assert math.isfinite(value) and value == pytest.approx(expected)
    # The limit: one huge finite value behaves the same
    finite = torch.tensor([1e300 if math.isinf(v) else v for v in w], dtype=torch.float64)
    assert pq_index(finite, p, q) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("pruner", [MagnitudePruner(rate=0.2), SAPPruner(p=0.5, q=1.0)])
def test_global_pruning_that_must_keep_one_per_tensor_does_not_stall(pruner):
    # The second tensor's three 0.5s and then the first tensor's weights are the smallest:
    # keeping one weight per tensor must not cost the round its count.
    weights = {
        "a": torch.tensor([[1.0, 2, 3, 4, 5]]),
        "b": torch.tensor([[0.5, 0.5, 0.5, 6, 7, 8, 9]]),
    }
    masks = full_masks(weights)
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        alive = count_alive(masks)
        alive_weights = torch.cat([weights[n][masks[n]] for n in weights])
        if isinstance(pruner, SAPPruner):
            expected = pruner.count(alive_weights)
        else:
            expected = round(0.2 * alive)
        masks = pruner(weights, masks, generator)
        assert count_alive(masks) == alive - min(expected, alive - 2)
        assert all(m.any() for m in masks.values())
    assert count_alive(masks) == 2 or isinstance(pruner, SAPPruner)


def test_the_stall_example_from_the_report_removes_weights_every_round():
    weights = {
        "a": torch.tensor([[1.0, 2, 3, 4, 5]]),
        "b": torch.tensor([[0.5, 0.5, 0.5, 6, 7, 8, 9]]),
    }
    masks, left = full_masks(weights), []
    for _ in range(6):
        masks = MagnitudePruner(rate=0.2)(weights, masks, torch.Generator())
        left.append(count_alive(masks))
    assert left == [10, 8, 6, 5, 4, 3]  # today: 10, 8, 6, 5, 5, 5


def channel_case():
    """Two hidden layers with hand-set row norms (A: 1, 2, 3, 0.5; B: 0.5, 4) and a classifier."""
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.3, 0.4]])
    b = torch.tensor([[0.3, 0.4, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
    c = torch.ones(2, 2) * 0.01
    weights = {"a.weight": a, "b.weight": b, "c.weight": c}
    return weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}


def test_channel_scope_removes_whole_units_of_each_layer_by_norm_and_keeps_the_classifier():
    weights, masks = channel_case()
    new = MagnitudePruner(rate=0.5, scope="channel")(weights, masks, torch.Generator())
    # A: round(0.5 * 4) = 2 go, norms 0.5 and 1; B: round(0.5 * 2) = 1 goes, norm 0.5.
    assert new["a.weight"].all(dim=1).tolist() == [False, True, True, False]
    assert new["b.weight"].all(dim=1).tolist() == [False, True]
    assert torch.equal(new["c.weight"], masks["c.weight"])  # the classifier's tiny weights stay
    for name in ("a.weight", "b.weight"):  # every unit wholly alive or wholly dead
        assert torch.equal(new[name].all(dim=1), new[name].any(dim=1))
    again = MagnitudePruner(rate=0.5, scope="channel")(weights, new, torch.Generator())
    assert again["a.weight"].any(dim=1).tolist() == [False, False, True, False]


def test_channel_scope_never_empties_a_layer():
    weights, masks = channel_case()
    new = MagnitudePruner(rate=0.99, scope="channel")(weights, masks, torch.Generator())
    assert new["a.weight"].any(dim=1).tolist() == [False, False, True, False]
    assert new["b.weight"].any(dim=1).tolist() == [False, True]


def test_channel_scope_sap_counts_on_each_layers_vector_of_unit_norms():
    weights, masks = channel_case()
    pruner = SAPPruner(p=0.5, q=1.0, eta_r=0.5, scope="channel")
    new = pruner(weights, masks, torch.Generator())
    for name, norms in (("a.weight", [1.0, 2.0, 3.0, 0.5]), ("b.weight", [0.5, 4.0])):
        norms = torch.tensor(norms)
        expected = sap_prune_count(len(norms), pq_index(norms, 0.5, 1.0), 0.5, 1.0, eta_r=0.5)
        assert int((~new[name].any(dim=1)).sum()) == min(expected, len(norms) - 1)
    assert int((~new["a.weight"].any(dim=1)).sum()) >= 1
