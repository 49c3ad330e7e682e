"""Issue 22: models nobody here wrote, end to end: any loss, inputs and outputs as users have
them, sequence models."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import incop
import user_models
from incop.methods.at_init import snip_scores
from user_models import Encoder, as_bert_batch, tokens


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
    pruned = regressor()
    result = incop.prune(pruned, train, val, method="sap", loss_fn=F.l1_loss, metric="loss",
                         levels=1, warmup_epochs=2, max_epochs=1)  # fmt: skip
    # val_loss is the run's loss (L1) of the validation split, for the weights kept.
    with torch.no_grad():
        expected = F.l1_loss(pruned.eval()(val[0][0]), val[0][1])
    assert result.levels[-1].val_loss == pytest.approx(float(expected), rel=1e-5)
    assert result.levels[-1].val_loss != pytest.approx(
        float(F.mse_loss(pruned(val[0][0]), val[0][1])), rel=1e-3
    )
    model = regressor()
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


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("method", ["incop-if", "incop-gf"])
def test_a_transformer_encoder_prunes_and_measures_every_projection(batch_first, method):
    train, val = tokens()
    torch.manual_seed(0)
    model = Encoder(batch_first)
    result = incop.prune(model, train, val, method=method, levels=1, warmup_epochs=2,
                         max_epochs=2, probe_size=64, eps=1e-9)  # fmt: skip
    names = set(result.masks)
    for i in range(2):
        prefix = f"encoder.layers.{i}."
        assert {prefix + "self_attn.in_proj_weight", prefix + "self_attn.out_proj.weight",
                prefix + "linear1.weight", prefix + "linear2.weight"} <= names  # fmt: skip
    assert all(mask.sum() < mask.numel() for mask in result.masks.values())
    flow = incop.information_flow(model, val)
    widths = {"self_attn": 96, "self_attn.out_proj": 32, "linear1": 64, "linear2": 32}
    expected = [(f"encoder.layers.{i}.{k}", w) for i in range(2) for k, w in widths.items()]
    assert flow.layers == [name for name, _ in expected] + ["head"]
    sizes = [w for _, w in expected] + [3]
    assert [tuple(c.shape) for c in flow.matrices] == list(zip(sizes, sizes[1:], strict=False))
    report = incop.sparsity_report(model, result.masks, val[0][0][:1])
    attention = [layer for layer in report.layers if "self_attn" in layer.name]
    assert all(layer.macs_dense == layer.total * 12 for layer in attention)  # 12 tokens


def test_parallel_projections_are_one_layer_of_the_chain():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(8, 4) for _ in range(3))
            self.out = nn.Linear(12, 2)

        def forward(self, x):
            return self.out(torch.cat([self.query(x), self.key(x), self.value(x)], -1)).mean(1)

    x = torch.randn(16, 5, 8)
    flow = incop.information_flow(Attention(), [(x, torch.zeros(16))])
    assert flow.layers == ["query+key+value", "out"]
    assert tuple(flow.matrices[0].shape) == (12, 2)


def test_a_channel_dim_out_of_range_is_refused_before_training(tmp_path, capsys):
    train, val = tokens()
    out = tmp_path / "run"
    with pytest.raises(incop.UserError, match="if_channel_dim: 5 is out of range"):
        incop.prune(Encoder(), train, val, method="incop-if", levels=1, warmup_epochs=1,
                    max_epochs=1, if_channel_dim=5, out=str(out))  # fmt: skip
    assert not out.exists()


class TokenModel(nn.Module):
    """Takes keyword inputs and returns an object with .logits, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.classifier = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.fc(self.embed(input_ids)))
        pooled = (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)

        class Output:
            logits = self.classifier(pooled)

        return Output()


def test_dict_inputs_and_an_output_object(tmp_path):
    train, val = tokens()

    def as_dict(batch):
        x, y = batch
        return {"input_ids": x, "attention_mask": torch.ones_like(x)}, y

    for method, options in (("incop-gf", {"probe_size": 64}), ("incop-if", {"probe_size": 64}),
                            ("snip", {"target_remaining": 0.5})):  # fmt: skip
        torch.manual_seed(0)
        result = incop.prune(TokenModel(), train, val, method=method, batch_fn=as_dict,
                             levels=1, warmup_epochs=2, max_epochs=1, **options)  # fmt: skip
        assert result.levels[-1].val_accuracy is not None
        assert result.levels[-1].remaining_fraction < 1


def tiny_bert():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    return user_models.bert()


@pytest.mark.parametrize("method", ["incop-if", "incop-gf"])
def test_a_hugging_face_bert_runs_end_to_end(method):
    model = tiny_bert()
    train, val = tokens()
    result = incop.prune(model, train, val, method=method, batch_fn=as_bert_batch, levels=1,
                         warmup_epochs=2, max_epochs=2, probe_size=64)  # fmt: skip
    attention = [n for n in result.masks if ".attention.self." in n]
    assert len(attention) == 6  # query, key and value of both layers, all pruned
    assert all(result.masks[n].sum() < result.masks[n].numel() for n in attention)
    flow = incop.information_flow(model, [as_bert_batch(val[0])])
    first = "bert.encoder.layer.0.attention.self."
    assert flow.layers[0] == "+".join(first + p for p in ("query", "key", "value"))
    assert tuple(flow.matrices[0].shape) == (96, 32)  # q, k, v side by side; then 32 wide
    assert flow.layers[-2:] == ["bert.pooler.dense", "classifier"]


def test_a_sequence_output_with_the_default_loss_is_refused_before_training(tmp_path):
    class PerToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.fc = nn.Embedding(50, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.embed(x))  # (B, T, 3)

    x, y = torch.randint(0, 50, (64, 12)), torch.randint(0, 3, (64,))
    out = tmp_path / "run"
    with pytest.raises(incop.UserError, match="reads the classes along dim 1") as refused:
        incop.prune(PerToken(), [(x, y)], [(x, y)], method="sap", levels=1, warmup_epochs=1,
                    max_epochs=1, out=str(out))  # fmt: skip
    assert "shape (64, 12, 3)" in str(refused.value)
    assert not out.exists()
