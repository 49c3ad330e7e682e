"""Mixed precision (issue 12): bf16 autocast end to end on CPU; fp16 only where it can run."""

import json

import pytest
import torch

from incop.core.precision import Precision
from incop.errors import UserError
from incop.tools.cli import main


def test_bf16_runs_end_to_end_on_cpu_with_masks_exact(tmp_path):
    out = tmp_path / "bf16"
    args = ["run", "--method", "sap", "--precision", "bf16", "--levels", "2"]
    assert main([*args, "--warmup-epochs", "2", "--max-epochs", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["precision"] == "bf16"
    assert summary["levels"][-1]["val_accuracy"] > 0.8  # digits: bf16 still learns
    checkpoint = torch.load(out / "levels" / "2" / "checkpoint.pt", weights_only=True)
    for name, mask in checkpoint["masks"].items():
        weight = checkpoint["state_dict"][name]
        assert weight.dtype == torch.float32  # autocast: the weights stay fp32
        assert torch.all(weight[~mask] == 0)


def test_bf16_autocast_computes_in_bf16_and_fp32_does_not():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with Precision("bf16", torch.device("cpu")).autocast():
        assert layer(x).dtype == torch.bfloat16
    with Precision("fp32", torch.device("cpu")).autocast():
        assert layer(x).dtype == torch.float32


def test_fp16_on_cpu_is_refused_before_any_work(tmp_path):
    out = tmp_path / "fp16"
    with pytest.raises(UserError, match="fp16 needs a CUDA device.*use bf16"):
        Precision("fp16", torch.device("cpu"))
    assert main(["run", "--precision", "fp16", "--device", "cpu", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["run", "--precision", "fp8", "--out", str(out)]) == 2


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_for_conv_nets_on_a_cpu_with_native_bf16(monkeypatch, native):
    from incop.core import precision
    from incop.workload.models import build_model

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    cpu = torch.device("cpu")
    conv = build_model("lenet5", 1, 28, 10)
    assert precision.auto_precision(conv, cpu) == ("bf16" if native else "fp32")
    assert precision.auto_precision(build_model("mlp", 1, 28, 10), cpu) == "fp32"
    assert precision.auto_precision(conv, torch.device("cuda")) == "fp32"  # not measured there


def test_auto_precision_is_recorded_and_a_saved_number_is_kept(tmp_path, monkeypatch):
    from incop.core import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    quick = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"]
    for given, expected in ((None, "bf16"), ("fp32", "fp32")):
        out = tmp_path / str(given)
        flags = ["--precision", given] if given else []
        assert main(["run", "--model", "conv4", *quick, *flags, "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["precision"] == expected
        assert summary["config"]["precision"] == (given or "auto")
