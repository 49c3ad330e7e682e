"""Dynamic sparse training (RigL, SET): ERK densities by hand, the update's drop and grow, the
schedule, pruned weights kept at zero, resume, and the refusals."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import incop
from helpers import TinyNet, torchrun
from incop.config import resolve
from incop.engine.outputs import read_metrics
from incop.methods.pruners import RigLPruner, SETPruner
from incop.methods.pruners.dynamic import drop_fraction_at, erk_densities, layer_counts
from incop.methods.pruning import keep_count
from incop.tools.cli import main

MLP = {"fc1": (300, 64), "fc2": (100, 300), "fc3": (10, 100)}


def test_erk_densities_of_a_three_layer_net_by_hand():
    # density = scale * (n_in + n_out) / (n_in * n_out); scale from 0.1 of 50,200 weights:
    # sum over layers of density * size = scale * (364 + 400 + 110) = 5020.
    scale = 5020 / 874
    expected = {"fc1": scale * 364 / 19200, "fc2": scale * 400 / 30000, "fc3": scale * 110 / 1000}
    assert erk_densities(MLP, 0.1) == pytest.approx(expected)
    # At 0.5, fc3 would get 3.16: it is made dense and the other two share what is left.
    scale = (25100 - 1000) / 764
    expected = {"fc1": scale * 364 / 19200, "fc2": scale * 400 / 30000, "fc3": 1.0}
    assert erk_densities(MLP, 0.5) == pytest.approx(expected)


def test_erk_densities_of_a_conv_net_by_hand_and_the_count_is_the_target_exactly():
    shapes = {"conv": (16, 8, 3, 3), "fc": (10, 64)}
    # Conv: (16 + 8 + 3 + 3) / (16 * 8 * 3 * 3); the scale meets 0.2 of 1,792 weights.
    scale = 0.2 * 1792 / (30 + 74)
    assert erk_densities(shapes, 0.2) == pytest.approx(
        {"conv": scale * 30 / 1152, "fc": scale * 74 / 640}
    )
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    for target in (0.2, 0.05, 0.013):
        counts = layer_counts(sizes, erk_densities(shapes, target), keep_count(1792, target))
        assert sum(counts.values()) == keep_count(1792, target)


@pytest.mark.parametrize("init", ["erk", "uniform"])
def test_the_initial_mask_meets_the_target_exactly(init):
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in MLP.items()}
    new = RigLPruner(target=0.1, sparsity_init=init)({}, masks, torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in new.values()) == keep_count(50200, 0.1)
    if init == "uniform":
        for name, mask in new.items():
            assert abs(mask.float().mean() - 0.1) < 0.002, name


def test_dense_first_keeps_the_first_layer_dense():
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in MLP.items()}
    new = RigLPruner(target=0.5, dense_first=True)({}, masks, torch.Generator().manual_seed(0))
    assert bool(new["fc1"].all())
    assert sum(int(m.sum()) for m in new.values()) == keep_count(50200, 0.5)


def test_an_update_drops_the_smallest_and_grows_the_largest_gradients():
    weight = torch.tensor([0.5, -0.1, 0.3, 0.0, 0.0, 0.0, 0.2, 0.0])
    mask = torch.tensor([True, True, True, False, False, False, True, False])
    grad = torch.tensor([9.0, 9.0, 9.0, 0.5, -3.0, 3.0, 9.0, 1.0])
    new = RigLPruner().update(weight, grad, mask, 0.5, torch.Generator())
    # 2 of 4 alive go: |-0.1| and |0.2|; then among the dead (the dropped included) the two
    # largest |grad|: 9.0 at index 1 and 6 (ties by position: 1 before 6), not the dead ones'.
    assert int(new.sum()) == 4
    assert new.tolist() == [True, True, True, False, False, False, True, False]
    grad = torch.tensor([0.0, 0.1, 0.0, 0.5, -3.0, 3.0, 0.0, 1.0])
    new = RigLPruner().update(weight, grad, mask, 0.5, torch.Generator())
    # Ties by position: -3.0 (index 4) before 3.0 (index 5).
    assert new.tolist() == [True, False, True, False, True, True, False, False]


def test_set_grows_a_seeded_random_choice():
    weight = torch.randn(100, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(100, dtype=torch.bool)
    mask[:50] = True
    weight = weight * mask
    grad = torch.zeros(100)
    a = SETPruner().update(weight, grad, mask, 0.3, torch.Generator().manual_seed(7))
    b = SETPruner().update(weight, grad, mask, 0.3, torch.Generator().manual_seed(7))
    c = SETPruner().update(weight, grad, mask, 0.3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.sum()) == 50
    # The 35 alive weights of largest |w| stay; 15 others are drawn among the rest.
    kept = torch.sort(weight[:50].abs(), stable=True).indices[15:]
    assert bool(a[kept].all())


def test_the_drop_fraction_follows_the_cosine_and_stops_at_update_end():
    assert drop_fraction_at(0, 100, 0.3) == pytest.approx(0.3)
    assert drop_fraction_at(50, 100, 0.3) == pytest.approx(0.15)
    assert drop_fraction_at(25, 100, 0.3) == pytest.approx(0.3 * (1 + math.cos(math.pi / 4)) / 2)
    assert drop_fraction_at(100, 100, 0.3) == 0.0 and drop_fraction_at(150, 100, 0.3) == 0.0


class Checked(RigLPruner):
    """RigL that checks, at every training step, that every dead weight is exactly 0 and, at
    every update, that grown weights and their optimiser state are 0."""

    def after_backward(self, model, masks, state):
        for name, mask in masks.items():
            assert not model.get_parameter(name)[~mask].any(), name
        before = {n: m.clone() for n, m in masks.items()}
        super().after_backward(model, masks, state)
        for name, mask in masks.items():
            assert int(mask.sum()) == int(before[name].sum()), name  # alive counts kept
            grown = mask & ~before[name]
            weight = model.get_parameter(name)
            assert not weight[grown].any()
            for value in state.optimizer.state.get(weight, {}).values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    assert not value[grown].any() and not value[~mask].any()


@pytest.mark.parametrize(
    "optimiser",
    [{"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
     {"optimizer": "adam", "lr": 0.001}],
)  # fmt: skip
def test_pruned_weights_stay_zero_between_updates_and_updates_keep_counts(tiny_data, optimiser):
    train, val = tiny_data
    pruner = Checked(target=0.2, update_every=2, epochs=3)
    torch.manual_seed(0)
    result = incop.prune(TinyNet(), train, val, method="rigl", pruner=pruner, max_epochs=3,
                         **optimiser)  # fmt: skip
    assert pruner.updates == (math.floor(0.75 * 3 * len(train)) - 1) // 2
    assert result.levels[-1].remaining_fraction == pytest.approx(keep_count(416, 0.2) / 416)


def test_rigl_on_digits_from_the_cli_ends_at_the_target_and_counts_its_updates(tmp_path):
    flags = ["--method", "rigl", "--target-remaining", "0.1", "--max-epochs", "3"]
    # 21 steps an epoch: at the default update_every (100) the mask would never move.
    with pytest.warns(RuntimeWarning, match="the mask never moves"):
        assert main(["run", *flags, "--out", str(tmp_path / "default")]) == 0
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert summary["pruner"]["updates"] == 0
    out = tmp_path / "run"
    assert main(["run", *flags, "--update-every", "10", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    final = summary["levels"][-1]
    assert abs(final["remaining_fraction"] - 0.1) <= 1 / 50200
    assert summary["pruner"]["updates"] == (math.floor(0.75 * 63) - 1) // 10
    # The update steps' dense backward passes are in the cost.
    records = read_metrics(out / "metrics.jsonl")
    sparse = 6 * 5020 * summary["train_examples"]
    assert records[-1]["train_flops"] >= sparse
    assert sum(r["train_flops"] for r in records) > 3 * sparse


def test_a_killed_rigl_run_resumes_to_the_same_masks_and_metrics(tiny_data, tmp_path):
    train, val = tiny_data
    settings = {"method": "set", "max_epochs": 4, "update_every": 3, "target_remaining": 0.3}

    def run(out, **extra):
        torch.manual_seed(0)
        return incop.prune(TinyNet(), train, val, out=str(out), **settings, **extra)

    whole = run(tmp_path / "whole")

    class Interrupt(incop.Callback):
        def on_epoch_end(self, record, state):
            if record["level"] == 1 and record["epoch"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[Interrupt()])
    again = run(tmp_path / "cut", resume=True)
    for name, mask in whole.masks.items():
        assert torch.equal(mask, again.masks[name]), name

    def plain(folder):
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")}
                for r in read_metrics(folder / "metrics.jsonl")]  # fmt: skip

    assert plain(tmp_path / "cut") == plain(tmp_path / "whole")
    assert again.summary()["pruner"] == whole.summary()["pruner"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pruner": "rigl", "method": "sap", "levels": 1},
         "target_remaining: the rigl pruner needs it"),
        ({"method": "rigl", "target_remaining": 1.2}, "target_remaining: 1.2 is not allowed"),
        ({"method": "rigl", "drop_fraction": 1.0},
         r"drop_fraction: 1.0 is not allowed; must be in \(0, 1\)"),
        ({"method": "set", "update_every": 0}, "update_every: 0 is not allowed; must be in 1.."),
        ({"method": "rigl", "update_end": 0.0},
         r"update_end: 0.0 is not allowed; must be in \(0, 1\]"),
        ({"method": "sap", "drop_fraction": 0.2},
         "drop_fraction: 0.2 would be ignored: only pruner rigl, set"),
        ({"method": "rigl", "sparsity_init": "er"}, "sparsity_init: unknown value 'er'"),
    ],
)  # fmt: skip
def test_bad_dynamic_settings_are_refused(settings, message):
    with pytest.raises(incop.UserError, match=message):
        resolve(settings)


def test_a_refusal_from_the_cli_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--method", "rigl", "--drop-fraction", "2", "--out", str(out)]) == 2
    assert "drop_fraction: 2.0 is not allowed" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_two_ranks_make_the_same_mask_at_every_update(tmp_path):
    torchrun("ddp_rigl_script.py", tmp_path)
    a, b = torch.load(tmp_path / "updates-0.pt"), torch.load(tmp_path / "updates-1.pt")
    assert len(a) > 3 and len(a) == len(b)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_fake_state_is_enough_for_a_direct_update():
    # after_backward needs only the optimiser and the generator of the state.
    net = TinyNet()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()
             if n.endswith("weight")}  # fmt: skip
    pruner = RigLPruner(target=0.5, update_every=1, epochs=1, steps_per_epoch=10)
    masks.update(pruner(dict(net.named_parameters()), masks, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        for name, mask in masks.items():
            net.get_parameter(name).mul_(mask)
    net(torch.randn(4, 10)).sum().backward()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    state = SimpleNamespace(optimizer=optimizer, generator=torch.Generator().manual_seed(0))
    before = {n: int(m.sum()) for n, m in masks.items()}
    pruner.after_backward(net, masks, state)
    assert pruner.updates == 1 and {n: int(m.sum()) for n, m in masks.items()} == before


def test_counts_meet_the_target_when_the_floor_of_one_per_tensor_lifts_some():
    sizes = {"big": 1000, "a": 10, "b": 10, "c": 10}
    densities = {"big": 0.0034, "a": 0.02, "b": 0.02, "c": 0.02}  # shares 3.4 and 0.2 each
    # Floors 3, 0, 0, 0; the small ones lifted to 1 make 6, two more than 4: big gives them.
    assert layer_counts(sizes, densities, 4) == {"big": 1, "a": 1, "b": 1, "c": 1}
    assert layer_counts(sizes, densities, 5) == {"big": 2, "a": 1, "b": 1, "c": 1}
