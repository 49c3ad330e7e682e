"""TAS (issue 27): TAS.md's tests T1-T10, the method end to end, its export and its refusals."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import incop
from incop.core.distill import kd_loss
from incop.errors import UserError
from incop.methods import tas
from incop.methods.tas import (
    Supernet,
    cost_loss,
    cwi,
    depth_choices,
    expected_width,
    gumbel_pair,
    keep_probabilities,
    prefix_mask,
    search_space,
    width_choices,
)
from incop.tools.cli import main
from incop.tools.ticket.compact import compact
from incop.workload.data import load_dataset
from incop.workload.models import build_model, model_init

pytest.importorskip("torch_pruning")


def layers_of(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


# --- T1: channel-wise interpolation -----------------------------------------------------------


def test_t1_cwi_hand_values_and_adaptive_pooling():
    x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    assert cwi(x, 4).flatten().tolist() == [1, 1, 2, 2]
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    assert cwi(x, 4).flatten().tolist() == [1, 1.5, 2.5, 3]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, 7, 7, generator=g)
    for width in range(48, 210):
        expected = F.adaptive_avg_pool3d(x, (width, 7, 7))
        assert torch.equal(cwi(x, width), expected), width  # every entry, exactly


# --- T2: the Gumbel pair and its weights ------------------------------------------------------

ALPHA = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
NOISE = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64)
PAIR = torch.tensor([1, 3])


def test_t2_pair_weights_with_injected_noise():
    _, w, p_hat = gumbel_pair(ALPHA, 1.0, noise=NOISE, pair=PAIR)
    assert p_hat.tolist() == pytest.approx([0.137380, 0.136442, 0.276267, 0.449911], abs=1e-6)
    assert w.tolist() == pytest.approx([0.232697, 0.767303], abs=1e-6)
    ratio = (0.2 / 0.4) * math.exp(-0.2 - 0.3)
    assert ratio == pytest.approx(0.303265, abs=1e-6)
    assert float(w[0] / w[1]) == pytest.approx(ratio, abs=1e-6)
    _, w_half, _ = gumbel_pair(ALPHA, 0.5, noise=NOISE, pair=PAIR)
    assert w_half.tolist() == pytest.approx([0.084224, 0.915776], abs=1e-6)
    assert float(w_half[0] / w_half[1]) == pytest.approx(ratio**2, abs=1e-6)
    # C(4) = (1, 2, 3, 4): the pair is the candidates 2 and 4. Layer output O = (1, 2, 3, 4).
    choices = torch.tensor(width_choices(4))
    assert choices.tolist() == [1, 2, 3, 4]
    out = torch.tensor([1.0, 2, 3, 4], dtype=torch.float64)
    mask = prefix_mask(choices[PAIR], w, 4)
    assert mask.tolist() == pytest.approx([1, 1, 0.767303, 0.767303], abs=1e-6)
    # TAS.md's aggregates were computed from w rounded to 6 digits: 3 x 0.767303 = 2.301909.
    assert (mask * out).tolist() == pytest.approx([1, 2, 2.301909, 3.069212], abs=3e-6)
    assert (mask * out).tolist() == pytest.approx([1, 2, 3 * float(w[1]), 4 * float(w[1])])
    tas_cwi = w[0] * cwi(out[:2].view(1, 2), 4).flatten() + w[1] * out
    assert tas_cwi.tolist() == pytest.approx([1, 1.767303, 2.767303, 3.534606], abs=1e-6)


def test_without_temperature_the_logits_are_alpha():
    _, w, p_hat = gumbel_pair(ALPHA, 0.0, pair=PAIR)
    assert p_hat.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert w.tolist() == pytest.approx([0.2 / 0.6, 0.4 / 0.6])


# --- T3: the soft prefix mask is zero-padded TAS ----------------------------------------------


def test_t3_mask_equals_the_zero_padded_aggregate():
    g = torch.Generator().manual_seed(1)
    n = 8
    out = torch.randn(4, n, 6, 6, generator=g, dtype=torch.float64)
    other = torch.randn(4, n, 6, 6, generator=g, dtype=torch.float64)
    widths = torch.tensor([3, 6])
    w = torch.softmax(torch.randn(2, generator=g, dtype=torch.float64), 0)

    def pad(x, c):
        return F.pad(x[:, :c], (0, 0, 0, 0, 0, n - c))

    padded = sum(w[i] * pad(out, int(widths[i])) for i in range(2))
    padded_other = sum(w[i] * pad(other, int(widths[i])) for i in range(2))
    mask = prefix_mask(widths, w, n).view(1, n, 1, 1)
    assert torch.allclose(padded, mask * out, atol=1e-12, rtol=0)
    # Channel-wise, positively homogeneous ops keep it, and a residual sum of masked streams.
    assert torch.allclose(torch.relu(padded), torch.relu(mask * out), atol=1e-12, rtol=0)
    assert torch.allclose(F.max_pool2d(padded, 2), F.max_pool2d(mask * out, 2), atol=1e-12, rtol=0)
    assert torch.allclose(padded + padded_other, mask * (out + other), atol=1e-12, rtol=0)


# --- T4 / T5: the expected cost, its gradient, the cost loss -----------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))


def toy_supernet(p_a=(0.1, 0.2, 0.3, 0.4), p_b=(0.4, 0.3, 0.2, 0.1)):
    model = Toy()
    space = search_space(model, torch.zeros(2, 1, 8, 8), ["a", "b", "fc"])
    net = Supernet(model, space, torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.alphas[0].copy_(torch.log(torch.tensor(p_a)))
        net.alphas[1].copy_(torch.log(torch.tensor(p_b)))
    return net


def test_t4_expected_cost_on_a_toy_net():
    net = toy_supernet()
    assert [g.name for g in net.space.groups] == ["a", "b"]
    assert net.space.dense_macs == 11560
    choices = torch.tensor([1.0, 2, 3, 4], dtype=torch.float64)
    with torch.no_grad():
        assert float(expected_width(net.alphas[0].double(), choices)) == pytest.approx(3.0)
        assert float(expected_width(net.alphas[1].double(), choices)) == pytest.approx(2.0)
        assert float(net.expected()) == pytest.approx(5204, abs=1e-3)
    assert net.widths() == {"a": 4, "b": 1}
    assert net.argmax_macs() == 4618
    alpha = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)).requires_grad_()
    expected_width(alpha, choices).backward()
    assert alpha.grad.tolist() == pytest.approx([-0.2, -0.2, 0.0, 0.4], abs=1e-12)


def test_t5_cost_loss_branches():
    dense, target, t = 11560, 0.5 * 11560, 0.05
    for argmax, sign in ((4618, +1), (9000, -1)):  # below the band: up; above: down
        net = toy_supernet()
        before = float(net.expected())
        loss = cost_loss(net.expected(), argmax, target, t, dense)
        loss.backward()
        torch.optim.SGD(net.parameters, lr=0.5).step()
        assert (float(net.expected()) - before) * sign > 0
    net = toy_supernet()
    loss = cost_loss(net.expected(), 5500, target, t, dense)  # inside [R - t F_max, R]
    assert float(loss) == 0
    loss.backward()
    assert all(a.grad is None or not a.grad.any() for a in net.parameters)


# --- T6: depth --------------------------------------------------------------------------------


def test_t6_depth_choices_and_keep_probabilities():
    assert depth_choices(2) == (1, 2)
    assert depth_choices(3) == (1, 2, 3)
    assert depth_choices(5) == (1, 3, 5)
    assert depth_choices(9) == (1, 3, 5, 7, 9)
    assert depth_choices(18) == (*range(1, 18, 2), 18)
    beta = torch.log(torch.tensor([0.2, 0.3, 0.5]))  # depths (1, 3, 5) of 5 blocks
    kappa = keep_probabilities(beta, (1, 3, 5), 5)
    assert kappa.tolist() == pytest.approx([1.0, 0.8, 0.8, 0.5, 0.5])


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_t6_one_hot_depth_is_the_net_without_the_later_blocks(depth):
    torch.manual_seed(0)
    model = build_model("resnet20", 1, 8, 10).eval()
    x = torch.randn(4, 1, 8, 8)
    space = search_space(model, x, layers_of(model))
    assert [s.name for s in space.stages] == ["layer1", "layer2", "layer3"]
    net = Supernet(copy.deepcopy(model), space, torch.Generator().manual_seed(0))
    full = {g.name: g.size for g in space.groups}
    net.hard(full, {"layer1": 3, "layer2": depth, "layer3": 3})
    with torch.no_grad():
        got = net.model(x)
        cut = copy.deepcopy(model)
        cut.layer2 = nn.Sequential(*list(cut.layer2)[:depth])
        want = cut(x)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


# --- T7: the sampler ----------------------------------------------------------------------------


def test_t7_pair_frequencies_match_two_draws_without_replacement():
    alpha = torch.tensor([0.3, -0.5, 1.0, 0.1, -1.2], requires_grad=True)
    noise = torch.tensor([0.2, 0.1, -0.4, 0.6, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(20_000):
        pair, w, p_hat = gumbel_pair(alpha, 1.0, noise=noise, generator=g)
        counts[pair] += 1
        assert not pair.requires_grad and w.requires_grad
    p = p_hat.detach()
    exact = [float(p[j] + sum(p[k] * p[j] / (1 - p[k]) for k in range(5) if k != j))
             for j in range(5)]  # fmt: skip
    assert (counts / 20_000).tolist() == pytest.approx(exact, abs=0.01)


# --- T8: derive and compact agree with the supernet ---------------------------------------------


def randomised_supernet(name, seed):
    torch.manual_seed(seed)
    model = build_model(name, 1, 8, 10)
    x = torch.randn(8, 1, 8, 8)
    space = search_space(model, x, layers_of(model))
    net = Supernet(model, space, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for logits in net.parameters:
            logits.normal_(0, 2)
        net.sample(1.0)
        for _ in range(3):  # running statistics that are not the defaults
            model(torch.randn(8, 1, 8, 8))
    return net, x


@pytest.mark.parametrize(
    "name, seed",
    [("lenet5", 0), ("lenet5", 1), ("resnet20", 0), ("resnet20", 1), ("vgg11", 0), ("resnet18", 0)],
)
def test_t8_compacted_macs_and_outputs_equal_the_argmax_supernet(name, seed):
    net, x = randomised_supernet(name, seed)
    widths, depths = net.widths(), net.depths()
    masks = tas.hard_masks(net.model, net.space, widths, depths)
    removed = tas.removed_blocks(net.space, depths)
    argmax = net.argmax_macs()
    assert tas.macs_of(net.space, masks) == argmax  # the formula and the masks agree
    net.remove()
    ticket = tas.apply_architecture(copy.deepcopy(net.model), masks, removed)
    small = compact(ticket.eval(), x).model
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in small.named_parameters()
            if n.endswith("weight") and p.dim() > 1}  # fmt: skip
    assert incop.sparsity_report(small, full, x).macs_dense == argmax  # integer equality
    hard = Supernet(net.model, net.space, torch.Generator())
    hard.hard(widths, depths)
    with torch.no_grad():
        want = net.model.eval()(x)
        got = small(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max().clamp_min(1)
    # The student, re-initialised, has the derived shapes.
    student = copy.deepcopy(ticket)
    tas.scratch_init(student, masks, model_init(name))
    tas.apply_architecture(student, masks, removed)
    shapes = {n: p.shape for n, p in compact(student.eval(), x).model.named_parameters()}
    assert shapes == {n: p.shape for n, p in small.named_parameters()}


def test_scratch_init_draws_at_the_smaller_fans():
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    mask = torch.zeros(300, 400, dtype=torch.bool)
    mask[:30, :40] = True
    holder = nn.Sequential(layer)
    tas.scratch_init(holder, {"0.weight": mask}, tas.default_init)
    alive = layer.weight[:30, :40]
    assert float(alive.abs().max()) <= 1 / math.sqrt(40) and float(alive.abs().max()) > 0.1
    assert not layer.weight[30:].any() and not layer.weight[:, 40:].any()


# --- T9: convergence ------------------------------------------------------------------------


def digits_batches(n=1400, batch=64):
    data = load_dataset("digits")
    x, y = data.train_x[:n], data.train_y[:n]
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]


@pytest.mark.slow
def test_t9_lenet5_search_settles_in_the_band():
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 8, 10)
    result = tas.tas_search(model, digits_batches(), flop_ratio=0.5, epochs=15, seed=0)
    assert 0.45 <= result.macs_fraction <= 0.50
    steps = result.step_macs_fraction
    last = steps[int(0.8 * len(steps)) :]
    assert sum(0.45 <= f <= 0.50 for f in last) >= 0.8 * len(last)
    assert len(result.history) == 15
    assert result.history[0]["tau"] == 5.0 and result.history[-1]["tau"] < 0.2


def test_t9_companion_cost_loss_alone_enters_the_band():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 30),
                          nn.ReLU(), nn.Linear(30, 10))  # fmt: skip
    batches = digits_batches(n=512, batch=8)  # 32 architecture steps an epoch
    result = tas.tas_search(model, batches, flop_ratio=0.5, epochs=7, arch_lr=0.05, seed=0,
                            loss_fn=lambda out, y: out.sum() * 0)  # fmt: skip
    steps = result.step_macs_fraction[:200]
    assert any(0.45 <= f <= 0.50 for f in steps)


# --- T10: the distillation loss -------------------------------------------------------------


def test_t10_kd_loss_hand_value():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.5, 0.5, 0.0]])
    y = torch.tensor([0])
    assert float(F.cross_entropy(z, y)) == pytest.approx(0.4076060, abs=1e-6)
    loss = kd_loss(z, teacher, y, alpha=0.9, temperature=4.0)
    assert float(loss) == pytest.approx(0.2167352, abs=1e-6)
    assert float(kd_loss(z, teacher, y, alpha=0.0, temperature=4.0)) == float(F.cross_entropy(z, y))


# --- the method, end to end -------------------------------------------------------------------


def test_search_space_of_resnet20_has_twelve_groups_and_three_stages():
    model = build_model("resnet20", 3, 32, 10)
    space = search_space(model, torch.zeros(2, 3, 32, 32), layers_of(model))
    assert len(space.groups) == 12 and len(space.stages) == 3
    assert space.dense_macs == 40_813_184  # TAS.md A7, CIFAR 32x32x3
    stream = space.groups[0]
    assert stream.name == "conv1" and stream.size == 16
    assert stream.sites == ("bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2")


def test_a_model_with_nothing_to_search_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(UserError, match="no channel group to search"):
        search_space(model, torch.zeros(2, 1, 8, 8), ["1"])


@pytest.mark.slow
def test_tas_on_digits_mlp_reaches_its_band_and_exports(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "tas", "--dataset", "digits", "--model", "mlp",
                 "--flop-ratio", "0.5", "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    student = summary["levels"][1]
    assert 0.45 <= student["macs_fraction"] <= 0.50
    found = summary["pruner"]
    assert found["macs_fraction"] == pytest.approx(student["macs_fraction"])
    assert set(found["widths"]) == {"fc1", "fc2"} and len(found["history"]) == 30
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    search = [r for r in records if r.get("phase") == "search"]
    assert len(search) == 30
    assert {"tau", "expected_macs_fraction", "argmax_macs_fraction"} <= set(search[0])
    assert summary["cost"]["retrain"] >= found["search_flops"] > 0
    assert main(["export", str(out), "--format", "compact", "--out", str(tmp_path / "t.pt2")]) == 0
    ticket = incop.load_ticket(tmp_path / "t.pt2")
    shapes = {n: tuple(p.shape) for n, p in ticket.model.named_parameters()}
    assert shapes["fc1.weight"] == (found["widths"]["fc1"], 64)
    assert shapes["fc2.weight"] == (found["widths"]["fc2"], found["widths"]["fc1"])


def test_tas_resnet_removes_blocks_and_keeps_them_zero(tmp_path):
    torch.manual_seed(0)
    data = load_dataset("digits")
    x, y = data.train_x[:256], data.train_y[:256]
    train = incop.Batches(x, y, 64)
    val = incop.Batches(data.train_x[256:384], data.train_y[256:384], 128)
    model = build_model("resnet20", 1, 8, 10)
    result = incop.prune(model, train, val, method="tas", flop_ratio=0.3, tas_epochs=2,
                         warmup_epochs=1, max_epochs=2, tas_search_depth=True)  # fmt: skip
    found = result.pruner
    assert set(found["depths"]) == {"layer1", "layer2", "layer3"}
    for block in found["removed"]:
        assert not any(p.any() for p in model.get_submodule(block).parameters())
    macs = incop.sparsity_report(model, result.masks, x[:2]).macs_fraction
    assert macs == pytest.approx(found["macs_fraction"])
    assert result.levels[1].macs_fraction == pytest.approx(found["macs_fraction"])


def test_tas_on_a_users_model(tmp_path):
    from user_models import ResNet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 8, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    train, val = incop.Batches(x[:64], y[:64], 16), incop.Batches(x[64:], y[64:], 32)
    model = ResNet()
    result = incop.prune(model, train, val, method="tas", flop_ratio=0.5, tas_epochs=2,
                         warmup_epochs=1, max_epochs=1)  # fmt: skip
    assert set(result.pruner["widths"]) == {"stem", "blocks.0.conv1", "blocks.1.conv1"}
    assert result.levels[1].macs_fraction == pytest.approx(result.pruner["macs_fraction"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--flop-ratio", "0"], "flop_ratio: 0.0 is not allowed; must be in (0, 1]"),
        (["--flop-ratio", "1.5"], "flop_ratio: 1.5 is not allowed; must be in (0, 1]"),
        (["--flop-ratio", "nan"], "flop_ratio: nan is not allowed"),
        (["--flop-ratio", "inf"], "flop_ratio: inf is not allowed"),
        (["--levels", "5"], "levels: 5 is not allowed with the tas pruner (tas searches once)"),
        (["--stop", "accuracy"], "stop: 'accuracy' is not allowed with the tas pruner"),
        (["--target-remaining", "0.2"], "target_remaining: 0.2 is not allowed with the tas"),
        (["--scope", "channel"], "scope: unknown value 'channel'"),
        (["--warmup-epochs", "0"], "distill: 'all' distils from theta*"),
        (["--model", "user_models:linear_only"], "no channel group to search"),
    ],
)
def test_tas_refusals_before_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code = main(["run", "--method", "tas", "--dataset", "digits", "--model", "mlp",
                 "--out", str(out), *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not out.exists()


def test_distill_in_the_finetune_of_another_method(tmp_path):
    data = load_dataset("digits")
    train = incop.Batches(data.train_x[:256], data.train_y[:256], 64)
    val = incop.Batches(data.train_x[256:384], data.train_y[256:384], 128)
    runs = {}
    for distill in ("off", "finetune"):
        torch.manual_seed(0)
        model = build_model("mlp", 1, 8, 10)
        settings = dict(levels=1, warmup_epochs=2, max_epochs=1, finetune_epochs=2, seed=0)
        runs[distill] = incop.prune(model, train, val, method="lth", distill=distill, **settings)
    off, on = runs["off"], runs["finetune"]
    assert off.levels[1].val_accuracy == on.levels[1].val_accuracy  # the same until the fine-tune
    # The teacher's forward pass is counted: one dense forward per fine-tune example.
    assert on.cost["finetune"] > off.cost["finetune"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"distill_alpha": 0.5}, "distill_alpha: 0.5 would be ignored: distill is 'off'"),
        ({"distill": "finetune", "finetune_epochs": 0}, "distill: 'finetune' would be ignored"),
        ({"distill": "all", "distill_alpha": 1.5}, "distill_alpha: 1.5 is not allowed"),
        ({"distill": "all", "distill_temperature": 0.0}, "distill_temperature: 0.0 is not"),
        ({"distill": "all", "warmup_epochs": 0}, "distill: 'all' distils from theta*"),
    ],
)
def test_distill_refusals(settings, message):
    train = [(torch.randn(16, 10), torch.randint(0, 3, (16,)))]
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")):
        incop.prune(model, train, train, method="lth", **settings)


def test_tas_refuses_a_data_parallel_run():
    from incop.core.world import World
    from incop.methods.at_init import PruneContext
    from incop.methods.pruners.tas import TASPruner

    model = build_model("mlp", 1, 8, 10)
    context = PruneContext(model, [], F.cross_entropy, 0, torch.device("cpu"),
                           torch.zeros(2, 1, 8, 8), World(rank=0, size=2))  # fmt: skip
    with pytest.raises(UserError, match="data-parallel run is not supported"):
        TASPruner().bind(context)
    assert TASPruner().bind(replace_world(context)).context is not None


def replace_world(context):
    import dataclasses

    from incop.core.world import World

    return dataclasses.replace(context, world=World())


@pytest.mark.slow
def test_a_tas_ticket_exports_in_every_format_with_its_outputs(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--method", "tas", "--dataset", "digits", "--model", "resnet20",
                 "--flop-ratio", "0.4", "--tas-epochs", "3", "--max-epochs", "1",
                 "--warmup-epochs", "1", "--out", str(out)]) == 0  # fmt: skip
    removed = json.loads((out / "summary.json").read_text())["pruner"]["removed"]
    run = incop.load_ticket(out)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        want = run.model.eval()(x)
    for name in ("state_dict", "torch-prune", "sparse", "compact"):
        path = tmp_path / f"ticket-{name}"
        assert main(["export", str(out), "--format", name, "--out", str(path)]) == 0
        model = None if name in ("sparse", "compact") else build_model("resnet20", 1, 8, 10)
        loaded = incop.load_ticket(path, model).model.eval()
        with torch.no_grad():
            got = loaded(x)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), name
        if name == "compact":
            names = {n.rsplit(".", 2)[0] for n, _ in loaded.named_parameters()}
            assert not any(n.startswith(block) for n in names for block in removed)


def test_incop_tas_search_returns_the_compacted_network():
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 8, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = incop.tas_search(model, digits_batches(n=256), flop_ratio=0.5, epochs=2, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert set(found.widths) == {"features.0", "features.3", "classifier.fc1", "classifier.fc2"}
    assert len(found.history) == 2 and found.derived in ("last", "last-in-band")
    x = torch.zeros(2, 1, 8, 8)
    small = found.compact_model
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in small.named_parameters()
            if n.endswith("weight") and p.dim() > 1}  # fmt: skip
    dense = incop.sparsity_report(model, {n: torch.ones_like(p, dtype=torch.bool)
                                          for n, p in model.named_parameters()
                                          if n.endswith("weight") and p.dim() > 1}, x)  # fmt: skip
    macs = incop.sparsity_report(small, full, x).macs_dense
    assert macs == round(found.macs_fraction * dense.macs_dense)
    assert small.classifier.fc1.out_features == found.widths["classifier.fc1"]


def test_gumbel_noise_is_drawn_again_where_infinite(monkeypatch):
    draws = iter([torch.tensor([0.5, 0.0, 1.0]), torch.tensor([0.5, 0.2, 1.0])])
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self, generator=None: next(draws))
    noise = tas.sampling.gumbel_noise(torch.zeros(3))
    assert torch.isfinite(noise).all()
    assert noise.tolist() == pytest.approx([-math.log(0.5), -math.log(0.2), 0.0])


def test_a_diverging_search_is_refused_with_its_epoch():
    torch.manual_seed(0)
    model = build_model("mlp", 1, 8, 10)
    with pytest.raises(UserError, match="tas: the search diverged: the weights' loss became nan"):
        tas.tas_search(model, digits_batches(n=128), flop_ratio=0.5, epochs=1,
                       loss_fn=lambda out, y: out.sum() * float("nan"))  # fmt: skip


@pytest.mark.parametrize("training", [True, False])
def test_the_search_space_keeps_the_models_mode(training):
    model = build_model("resnet20", 1, 8, 10).train(training)
    search_space(model, torch.zeros(2, 1, 8, 8), layers_of(model))
    assert model.training is training


def test_a_resnet_supernet_learns_like_its_network():
    """The supernet trains in train mode (BatchNorm on batch statistics): at full width its
    loss falls as the plain network's does."""
    torch.manual_seed(0)
    x, y = digits_batches(n=256, batch=256)[0]
    losses = {}
    for kind in ("plain", "supernet"):
        torch.manual_seed(0)
        model = build_model("resnet20", 1, 8, 10)
        if kind == "supernet":
            space = search_space(model, x[:2], layers_of(model))
            net = Supernet(model, space, torch.Generator())
            net.hard({g.name: g.size for g in space.groups}, {s.name: 3 for s in space.stages})
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(5):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[kind] = float(loss.detach())
    assert losses["supernet"] == pytest.approx(losses["plain"], rel=1e-4)


def test_the_search_reads_held_pixels_as_the_batches_yield_them():
    from incop.methods.tas.search import _all_examples

    data = load_dataset("digits")
    batches = incop.Batches(data.train_pixels[:100], data.train_y[:100], 32,
                            normalize=data.normalize)  # fmt: skip
    x, y = _all_examples(batches)
    assert x.dtype == torch.float32 and torch.equal(x, torch.cat([b for b, _ in batches]))
    assert torch.equal(y, data.train_y[:100])
