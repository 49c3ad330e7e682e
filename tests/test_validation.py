"""User errors are refused before any work, with exit status 2 and a message naming the field;
the same seed gives the same run."""

import gzip

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TinyNet, blobs
from incop import prune
from incop.cli import main
from incop.config import FIELD_NAMES

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
        assert any(name in first_line for name in [*FIELD_NAMES, "no prunable"]), err
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
