import pytest
import torch
from torch import nn

from incop.core.masks import (
    MaskEnforcer,
    full_masks,
    prunable_modules,
    prunable_parameters,
    remaining_fraction,
    sparsity_report,
)
from incop.core.optimizers import make_optimizer
from incop.methods.pruners import MagnitudePruner


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_default_selection_is_conv_and_linear_weights_only():
    assert list(prunable_parameters(Net())) == ["conv.weight", "fc.weight"]


def test_include_and_exclude_by_name_pattern():
    assert list(prunable_parameters(Net(), exclude=["fc.*"])) == ["conv.weight"]
    assert list(prunable_modules(Net(), include=["c*"])) == ["conv.weight"]


@pytest.mark.parametrize("optimizer, nesterov", [("sgd", False), ("sgd", True), ("adam", False)])
def test_pruned_weights_stay_exactly_zero_through_many_steps(optimizer, nesterov):
    torch.manual_seed(0)
    model = Net()
    params = prunable_parameters(model)
    masks = full_masks(params)
    enforcer = MaskEnforcer(params, masks)
    opt = make_optimizer(
        model.parameters(), optimizer, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=5e-3
    )
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    # Train densely first so momentum / Adam moments are nonzero everywhere when the prune comes.
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks.update(MagnitudePruner(rate=0.5)({n: p.detach() for n, p in params.items()}, masks, None))
    enforcer.after_step(opt)  # the masks changed: weights and state are masked once
    for _ in range(200):  # then only gradients, as train_epoch does between its guards
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        enforcer.mask_gradients()
        for name, p in params.items():
            assert (p.grad[~masks[name]] == 0).all()
        opt.step()
        for name, p in params.items():
            assert (p[~masks[name]] == 0).all()
    for name, p in params.items():
        assert (p[~masks[name]] == 0).all()
        assert (p[masks[name]] != 0).any()
        for state in opt.state[p].values():
            if torch.is_tensor(state) and state.shape == p.shape:
                assert (state[~masks[name]] == 0).all()
    assert remaining_fraction(masks) == pytest.approx(0.5, abs=0.01)


def test_sparsity_report_counts_macs_from_nonzeros():
    model = Net()
    params = prunable_parameters(model)
    masks = full_masks(params)
    masks["conv.weight"][:2] = False  # half of the conv filters: 18 of 36 weights
    report = sparsity_report(model, masks, torch.randn(3, 1, 6, 6))
    conv, fc = report.layers
    # conv: 36 weights applied at 6*6 positions; fc: 144*3 weights applied once
    assert conv.macs_dense == 36 * 36 and conv.macs_pruned == 18 * 36
    assert fc.macs_dense == fc.macs_pruned == 432
    assert report.total == 36 + 432 and report.alive == 18 + 432
    assert report.compression == pytest.approx(468 / 450)
    assert report.macs_fraction == pytest.approx((18 * 36 + 432) / (36 * 36 + 432))
    assert "compression" in report.format()


def test_macs_count_every_call_of_a_module():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = torch.nn.Linear(10, 10)
            self.head = torch.nn.Linear(10, 2)

        def forward(self, x):
            return self.head(self.shared(torch.relu(self.shared(x))))

    model = Twice()
    masks = full_masks(prunable_parameters(model))
    report = sparsity_report(model, masks, torch.zeros(3, 10))
    assert report.macs_dense == 2 * 100 + 20  # counted once per call: 120 before
    masks["shared.weight"][:5] = False
    assert sparsity_report(model, masks, torch.zeros(3, 10)).macs_pruned == 2 * 50 + 20


def test_a_full_mask_costs_no_multiply_and_a_pruned_one_is_enforced():
    import torch
    from torch import nn

    from incop.core.masks import MaskEnforcer

    layer = nn.Linear(4, 3)
    params = {"weight": layer.weight}
    masks = {"weight": torch.ones(3, 4, dtype=torch.bool)}
    enforcer = MaskEnforcer(params, masks)
    layer(torch.randn(2, 4)).sum().backward()
    before = layer.weight.grad.clone()
    enforcer.mask_gradients()
    assert enforcer._float_mask("weight") is None and torch.equal(layer.weight.grad, before)
    masks["weight"] = torch.rand(3, 4) > 0.5  # a prune replaces the mask: enforced from now
    enforcer.mask_gradients()
    assert torch.equal(layer.weight.grad, before * masks["weight"])
