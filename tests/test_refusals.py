"""Bad values get one clear line before any work, in the API and the command line, and leave
nothing on disk (issue 20's classes 4 and 5)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import incop
from incop.errors import UserError
from incop.tools.cli import main

QUICK = dict(levels=1, warmup_epochs=1, max_epochs=1)


def data(n=64, d=10, c=3, dtype=torch.float32, ydtype=torch.long):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(dtype)
    y = torch.randint(0, c, (n,), generator=g).to(ydtype)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def net():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))


def bn_net():
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


API_CASES = {
    "inputs of the wrong width": (lambda: (net(), data(d=12), data(d=12)), {}, "cannot take"),
    "int64 inputs into a Linear": (
        lambda: (net(), data(dtype=torch.long), data(dtype=torch.long)),
        {},
        "int64",
    ),
    "float targets with cross-entropy": (
        lambda: (net(), data(ydtype=torch.float32), data(ydtype=torch.float32)),
        {},
        "loss_fn",
    ),
    "inputs and targets of different lengths": (
        lambda: (net(), [(torch.randn(16, 10), torch.randint(0, 3, (12,)))], data()),
        {},
        "12",
    ),
    "one-example batches with BatchNorm": (
        lambda: (bn_net(), [(torch.randn(1, 10), torch.tensor([1]))] * 4, data()),
        {},
        "BatchNorm",
    ),
    "a model that is not a module": (lambda: (object(), data(), data()), {}, "nn.Module"),
    "model None": (lambda: (None, data(), data()), {}, "nn.Module"),
    "an optimiser that is not one": (
        lambda: (net(), data(), data()),
        {"optimizer": torch.optim.SGD},
        "optimizer",
    ),
    "a metric that is not finite": (
        lambda: (net(), data(), data()),
        {"metric": lambda o, t: float("nan")},
        "finite",
    ),
    "(B, T, C) outputs with the default loss": (
        lambda: (nn.Sequential(nn.Linear(10, 3), nn.Unflatten(1, (3, 1))), data(), data()),
        {},
        "loss_fn|targets span",
    ),
}


@pytest.mark.parametrize("case", API_CASES)
def test_prune_refuses_before_any_folder_is_made(tmp_path, case):
    build, options, named = API_CASES[case]
    model, train, val = build()
    out = tmp_path / "run"
    with pytest.raises(UserError, match=named) as info:
        incop.prune(model, train, val, out=str(out), **QUICK, **options)
    assert "\n" not in str(info.value).split("\n")[0]
    assert not out.exists()


def test_the_trial_step_leaves_no_trace():
    # BatchNorm statistics and the RNG are put back: a run is the same with the check as without.
    model = bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    from incop.workload.sources import trial_step

    assert trial_step(model, "train_data", data()[0], F.cross_entropy, torch.device("cpu")) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize(
    "masks, named",
    [
        ([torch.ones(16, 10)], "dict"),
        ({"0.weight": torch.full((16, 10), 0.5)}, "0.5"),
        ({"0.weight": torch.full((16, 10), 2.0)}, "2.0"),
        ({"0.weight": torch.full((16, 10), float("nan"))}, "nan"),
    ],
)
def test_apply_masks_takes_only_boolean_or_zero_one_dicts(masks, named):
    with pytest.raises(UserError, match=named):
        incop.apply_masks(net(), masks)


def test_apply_masks_refuses_what_is_not_an_optimiser():
    with pytest.raises(UserError, match="Optimizer"):
        incop.apply_masks(net(), {}, optimizer="sgd")


def test_load_ticket_refuses_none_and_a_ticket_with_odd_masks(tmp_path):
    with pytest.raises(UserError, match="NoneType"):
        incop.load_ticket(None)
    model = net()
    path = tmp_path / "t.pt"
    masks = {"0.weight": torch.full((16, 10), 0.5)}
    torch.save({"state_dict": model.state_dict(), "masks": masks}, path)
    with pytest.raises(UserError, match="0.5"):
        incop.load_ticket(path, net())


YAML_CASES = {
    'levels: "3"': "str",
    "levels: true": "bool",
    "levels: .inf": "float",
    "levels: 1e308": "str",
    "levels: 1234567890123456789012345678901234567890": "0..1000",
    "warmup_epochs: 1234567890123456789012345678901234567890": "0..100000",
    "threads: 99999999": "threads",
    "batch_size: 2.5": "float",
}


@pytest.mark.parametrize("text", YAML_CASES)
def test_yaml_values_are_typed_and_bounded(tmp_path, capsys, text):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert YAML_CASES[text] in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--threads", "2147483648"], "threads"),
        (["--out", "/tmp/a\x00b"], "NUL"),
        (["--levels", "1e308"], "levels"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, flags, named):
    argv = ["run", *flags] if "--out" in flags else ["run", *flags, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_a_learning_rate_that_learns_nothing_is_warned_about(tmp_path):
    with pytest.warns(RuntimeWarning, match="chance.*lower learning rate"):
        assert main(["run", "--lr", "2", "--levels", "1", "--warmup-epochs", "2",
                     "--max-epochs", "1", "--out", str(tmp_path / "r")]) == 0  # fmt: skip


def test_a_batch_larger_than_the_training_split_is_warned_about(tmp_path):
    with pytest.warns(RuntimeWarning, match="larger than the training split"):
        main(["run", "--batch-size", "5000", "--levels", "0", "--warmup-epochs", "1",
              "--out", str(tmp_path / "r")])  # fmt: skip


def test_flow_guided_lth_runs_on_a_channels_last_conv_net(tmp_path):
    argv = ["run", "--method", "lth", "--model", "lenet5", "--score", "flow-guided",
            "--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1", "--probe-size", "128",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0


def test_an_onnx_example_of_the_wrong_shape_is_refused_before_writing(tmp_path):
    pytest.importorskip("onnx")
    run = tmp_path / "r"
    assert main(["run", "--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1",
                 "--out", str(run)]) == 0  # fmt: skip
    out = tmp_path / "t.onnx"
    with pytest.raises(UserError, match="example_input"):
        incop.export_ticket(run, "onnx", out, example_input=torch.zeros(1, 3, 32, 32))
    assert not out.exists()


@pytest.mark.parametrize("where", [0, 37, 63])
def test_a_non_finite_input_anywhere_in_batches_is_found_chunk_by_chunk(
    tmp_path, monkeypatch, where
):
    # A chunk of 3 rows of 10 values: the check reads the tensor in 22 parts, never whole.
    monkeypatch.setattr("incop.workload.sources._FINITE_CHUNK", 30)
    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (64,))
    x[where, 4] = float("inf") if where else float("nan")
    train = incop.Batches(x, y, 16)
    with pytest.raises(UserError, match="train_data: inputs hold NaN or infinite values"):
        incop.prune(net(), train, data(), out=str(tmp_path / "run"), **QUICK)
    assert not (tmp_path / "run").exists()
    x[where, 4] = 0
    assert incop.prune(net(), incop.Batches(x, y, 16), data(), **QUICK).levels
