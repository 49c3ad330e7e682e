"""The pruning limit is implemented right: LIMIT.md B7's tests L1-L10; incop limit, lomp and
target_remaining: limit."""

import json
import math
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from incop.errors import UserError
from incop.methods.limit import (
    HessianOperator,
    actual_threshold,
    batch_loss_std,
    crossing,
    lanczos,
    magnitude_curve,
    official_width,
    pruning_limit,
    ritz,
    width,
)
from incop.tools.cli import main


class Quadratic(nn.Module):
    """One 10x10 parameter at its minimum w*; the loss 1/2 (W - w*)^T diag(h) (W - w*)."""

    def __init__(self, magnitudes, h, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (100,), generator=g).double() * 2 - 1
        self.target = torch.as_tensor(magnitudes, dtype=torch.float64) * signs
        self.h = torch.as_tensor(h, dtype=torch.float64)
        self.W = nn.Parameter(self.target.clone().view(10, 10))

    def forward(self, x):
        return self.W

    def loss(self, out, y):
        d = out.reshape(-1) - self.target
        return 0.5 * (self.h * d * d).sum()


ONE_BATCH = [(torch.zeros(1, 1), torch.zeros(1))]


def limit_of(model, eps, **options):
    return pruning_limit(model, ONE_BATCH, loss_fn=model.loss, params={"W": model.W}, eps=eps,
                         **options)  # fmt: skip


def test_l1_closed_form_quadratic_lambda_identity():
    model = Quadratic(torch.full((100,), 0.1), torch.ones(100))
    limit = limit_of(model, 0.25)
    # kappa = lambda D a^2 / (2 eps) = 2: pi* = (-1 + sqrt(1 + 4 kappa)) / (2 kappa) = 0.5
    assert limit.predicted_removed_fraction == pytest.approx(0.5, abs=1e-3)
    assert limit.predicted_remaining_fraction == pytest.approx(0.5, abs=1e-3)
    assert limit.hvp_count == 1 and len(limit.ritz_values) == 1  # beta = 0 after one step
    assert limit.ritz_values[0] == pytest.approx(1.0, abs=1e-12)


def test_l2_two_clusters():
    h = torch.cat([torch.full((50,), 0.5), torch.full((50,), 2.0)])
    model = Quadratic(torch.linspace(0.01, 0.2, 100), h)
    eps = 0.1
    limit = limit_of(model, eps)
    assert len(limit.ritz_values) == 2
    assert sorted(limit.ritz_values) == pytest.approx([0.5, 2.0], abs=1e-10)
    assert limit.ritz_weights == pytest.approx([0.5, 0.5], abs=1e-10)
    for _, r, g in limit.curve[::97]:
        exact = 0.5 * 2 * eps / (2 * eps + 0.5 * r * r) + 0.5 * 2 * eps / (2 * eps + 2 * r * r)
        assert g == pytest.approx(exact, abs=1e-10)
    # A brute-force root of the same G on a fine grid.
    fractions = np.arange(100_000) / 100_000
    w2 = np.sort(model.target.numpy() ** 2)
    radii = np.sqrt(np.cumsum(w2)[np.maximum(1, np.ceil(fractions * 100).astype(int)) - 1])
    g = 0.5 * 2 * eps / (2 * eps + 0.5 * radii**2) + 0.5 * 2 * eps / (2 * eps + 2 * radii**2)
    root = fractions[np.argmin(np.abs(g - fractions))]
    assert limit.predicted_removed_fraction == pytest.approx(root, abs=1e-3)


def test_l3_negative_eigenvalues_count_by_their_magnitude():
    magnitudes = torch.linspace(0.01, 0.2, 100)
    signed = limit_of(Quadratic(magnitudes, torch.cat([-torch.ones(50), torch.ones(50)])), 0.1)
    plain = limit_of(Quadratic(magnitudes, torch.ones(100)), 0.1)
    assert signed.predicted_removed_fraction == plain.predicted_removed_fraction
    assert [g for *_, g in signed.curve] == pytest.approx([g for *_, g in plain.curve], abs=1e-10)


@pytest.fixture(scope="module")
def digits_mlp():
    """A float64 MLP 64 -> 16 -> 10 on 256 digits images (D = 1,210) and its full Hessian."""
    path = resources.files("incop.workload") / "embedded" / "digits.npz"
    with resources.as_file(path) as file, np.load(file) as data:
        keys = list(data.keys())
        x = torch.as_tensor(data[keys[0]][:256], dtype=torch.float64).reshape(256, -1)
        y = torch.as_tensor(data[keys[1]][:256]).long()
    x = x / x.max()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    # Trained near a minimum, as the theory assumes (the Hessian nearly positive semi-definite).
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    params = {n: p for n, p in model.named_parameters()}
    shapes = [p.shape for p in params.values()]

    def loss_of(flat):
        parts, start = {}, 0
        for (name, p), shape in zip(params.items(), shapes, strict=True):
            parts[name] = flat[start : start + p.numel()].view(shape)
            start += p.numel()
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    hessian = torch.func.hessian(loss_of)(flat)
    return model, params, x, y, hessian


def test_l4_hvp_equals_the_full_hessian_times_v_whatever_the_batching(digits_mlp):
    model, params, x, y, hessian = digits_mlp
    assert hessian.shape == (1210, 1210)
    whole = HessianOperator(model, params, [(x, y)], F.cross_entropy, torch.device("cpu"))
    split = HessianOperator(model, params, list(zip(x.split(32), y.split(32), strict=True)),
                            F.cross_entropy, torch.device("cpu"))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(1210, generator=g, dtype=torch.float64)
        exact = hessian @ v
        for operator in (whole, split):
            assert (operator(v) - exact).norm() <= 1e-10 * exact.norm()


def test_l5_lanczos_finds_the_eigenvalues(digits_mlp):
    *_, hessian = digits_mlp
    eigenvalues = torch.linalg.eigvalsh(hessian)
    scale = float(eigenvalues.abs().max())
    alphas, betas = lanczos(lambda v: hessian @ v, 1210, 1210, torch.Generator().manual_seed(0))
    theta, _ = ritz(alphas, betas)
    nearest = (theta[:, None] - eigenvalues[None, :]).abs().min(dim=1).values
    assert float(nearest.max()) <= 1e-6 * scale
    for target in [*eigenvalues[-5:].tolist(), float(eigenvalues[0])]:
        assert float((theta - target).abs().min()) <= 1e-6 * scale
    alphas, betas = lanczos(lambda v: hessian @ v, 1210, 64, torch.Generator().manual_seed(0))
    top = torch.sort(ritz(alphas, betas)[0]).values[-5:]
    assert top.tolist() == pytest.approx(eigenvalues[-5:].tolist(), rel=1e-6)


def test_l6_slq_against_the_exact_trace_function(digits_mlp):
    *_, hessian = digits_mlp
    eigenvalues = torch.linalg.eigvalsh(hessian)
    eps = 0.05
    g = torch.Generator().manual_seed(0)
    values, weights = [], []
    for _ in range(8):
        theta, tau = ritz(*lanczos(lambda v: hessian @ v, 1210, 128, g))
        values.append(theta)
        weights.append(tau / 8)
    theta, tau = torch.cat(values), torch.cat(weights)
    largest = float(eigenvalues.abs().max())
    radii = [r for r in (0.5, 1, 2, 4, 8, 16, 32, 64) if 2 * eps / r**2 >= 1e-3 * largest]
    assert len(radii) >= 4
    for r in radii:
        exact = float((2 * eps / (2 * eps + eigenvalues.abs() * r * r)).mean())
        assert abs(float(width(r, eps, theta, tau)) - exact) <= 0.02, r


def test_l7_the_zero_row_atom():
    g = torch.Generator().manual_seed(0)
    theta, tau = torch.rand(40, generator=g, dtype=torch.float64) * 5, torch.rand(40, generator=g)
    tau = (tau / tau.sum()).double()
    for z in (0.0, 0.3, 0.51):
        got = width(torch.tensor([0.1, 1.0, 3.0]), 0.1, theta, tau, z)
        plain = width(torch.tensor([0.1, 1.0, 3.0]), 0.1, theta, tau)
        assert torch.allclose(got, z + (1 - z) * plain, atol=1e-12, rtol=0)
    # Zero Hessian rows exactly on the smaller half of the weights: quantiles 0..0.50 hit them.
    magnitudes = torch.cat([torch.full((50,), 0.05), torch.full((50,), 0.2)])
    h = torch.cat([torch.zeros(50), torch.ones(50)])
    model = Quadratic(magnitudes, h)
    order = torch.argsort(model.target.abs(), stable=True)  # put them at the magnitudes' ranks
    assert set(order[:50].tolist()) == set(range(50))
    limit = limit_of(model, 0.1, zero_rows=100)
    assert limit.zero_row_fraction == pytest.approx(0.51)


def test_l8_official_compat_mode():
    model = Quadratic(torch.full((100,), 0.1), torch.ones(100))
    assert limit_of(model, 0.25, density="official").predicted_removed_fraction == pytest.approx(
        0.333, abs=1e-3
    )
    # The official grid density, written out as the official code does (numpy, LIMIT.md B3).
    g = torch.Generator().manual_seed(2)
    theta = torch.sort(torch.rand(12, generator=g, dtype=torch.float64) * 50).values
    tau = torch.rand(12, generator=g, dtype=torch.float64)
    tau /= tau.sum()
    eps, radius = 0.05, 2.0
    th, tw = theta.numpy(), tau.numpy()
    lmax, lmin = th.max() + 0.01, th.min() - 0.01
    grids = np.linspace(lmin, lmax, 100000)
    sig = 1e-10 * max(1, lmax - lmin)
    dens = np.zeros_like(grids)
    for t, wt in zip(th, tw, strict=True):
        dens += wt * np.exp(-((grids - t) ** 2) / (2 * sig)) / np.sqrt(2 * np.pi * sig)
    dens /= dens.sum() * (grids[1] - grids[0])
    mask = dens > 0
    axes = 2 * eps / np.abs(grids[mask])
    expected = np.sum(dens[mask] * axes / (radius**2 + axes)) / dens[mask].sum()
    assert float(official_width(radius, eps, theta, tau)) == pytest.approx(expected, rel=1e-9)
    # ... which rounds R: 2.4 is read as 2.
    assert float(official_width(2.4, eps, theta, tau)) == pytest.approx(expected, rel=1e-9)


def test_l9_the_actual_threshold_rule():
    fractions = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    accuracies = [0.90, 0.91, 0.90, 0.89, 0.95, 0.50]
    assert actual_threshold(fractions, accuracies, 0.90, strict=True) == 0.4
    assert actual_threshold(fractions, accuracies, 0.96, strict=True) is None
    assert actual_threshold(fractions, [0.9, 0.9, 0.89, 0.85, 0.8, 0.5], 0.90) == 0.1
    assert actual_threshold(fractions, [0.9, 0.9, 0.89, 0.85, 0.8, 0.5], 0.90, 0.011) == 0.2


def test_l10_eps_is_the_population_std_of_batch_losses():
    batches = [(torch.zeros(2, 1), torch.full((2,), v)) for v in (0.2, 0.4, 0.6, 0.8)]
    eps = batch_loss_std(nn.Identity(), batches, lambda out, y: y.mean(), torch.device("cpu"))
    assert eps == pytest.approx(0.2236068, abs=1e-7)


def test_the_magnitude_curve_prunes_exactly_n_weights():
    fractions, radii = magnitude_curve([torch.tensor([[3.0, -1.0], [2.0, 0.0]])], 4)
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75]
    # n = max(1, ceil(pi * 4)) = 1, 1, 2, 3 of the squares sorted: 0, 1, 4, 9.
    assert radii.tolist() == pytest.approx([0.0, 0.0, 1.0, math.sqrt(5.0)])
    assert crossing(fractions, torch.tensor([0.9, 0.3, 0.1, 0.0])) == 1


@pytest.mark.parametrize(
    "options, named",
    [
        ({"lanczos_iters": 1}, "lanczos_iters"),
        ({"eps": 0.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"probes": 0}, "probes"),
        ({"density": "grid"}, "density"),
    ],
)
def test_bad_options_are_refused(options, named):
    model = Quadratic(torch.full((100,), 0.1), torch.ones(100))
    with pytest.raises(UserError, match=named):
        pruning_limit(model, ONE_BATCH, loss_fn=model.loss, params={"W": model.W},
                      **{"eps": 0.1, **options})  # fmt: skip


def test_a_model_without_prunable_weights_is_refused():
    with pytest.raises(UserError, match="no prunable weights"):
        pruning_limit(nn.Sequential(nn.ReLU()), ONE_BATCH)


# --- incop limit, lomp, and target_remaining: limit ----------------------------------------------

QUICK = ["--levels", "1", "--warmup-epochs", "2", "--max-epochs", "1"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("limit") / "run"
    assert main(["run", "--method", "sap", *QUICK, "--out", str(run)]) == 0
    return run


def test_incop_limit_prints_both_fractions_and_writes_its_files(dense_run, capsys):
    capsys.readouterr()
    assert main(["limit", str(dense_run), "--lanczos-iters", "16", "--actual", "--grid", "50"]) == 0
    out = capsys.readouterr().out
    assert "predicted removable" in out and "remaining: at least" in out
    assert "pruning ratio" not in out
    summary = json.loads((dense_run / "limit.json").read_text())
    assert summary["hvp_count"] == 16 and summary["samples"] > 0
    assert 0 <= summary["predicted_removed_fraction"] < 1
    actual = summary["actual"]
    assert actual["difference"] == pytest.approx(
        summary["predicted_removed_fraction"] - actual["removed_fraction"]
    )
    rows = (dense_run / "limit.csv").read_text().splitlines()
    assert rows[0] == "removed,radius,width,val_accuracy,test_accuracy" and len(rows) == 51
    # Written through the run's manifest: an --overwrite of the run may remove them.
    manifest = json.loads((dense_run / "manifest.json").read_text())
    assert {"limit.json", "limit.csv"} <= set(manifest["files"])


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--samples", "0"], "samples"),
        (["--samples", "99999999"], "samples"),
        (["--lanczos-iters", "1"], "lanczos_iters"),
        (["--eps", "0"], "eps"),
        (["--eps", "nan"], "eps"),
        (["--eps", "x"], "eps"),
        (["--level", "7"], "level 7"),
        (["--tolerance", "0.01"], "--tolerance would be ignored"),
        (["--strict"], "--strict would be ignored"),
    ],
)
def test_incop_limit_refuses_bad_input_before_work(dense_run, tmp_path, capsys, flags, named):
    before = sorted(p.name for p in dense_run.iterdir())
    out = tmp_path / "out"
    assert main(["limit", str(dense_run), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert sorted(p.name for p in dense_run.iterdir()) == before and not out.exists()


def test_incop_limit_refuses_a_missing_or_untrained_run(tmp_path, capsys):
    assert main(["limit", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    at_init = tmp_path / "synflow"
    assert main(["run", "--method", "synflow", "--max-epochs", "1", "--out", str(at_init)]) == 0
    capsys.readouterr()
    assert main(["limit", str(at_init)]) == 2
    assert "initialisation" in capsys.readouterr().err


def test_lomp_with_the_limit_as_target_runs_end_to_end(tmp_path):
    run = tmp_path / "lomp"
    assert main(["run", "--method", "lomp", "--warmup-epochs", "2", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    limit = summary["limit"]
    assert summary["config"]["l1"] == 5e-5 and summary["config"]["weight_decay"] == 0.0
    assert [lv["level"] for lv in summary["levels"]] == [0, 1]
    last = summary["levels"][1]
    assert last["epochs"] == 0 and last["test_accuracy"] is not None
    assert last["remaining_fraction"] == pytest.approx(limit["predicted_remaining_fraction"],
                                                       abs=1 / 50_200)  # fmt: skip


def test_imp_stops_at_a_target_and_never_prunes_below_it(tmp_path):
    run = tmp_path / "lth"
    argv = ["run", "--method", "lth", "--rate", "0.5", "--target-remaining", "0.3", "--levels",
            "5", "--warmup-epochs", "1", "--max-epochs", "1", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    levels = json.loads((run / "summary.json").read_text())["levels"]
    assert [round(lv["remaining_fraction"], 4) for lv in levels] == [1.0, 0.5, 0.3]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--method", "synflow", "--target-remaining", "limit"], "initialisation"),
        (["--method", "lomp", "--weight-decay", "1e-4"], "weight_decay"),
        (["--method", "lomp", "--l1", "-1"], "l1"),
        (["--method", "sap", "--target-remaining", "lots"], "target_remaining"),
        (["--method", "sap", "--target-remaining", "limit", "--levels", "0"], "levels is 0"),
    ],
)
def test_bad_limit_and_lomp_settings_are_refused(tmp_path, capsys, flags, named):
    assert main(["run", *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_run_with_the_limit_resumes_with_the_same_target(tmp_path):
    from incop.engine.outputs import read_state_file

    run = tmp_path / "sap"
    argv = ["run", "--method", "sap", "--target-remaining", "limit", "--levels", "2",
            "--warmup-epochs", "1", "--max-epochs", "1", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    state = read_state_file(run / "state.pt")
    summary = json.loads((run / "summary.json").read_text())
    assert state["target"] == summary["limit"]["predicted_remaining_fraction"]
    assert state["limit"] == summary["limit"]
