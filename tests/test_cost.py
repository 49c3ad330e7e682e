"""The cost of a ticket: training, evaluation and flow FLOPs counted as METHOD.md section 10
says, against MACs computed by hand."""

import pytest
import torch

import incop
from incop.engine.outputs import read_metrics
from incop.workload.models import build_model

#: Multiply-accumulates per example, by hand: in x out per Linear; for a conv, its
#: weight's size times its output positions.
MLP_MACS = 64 * 300 + 300 * 100 + 100 * 10
LENET5_MACS = (
    6 * 1 * 5 * 5 * 28 * 28  # conv 1, padded: 28x28 outputs
    + 16 * 6 * 5 * 5 * 10 * 10  # conv 2 on the pooled 14x14: 10x10 outputs
    + 400 * 120
    + 120 * 84
    + 84 * 10
)


def _data(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return incop.Batches(
        torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g), 32
    )


def _alive_macs(model, masks, example):
    return incop.sparsity_report(model, masks, example).macs_pruned


# Random labels: what is counted, not what is learnt.
pytestmark = pytest.mark.filterwarnings("ignore:every level's validation accuracy stayed")


@pytest.mark.parametrize(
    ("model", "shape", "macs"),
    [("mlp", (1, 8, 8), MLP_MACS), ("lenet5", (1, 28, 28), LENET5_MACS)],
)
def test_training_evaluation_and_flows_are_counted_from_the_alive_weights(
    model, shape, macs, tmp_path
):
    torch.manual_seed(0)
    net = build_model(model, shape[0], shape[1], 10)
    train, val = _data(shape, 96, 0), _data(shape, 40, 1)
    out = tmp_path / "run"
    # In absolute units, no noise floor to measure: the counts are the probe passes alone.
    result = incop.prune(net, train, val, method="incop-gf", levels=2, warmup_epochs=1,
                         max_epochs=2, probe_size=64, eps_mode="absolute", eps=0.2,
                         out=str(out))  # fmt: skip
    example = torch.zeros(1, *shape)
    dense = incop.sparsity_report(net, result.level_masks[0], example)
    assert dense.macs_dense == macs
    records = read_metrics(out / "metrics.jsonl")
    level_macs = [_alive_macs(net, masks, example) for masks in result.level_masks]
    for record in records:
        trained = record["epoch"] > 0
        assert record["train_flops"] == (6 * level_macs[record["level"]] * 96 if trained else 0)
    assert records[0]["train_flops"] == 6 * macs * 96  # the dense epoch
    summary = result.summary()
    cost = summary["cost"]
    assert cost["warmup"] == 6 * macs * 96
    assert cost["retrain"] == sum(r["train_flops"] for r in records if r["level"] > 0)
    assert cost["finetune"] == 0
    # Every record evaluated the validation split once, under its level's masks.
    assert cost["eval"] == sum(2 * level_macs[r["level"]] * 40 for r in records)
    # GF, a forward and a backward of the probe (64 examples): once on theta*, then at every
    # retraining record.
    flows = 6 * macs * 64 + sum(6 * level_macs[r["level"]] * 64 for r in records if r["level"])
    assert cost["flows"] == flows
    assert cost["search"] == cost["warmup"] + cost["retrain"] + cost["finetune"] + flows
    assert summary["dense_epoch"] == 6 * macs * 96 and summary["train_examples"] == 96
    for level in result.levels:
        mine = [r["train_flops"] for r in records if r["level"] == level.level]
        assert level.train_flops == sum(mine)


def test_information_flow_probes_cost_one_pass_and_the_finetune_is_its_own(tmp_path):
    torch.manual_seed(0)
    net = build_model("mlp", 1, 8, 10)
    train, val = _data((1, 8, 8), 64, 0), _data((1, 8, 8), 32, 1)
    result = incop.prune(net, train, val, method="incop-if", levels=1, warmup_epochs=1,
                         max_epochs=1, probe_size=32, finetune_epochs=2, eps_mode="absolute",
                         eps=0.02)  # fmt: skip
    cost = result.summary()["cost"]
    example = torch.zeros(1, 1, 8, 8)
    pruned = _alive_macs(net, result.masks, example)
    retrain_records = result.levels[1].epochs + 1
    assert cost["flows"] == 2 * MLP_MACS * 32 + retrain_records * 2 * pruned * 32
    assert cost["finetune"] == 2 * 6 * pruned * 64
    assert result.levels[1].train_flops == cost["retrain"]
