"""User errors are refused before any work, with exit status 2 and a message naming the field;
the same seed gives the same run."""

import gzip
import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TinyNet, blobs
from incop import prune
from incop.config import field_names
from incop.errors import UserError
from incop.tools.cli import main

FAST = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"]


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--p", "2", "--q", "1"], "p"),
        (["--beta", "1.5"], "beta"),
        (["--gamma", "0"], "gamma"),
        (["--eps", "0"], "eps"),
        (["--levels", "-3"], "levels"),
        (["--warmup-epochs", "-1"], "warmup_epochs"),
        (["--model", "resnet999"], "model"),
        (["--dataset", "imagenet"], "dataset"),
        (["--rewind", "sometimes"], "rewind"),
        (["--method", "lottery"], "method"),
        (["--include", "nothing.matches"], "include"),
    ],
)
def test_cli_refuses_bad_values_naming_them(tmp_path, capsys, flags, field):
    assert main(["run", *FAST, *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unknown_config_key_in_yaml_names_the_closest(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("levles: 3\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "did you mean 'levels'" in capsys.readouterr().err


def test_truncated_idx_file_is_refused_naming_it(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (10, 28, 28))
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (raw / name).write_bytes(gzip.compress(header + bytes(100)))
    labels = (2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(10)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes(gzip.compress(labels))
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "images-idx3-ubyte.gz" in capsys.readouterr().err


VALUES = {
    "p": st.floats(-1, 3),
    "q": st.floats(-1, 3),
    "beta": st.floats(-0.5, 1.5),
    "gamma": st.floats(-1, 2),
    "eps": st.floats(-1, 1),
    "levels": st.integers(-1, 1),
    "max_epochs": st.integers(-1, 1),
    "warmup_epochs": st.integers(-1, 1),
    "min_epochs": st.integers(-1, 2),
    "method": st.sampled_from(["lth", "sap", "sap-acc", "incop-if", "incop-gf", "nope"]),
    "scope": st.sampled_from(["global", "layer", "neuron", "row"]),
    "rewind": st.sampled_from(["init", "dense", "none", "lr", "epoch:0", "epoch:3", "x"]),
    "distance": st.sampled_from(["l2", "relative", "cosine", "l1"]),
    "model": st.sampled_from(["mlp", "lenet5", "resnet20", "alexnet"]),
    "probe_size": st.integers(0, 64),
    "lr": st.floats(-0.1, 0.5),
}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.fixed_dictionaries({}, optional=VALUES))
def test_random_configs_run_or_are_refused_never_a_traceback(tmp_path_factory, capsys, chosen):
    flags = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"]
    for name, value in chosen.items():
        flags.append(f"--{name.replace('_', '-')}={value}")
    out = tmp_path_factory.mktemp("run")
    code = main(["run", *flags, "--batch-size", "256", "--out", str(out / "r")])
    err = capsys.readouterr().err
    if code == 2:
        first_line = err.removeprefix("incop: error: ").splitlines()[0]
        assert any(name in first_line for name in [*field_names(), "no prunable"]), err
    else:
        assert code == 0, err


def test_same_seed_same_run_different_seed_different_run():
    def run(seed):
        torch.manual_seed(seed)
        x, y = blobs()
        train = list(zip(x.split(64), y.split(64), strict=True))
        result = prune(TinyNet(), train, [blobs(seed=1)], method="sap", levels=2,
                       warmup_epochs=2, max_epochs=2, seed=seed)  # fmt: skip
        return [lv.val_accuracy for lv in result.levels], result.masks

    (acc_a, masks_a), (acc_b, masks_b) = run(0), run(0)
    assert acc_a == acc_b
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    _, masks_c = run(1)
    assert not all(torch.equal(masks_a[n], masks_c[n]) for n in masks_a)


# --- every value checked before work ------------------------------------------------------------

BAD_NUMBERS = [
    (["--p", "nan"], "p"),
    (["--q", "inf"], "q"),
    (["--gamma", "nan"], "gamma"),
    (["--gamma", "inf"], "gamma"),
    (["--eta-r", "nan"], "eta_r"),
    (["--eta-r", "inf"], "eta_r"),
    (["--eps", "nan"], "eps"),
    (["--delta", "nan"], "delta"),
    (["--lr", "1e308"], "lr"),
    (["--momentum", "nan"], "momentum"),
    (["--weight-decay", "inf"], "weight_decay"),
    (["--seed", "20000000000000"], "seed"),
    (["--seed", "-1"], "seed"),
    (["--device", "cuda:99"], "device"),
    (["--device", "cuda:abc"], "device"),
    (["--device", "tpu"], "device"),
]
if not torch.cuda.is_available():
    BAD_NUMBERS.append((["--device", "cuda"], "device"))
if not torch.backends.mps.is_available():
    BAD_NUMBERS.append((["--device", "mps"], "device"))


@pytest.mark.parametrize("flags, field", BAD_NUMBERS)
def test_out_of_range_values_are_refused_before_any_file(tmp_path, capsys, flags, field):
    assert main(["run", *FAST, *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"incop: error: {field}: ") and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("levles: 3\n")
    assert (
        main(["run", "--config", str(config), "--model", "nosuch", "--lr", "-1", "--p", "x"]) == 2
    )
    err = capsys.readouterr().err
    for named in ("model: unknown value 'nosuch'", "lr: -1.0", "'levles'", "p: 'x'"):
        assert named in err, err


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x00\xd0\xff\xfe binary", "not a text file"),
        (b"- a\n- list\n", "must hold a mapping"),
        (b"1: 2\n", "not setting names: 1"),
        (b"levels: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_files_get_one_clear_line(tmp_path, capsys, content, words):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err


def test_a_config_that_is_a_folder_is_refused(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_compare_refuses_an_empty_method_list(tmp_path, capsys):
    assert main(["compare", "--methods", "", "--out", str(tmp_path / "c")]) == 2
    assert "methods" in capsys.readouterr().err and not (tmp_path / "c").exists()


# --- divergence ---------------------------------------------------------------------------------


def no_nan_anywhere(folder):
    """Every JSON file parses strictly (no NaN / Infinity tokens)."""

    def refuse(token):
        raise AssertionError(f"{token} in an output file")

    for path in [*folder.rglob("*.json"), *folder.rglob("*.jsonl")]:
        for line in (
            path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        ):
            json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize(
    "flags", [["--lr", "3", "--batch-size", "1"], ["--batch-size", "5000", "--lr", "1e20"]]
)
def test_a_warmup_diverging_in_its_first_epoch_suggests_a_lower_lr(tmp_path, capsys, flags):
    assert main(["run", *FAST, *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "diverged in its first epoch" in err and "lower learning rate" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def nan_after(steps):
    """A training loss that turns NaN after ``steps`` training steps (evaluation unaffected)."""
    calls = {"n": 0}

    def loss_fn(out, y):
        loss = torch.nn.functional.cross_entropy(out, y)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > steps:
                return loss * float("nan")
        return loss

    return loss_fn


@pytest.mark.parametrize("on_divergence, levels", [("stop", 1), ("continue", 3)])
def test_a_warmup_diverging_later_records_level_0_as_diverged(tmp_path, on_divergence, levels):
    x, y = blobs()
    train = list(zip(x.split(128), y.split(128), strict=True))  # 3 steps an epoch
    with pytest.warns(RuntimeWarning, match="nan"):
        result = prune(TinyNet(), train, [blobs(seed=1)], method="lth", levels=2,
                       warmup_epochs=4, max_epochs=1, out=tmp_path, on_divergence=on_divergence,
                       loss_fn=nan_after(7))  # fmt: skip
    assert result.levels[0].stop_reason == "diverged" and result.levels[0].epochs == 2
    assert len(result.levels) == levels
    no_nan_anywhere(tmp_path)


def test_non_finite_validation_loss_is_divergence(tmp_path):
    calls = {"n": 0}

    def loss_fn(out, y):
        loss = torch.nn.functional.cross_entropy(out, y)
        if not torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 4:  # dense epoch 1, 2; level 1 epoch 0, 1 (this one)
                return loss * float("inf")
        return loss

    x, y = blobs()
    with pytest.warns(RuntimeWarning, match="val loss became inf"):
        result = prune(TinyNet(), [(x, y)], [blobs(seed=1)], method="lth", levels=1,
                       warmup_epochs=2, max_epochs=3, out=tmp_path, loss_fn=loss_fn)  # fmt: skip
    assert result.levels[1].stop_reason == "diverged" and result.levels[1].epochs == 0
    no_nan_anywhere(tmp_path)


def test_non_finite_flow_distance_is_divergence(tmp_path, monkeypatch):
    from incop.methods.stopping import GradientFlowRule

    real = GradientFlowRule.measure
    calls = {"n": 0}

    def measure(self, model, masks):
        calls["n"] += 1
        return float("nan") if calls["n"] == 2 else real(self, model, masks)

    monkeypatch.setattr(GradientFlowRule, "measure", measure)
    x, y = blobs()
    with pytest.warns(RuntimeWarning, match="distance became nan"):
        result = prune(TinyNet(), [(x, y)], [blobs(seed=1)], method="incop-gf", levels=1,
                       warmup_epochs=1, max_epochs=3, eps=1e-9, eps_mode="absolute",
                       probe_size=64, out=tmp_path)  # fmt: skip
    assert result.levels[1].stop_reason == "diverged"
    no_nan_anywhere(tmp_path)


# --- what incop.prune is given ------------------------------------------------------------------


def generator_of(batches):
    yield from batches


def api_cases():
    x, y = blobs()
    good = [(x, y)]
    bad_x = x.clone()
    bad_x[5, 2] = float("nan")
    return {
        "empty train": (dict(train_data=[]), "train_data: is empty"),
        "empty val": (dict(val_data=[]), "val_data: is empty"),
        "generator": (dict(train_data=generator_of(good)), "one-shot generator"),
        "iterator": (dict(val_data=iter(good)), "one-shot list_iterator"),
        "nan inputs": (dict(train_data=[(bad_x, y)]), "NaN"),
        "targets out of range": (dict(val_data=[(x, y + 5)]), "targets span 5..7"),
        "not pairs": (dict(train_data=[(x, y, y)]), "pair (inputs, targets)"),
        "method None": (dict(method=None), "method: None"),
        "unknown option": (dict(lerning_rate=0.1), "unknown setting 'lerning_rate'"),
        "exclude typo": (dict(exclude=["out.weights"]), "exclude: pattern 'out.weights'"),
        "include typo": (dict(include=["hiden.*"]), "include: pattern 'hiden.*'"),
    }


@pytest.mark.parametrize("case", api_cases())
def test_prune_refuses_bad_inputs_before_training(tmp_path, case):
    x, y = blobs()
    arguments = {"train_data": [(x, y)], "val_data": [(x, y)]}
    options, words = api_cases()[case]
    arguments.update(options)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=re.escape(words)):
        prune(model, arguments.pop("train_data"), arguments.pop("val_data"), levels=1,
              warmup_epochs=1, max_epochs=1, out=tmp_path / "r", **arguments)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "r").exists()


def test_same_seed_and_threads_give_bitwise_identical_weights(tmp_path):
    def weights(out):
        torch.manual_seed(0)
        model = TinyNet()
        x, y = blobs()
        prune(model, list(zip(x.split(64), y.split(64), strict=True)), [blobs(seed=1)],
              method="incop-gf", levels=2, warmup_epochs=2, max_epochs=2, probe_size=64,
              out=out)  # fmt: skip
        return model.state_dict()

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["threads"] == torch.get_num_threads()


def test_threads_option_sets_torchs_threads_and_is_recorded(tmp_path):
    before = torch.get_num_threads()
    try:
        x, y = blobs()
        prune(TinyNet(), [(x, y)], [blobs(seed=1)], method="sap", levels=1, warmup_epochs=1,
              max_epochs=1, threads=1, out=tmp_path / "r")  # fmt: skip
        assert torch.get_num_threads() == 1
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        assert summary["threads"] == 1 and summary["config"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="threads: 0 .*must be >= 1"):
        prune(TinyNet(), [(x, y)], [blobs(seed=1)], threads=0)
