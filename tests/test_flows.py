import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from incop.errors import UserError
from incop.methods.flows import Flow, flow_distance, gradient_flow, information_flow


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    )


def probe(sizes=(5, 9, 3), seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, 1, 8, 8, generator=gen), torch.randint(0, 3, (b,), generator=gen))
        for b in sizes
    ]


def recorded(model: nn.Module, batches, names: list[str]) -> dict[str, np.ndarray]:
    """Each layer's per-example, per-channel output over all batches, by our own hooks."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def record(_module, _inputs, out, name):
        seen[name].append(out.flatten(2).double().mean(2) if out.dim() > 2 else out)

    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: record(m, i, o, n)) for n in names
    ]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in handles:
        h.remove()
    return {n: torch.cat(seen[n]).double().numpy() for n in names}


def test_information_flow_matches_numpy_corrcoef():
    model, batches = small_net(), probe()
    flow = information_flow(model, batches)
    assert flow.layers == ["0", "2", "5", "7"]
    acts = recorded(model, batches, flow.layers)
    assert len(flow.matrices) == 3 and flow.vector.shape == (3,)
    for (a, b), matrix in zip(pairwise(flow.layers), flow.matrices, strict=True):
        x, y = acts[a], acts[b]
        expected = np.corrcoef(x, y, rowvar=False)[: x.shape[1], x.shape[1] :]
        assert matrix.dtype == torch.float64 and matrix.shape == (x.shape[1], y.shape[1])
        np.testing.assert_allclose(matrix.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(flow.vector.numpy(), [m.mean().item() for m in flow.matrices])


def test_information_flow_large_offset_is_accurate():
    """Activations far from zero: the one-pass sums must not cancel catastrophically."""
    model = small_net()
    with torch.no_grad():
        model[0].bias += 1e6
    batches = probe()
    flow = information_flow(model, batches)
    x, y = (recorded(model, batches, ["0", "2"])[n] for n in ("0", "2"))
    expected = np.corrcoef(x, y, rowvar=False)[:4, 4:]
    np.testing.assert_allclose(flow.matrices[0].numpy(), expected, atol=1e-6)


class Block(nn.Module):
    """Defines downsample before conv1/conv2 but runs it after them."""

    def __init__(self):
        super().__init__()
        self.downsample = nn.Conv2d(4, 6, 1, stride=2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.downsample(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)
        self.block = Block()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return self.fc(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def test_layers_follow_execution_order_and_skip_downsample():
    model = TinyResNet()
    assert list(dict(model.named_modules()))[1] == "fc"  # definition order differs
    flow = information_flow(model, probe())
    assert flow.layers == ["stem", "block.conv1", "block.conv2", "fc"]
    assert [m.shape for m in flow.matrices] == [(4, 6), (6, 6), (6, 3)]
    kept = information_flow(model, probe(), skip=())
    assert kept.layers == ["stem", "block.conv1", "block.conv2", "block.downsample", "fc"]
    chosen = information_flow(model, probe(), layers=["fc", "stem"])
    assert chosen.layers == ["stem", "fc"]
    with pytest.raises(UserError, match="stm"):
        information_flow(model, probe(), layers=["stm"])


def test_module_called_twice_counts_at_first_call():
    torch.manual_seed(0)
    first, shared = nn.Linear(4, 4), nn.Linear(4, 4)
    last = nn.Linear(4, 2)
    model = nn.ModuleDict({"last": last, "shared": shared, "first": first})
    model.forward = lambda x: last(shared(first(shared(x))))
    x = torch.randn(10, 4)
    flow = information_flow(model, [(x, torch.zeros(10))])
    assert flow.layers == ["shared", "first", "last"]
    with torch.no_grad():
        a, b = shared(x).double().numpy(), first(shared(x)).double().numpy()
    expected = np.corrcoef(a, b, rowvar=False)[:4, 4:]
    np.testing.assert_allclose(flow.matrices[0].numpy(), expected, atol=1e-6)


def test_dead_channel_gives_zero_row_and_column_not_nan():
    model = small_net()
    with torch.no_grad():
        model[2].weight[1] = 0
        model[2].bias[1] = 0.3
    flow = information_flow(model, probe())
    assert all(torch.isfinite(m).all() for m in flow.matrices)
    assert torch.isfinite(flow.vector).all()
    assert (flow.matrices[0][:, 1] == 0).all()  # layer "2" is the second of pair 0
    assert (flow.matrices[1][1, :] == 0).all()
    assert flow.matrices[1].abs().sum() > 0


def test_summary_abs_mean_and_bad_summary():
    model, batches = small_net(), probe()
    signed = information_flow(model, batches)
    absolute = information_flow(model, batches, summary="abs-mean")
    assert any((m < 0).any() for m in signed.matrices)
    np.testing.assert_allclose(
        absolute.vector.numpy(), [m.abs().mean().item() for m in signed.matrices]
    )
    assert not torch.allclose(signed.vector, absolute.vector)
    with pytest.raises(UserError, match=r"'median'.*mean, abs-mean"):
        information_flow(model, batches, summary="median")


class DropBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_information_flow_uses_eval_mode_restores_mode_and_removes_hooks():
    model, batches = DropBN(), probe()
    model.train()
    first = information_flow(model, batches)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    second = information_flow(model, batches)  # dropout and batch statistics would differ
    assert torch.equal(first.matrices[0], second.matrices[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flows_on_cuda_match_cpu():
    model, batches = DropBN(), probe()
    cpu_if, cpu_gf = information_flow(model, batches).vector, gradient_flow(model, batches)
    model.cuda()
    np.testing.assert_allclose(information_flow(model, batches).vector, cpu_if, atol=1e-5)
    np.testing.assert_allclose(gradient_flow(model, batches), cpu_gf, rtol=1e-4)


def reference_gf(model, batches, masks=None, normalize=False):
    """By hand: autograd.grad of the mean loss over the concatenated probe set, in eval mode."""
    model.eval()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    weights = [model.conv.weight, model.fc.weight]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
    out = []
    for name, g in zip(["conv.weight", "fc.weight"], grads, strict=True):
        m = masks[name] if masks else torch.ones_like(g, dtype=torch.bool)
        out.append((g * m).double().norm().item() / (max(int(m.sum()), 1) if normalize else 1))
    return out


def test_gradient_flow_matches_hand_computation_and_leaves_state():
    model, batches = DropBN(), probe()
    model.train()
    sentinel = torch.full_like(model.conv.weight, 7.0)
    model.conv.weight.grad = sentinel.clone()
    assert model.fc.weight.grad is None
    running = model.bn.running_mean.clone()

    gf = gradient_flow(model, batches)
    assert model.training
    assert torch.equal(model.conv.weight.grad, sentinel)
    assert model.fc.weight.grad is None
    assert torch.equal(model.bn.running_mean, running)
    assert gf.dtype == torch.float64 and gf.shape == (2,)
    np.testing.assert_allclose(gf.numpy(), reference_gf(model, batches), rtol=1e-5)

    torch.manual_seed(3)
    masks = {"conv.weight": torch.rand(4, 1, 3, 3) > 0.5, "fc.weight": torch.rand(3, 144) > 0.7}
    for normalize in (False, True):
        got = gradient_flow(model, batches, masks=masks, normalize=normalize)
        want = reference_gf(model, batches, masks, normalize)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    dead = {
        "conv.weight": torch.zeros(4, 1, 3, 3, dtype=torch.bool),
        "fc.weight": masks["fc.weight"],
    }
    assert gradient_flow(model, batches, masks=dead, normalize=True)[0] == 0


def test_gradient_flow_custom_loss_params_and_frozen_weights():
    model, batches = DropBN(), probe()
    model.fc.weight.requires_grad_(False)
    default = gradient_flow(model, batches)
    assert not model.fc.weight.requires_grad
    mean_loss = gradient_flow(model, batches, loss_fn=F.cross_entropy)
    np.testing.assert_allclose(mean_loss.numpy(), default.numpy(), rtol=1e-6)
    only_fc = gradient_flow(model, batches, params={"fc.weight": model.fc.weight})
    assert only_fc.shape == (1,) and only_fc[0] == pytest.approx(default[1].item(), rel=1e-6)
    with pytest.raises(UserError, match="fc.weight"):
        gradient_flow(
            model, batches, masks={"conv.weight": torch.ones(4, 1, 3, 3, dtype=torch.bool)}
        )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("l2", 5.0),  # diff (0, 4, -3)
        ("relative", 5.0 / math.sqrt(10.0)),
        ("cosine", 1.0 - 1.0 / (math.sqrt(17.0) * math.sqrt(10.0))),
    ],
)
def test_flow_distance_hand_values(kind, expected):
    current, reference = torch.tensor([1.0, 4.0, 0.0]), torch.tensor([1.0, 0.0, 3.0])
    assert flow_distance(current, reference, kind) == pytest.approx(expected, abs=1e-12)


def test_flow_distance_edge_cases():
    zero, v = torch.zeros(2), torch.tensor([3.0, 4.0])
    assert flow_distance(v, zero, "relative") == 5.0
    assert flow_distance(zero, zero, "cosine") == 0.0
    assert flow_distance(zero, v, "cosine") == 1.0
    assert flow_distance(-v, v, "cosine") == pytest.approx(2.0)
    as_flow = Flow(matrices=[], vector=v.double(), layers=[])
    assert flow_distance(as_flow, zero, "l2") == 5.0
    with pytest.raises(ValueError, match="shapes differ"):
        flow_distance(v, torch.zeros(3))
    with pytest.raises(UserError, match=r"'l1'.*l2, relative, cosine"):
        flow_distance(v, v, "l1")


def two_shards(measure):
    """``measure(batches, reduce)`` as rank 0 of two ranks holding the two halves of the probe:
    rank 1's contributions are taken first, then added where rank 0 reduces."""
    batches = probe()
    halves = [[(x[: len(x) // 2], y[: len(y) // 2]) for x, y in batches],
              [(x[len(x) // 2 :], y[len(y) // 2 :]) for x, y in batches]]  # fmt: skip
    other: list[torch.Tensor] = []
    measure(halves[1], lambda t: other.append(t.double().cpu()) or t.double().cpu())
    return measure(halves[0], lambda t: t.double().cpu() + other.pop(0))


def test_sharded_flows_summed_over_ranks_equal_the_whole_probe():
    model = small_net()
    first = probe()[0][0][:1]
    whole_if = information_flow(model, probe())
    shard_if = two_shards(lambda b, r: information_flow(model, b, origin=first, reduce=r))
    # float32 layers round each half batch their own way: 4e-9 apart (one half alone: 0.12).
    assert torch.allclose(shard_if.vector, whole_if.vector, rtol=0, atol=1e-7)
    whole_gf = gradient_flow(model, probe())
    shard_gf = two_shards(lambda b, r: gradient_flow(model, b, reduce=r))
    assert torch.allclose(shard_gf, whole_gf, rtol=1e-6, atol=0)
