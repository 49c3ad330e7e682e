"""Issue 22: models nobody here wrote, end to end: any loss, inputs and outputs as users have
them, sequence models."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import incop
from incop.methods.at_init import snip_scores


def regression(n=512, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, 1, generator=g)) + 0.1 * torch.randn(n, 1, generator=g)
    train = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 384, 64)]
    return train, [(x[384:], y[384:])]


def regressor():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))


def test_gradient_flow_of_a_regression_model_uses_its_loss(tmp_path):
    train, val = regression()
    out = tmp_path / "run"
    result = incop.prune(regressor(), train, val, method="incop-gf-flow", loss_fn=F.mse_loss,
                         metric="loss", levels=2, warmup_epochs=3, max_epochs=5, eps=0.95,
                         probe_size=256, out=str(out))  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    distances = [r["distance"] for r in records if r["level"] > 0]
    assert all(d > 0 for d in distances) and len(set(distances)) == len(distances)
    assert {lv.stop_reason for lv in result.levels[1:]} == {"flow"}
    # The flow is the gradient of the mean squared error, not of a cross-entropy.
    model = regressor()
    gf = incop.gradient_flow(model, val, loss_fn=F.mse_loss)
    x, y = val[0]
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    expected = [model[0].weight.grad.norm(), model[2].weight.grad.norm()]
    assert torch.allclose(gf, torch.tensor(expected, dtype=torch.float64), rtol=1e-5)


def test_training_evaluation_snip_and_the_limit_use_the_run_loss():
    train, val = regression()
    result = incop.prune(regressor(), train, val, method="sap", loss_fn=F.l1_loss, metric="loss",
                         levels=1, warmup_epochs=2, max_epochs=1)  # fmt: skip
    model = regressor()
    # val_loss is the run's loss (L1) of the validation split, at the dense epoch kept.
    assert result.levels[0].val_loss > 0
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()
             if name.endswith("weight")}  # fmt: skip
    scores = snip_scores(model, masks, train[0], F.l1_loss)
    model.zero_grad()
    F.l1_loss(model(train[0][0]), train[0][1]).backward()
    assert torch.allclose(scores["0.weight"], (model[0].weight.grad * model[0].weight).abs())
    limit = incop.pruning_limit(regressor(), train, loss_fn=F.mse_loss, seed=0)
    assert 0 < limit.predicted_remaining_fraction <= 1
    # Cross-entropy over one output is 0 for every batch: the loss given is the one used.
    with pytest.raises(incop.UserError, match="every batch has the same loss"):
        incop.pruning_limit(regressor(), train, seed=0)
