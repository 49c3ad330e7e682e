"""``probe_size: auto`` and ``eval_batch_size: auto`` (issue 28): sizes chosen from the data and
the model, recorded in summary.json, and numbers kept as given."""

import json

import pytest
import torch
import yaml
from torch import nn

import incop
from incop.config import resolve
from incop.core.batches import count_examples, eval_batch, probe_examples
from incop.errors import UserError
from incop.tools.cli import main
from incop.workload.models import build_model

QUICK = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"]


@pytest.mark.parametrize(
    "examples, expected",
    [(100, 256), (5119, 256), (5120, 256), (5140, 257), (20_000, 1000), (40_959, 2047),
     (40_960, 2048), (54_000, 2048), (10**7, 2048)],
)  # fmt: skip
def test_auto_probe_is_five_percent_of_the_training_examples_within_256_and_2048(
    examples, expected
):
    assert probe_examples("auto", examples) == expected


def test_a_probe_size_given_as_a_number_is_kept_whatever_the_data():
    assert probe_examples(2048, 100) == 2048 and probe_examples(300, 10**6) == 300


def test_auto_eval_batch_is_smaller_for_models_with_a_convolution():
    assert eval_batch("auto", build_model("lenet5", 1, 28, 10)) == 128
    assert eval_batch("auto", build_model("resnet20", 3, 32, 10)) == 128
    assert eval_batch("auto", build_model("mlp", 1, 28, 10)) == 256
    assert eval_batch("auto", nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten())) == 128
    assert eval_batch(1000, build_model("lenet5", 1, 28, 10)) == 1000


def test_examples_are_counted_in_held_tensors_loaders_and_lists():
    x, y = torch.zeros(70, 3), torch.zeros(70, dtype=torch.long)
    assert count_examples(incop.Batches(x, y, 16)) == 70
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    assert count_examples(loader) == 70
    assert count_examples([(x[:30], y[:30]), (x[30:], y[30:])]) == 70


def test_a_run_records_the_sizes_auto_chose_and_saves_auto_in_its_config(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *QUICK, "--method", "incop-gf", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # digits: 1295 training examples, 5% is 64, so the floor of 256; the mlp has no conv.
    assert summary["train_examples"] == 1295
    assert summary["probe_size"] == 256 and summary["eval_batch_size"] == 256
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["probe_size"] == "auto" and saved["eval_batch_size"] == "auto"


def test_numbers_in_a_saved_config_are_the_sizes_used(tmp_path):
    # A run saved before auto existed holds numbers: it runs (and resumes) at them.
    config = tmp_path / "old.yaml"
    config.write_text("probe_size: 2048\neval_batch_size: 1000\nmethod: incop-gf\n")
    out = tmp_path / "run"
    assert main(["run", *QUICK, "--config", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["probe_size"] == 2048 and summary["eval_batch_size"] == 1000


def test_a_run_without_a_flow_records_no_probe_size(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *QUICK, "--method", "lth", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "probe_size" not in summary and summary["eval_batch_size"] == 256


@pytest.mark.parametrize(
    "values, named",
    [({"eval_batch_size": "big"}, "eval_batch_size: 'big'"),
     ({"eval_batch_size": 0}, "eval_batch_size: 0"),
     ({"method": "incop-gf", "probe_size": "some"}, "probe_size: 'some'"),
     ({"method": "incop-gf", "probe_size": -3}, "probe_size: -3")],
)  # fmt: skip
def test_a_size_that_is_neither_a_number_nor_auto_is_refused(values, named):
    with pytest.raises(UserError, match=named):
        resolve(values)
