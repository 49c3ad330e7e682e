"""Issue 22: tickets of models nobody in incop wrote leave the tool and come back: the run
records the model's factory and its example input; every export format loads back and gives
the ticket's outputs on a real batch."""

import importlib.util

import pytest
import torch

import incop
import user_models
from incop.core import inputs
from incop.tools.cli import main

FORMATS = ("state_dict", "torch-prune", "sparse", "compact", "onnx")
CASES = {
    "resnet": (user_models.images, None),
    "transformer": (user_models.tokens, None),
    "bert": (user_models.tokens, user_models.as_bert_batch),
}


@pytest.fixture(scope="module", params=list(CASES))
def pruned(request, tmp_path_factory):
    name = request.param
    if name == "bert":
        pytest.importorskip("transformers")
    data, batch_fn = CASES[name]
    train, val = data()
    torch.manual_seed(0)
    model = getattr(user_models, name)()
    run = tmp_path_factory.mktemp(name) / "run"
    incop.prune(model, train, val, method="sap", levels=1, warmup_epochs=1, max_epochs=1,
                out=str(run), model_factory=f"user_models:{name}", batch_fn=batch_fn)  # fmt: skip
    batch = batch_fn(val[0]) if batch_fn else val[0]
    return name, model.eval(), run, batch[0]


def outputs(model, x):
    with torch.no_grad():
        return inputs.logits(inputs.call(model, x))


def test_the_run_records_the_factory_and_the_example_input(pruned):
    import json

    import yaml

    name, _, run, x = pruned
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == f"user_models:{name}"
    recorded = json.loads((run / "summary.json").read_text())["example_input"]
    assert recorded == inputs.describe(inputs.take(x, 0, 1))


def test_load_ticket_rebuilds_the_model_from_its_factory(pruned):
    _, model, run, x = pruned
    loaded, masks = incop.load_ticket(run)
    assert type(loaded) is type(model)
    torch.testing.assert_close(outputs(loaded.eval(), x), outputs(model, x))
    assert all(not mask.all() for mask in masks.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_back_with_the_tickets_outputs(pruned, tmp_path, fmt, capsys):
    name, model, run, x = pruned
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        pytest.skip("the onnx extra")
    out = tmp_path / f"ticket.{fmt}"
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0, capsys.readouterr()
    factory = getattr(user_models, name)
    if fmt == "onnx":
        # A graph for inference: it runs (here on onnx's reference runtime) with the ticket's
        # outputs; it loads back only where the exporter kept the weights as they were.
        from onnx.reference import ReferenceEvaluator

        feeds = x if isinstance(x, dict) else {"input": x}
        (got, *_) = ReferenceEvaluator(str(out)).run(None, {k: v.numpy() for k, v in feeds.items()})
        torch.testing.assert_close(torch.from_numpy(got), outputs(model, x), atol=1e-4, rtol=1e-4)
        reason = "folds BatchNorm" if name == "resnet" else "for inference only"
        with pytest.raises(incop.UserError, match=reason):
            incop.load_ticket(out)
        return
    if fmt in ("state_dict", "torch-prune"):  # no config inside: the model is passed
        loaded, _ = incop.load_ticket(out, factory())
    else:  # sparse and onnx hold the config, which names the factory; compact its own model
        loaded, _ = incop.load_ticket(out)
    loaded.eval()  # a compact ticket too: it was exported in eval mode
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x), atol=1e-5, rtol=1e-4)


def test_a_model_without_factory_asks_for_the_model(tmp_path):
    train, val = user_models.images()
    run = tmp_path / "run"
    incop.prune(user_models.resnet(), train, val, method="sap", levels=1, warmup_epochs=1,
                max_epochs=1, out=str(run))  # fmt: skip
    with pytest.raises(incop.UserError, match="'user:ResNet', an object given to incop.prune"):
        incop.load_ticket(run)
    loaded, _ = incop.load_ticket(run, user_models.resnet())
    assert isinstance(loaded, user_models.ResNet)


@pytest.mark.parametrize(
    "factory, message",
    [("no_such_module:model", "no module 'no_such_module'"),
     ("user_models:missing", "does not import"), ("user_models", "is not allowed")],
)  # fmt: skip
def test_a_factory_that_does_not_import_is_refused_before_work(tmp_path, factory, message):
    train, val = user_models.images()
    run = tmp_path / "run"
    with pytest.raises(incop.UserError, match=message):
        incop.prune(user_models.resnet(), train, val, method="sap", levels=1, warmup_epochs=1,
                    max_epochs=1, out=str(run), model_factory=factory)  # fmt: skip
    assert not run.exists()


def test_a_factory_inside_the_run_folder_never_runs(tmp_path, monkeypatch):
    train, val = user_models.images()
    run = tmp_path / "run"
    incop.prune(user_models.resnet(), train, val, method="sap", levels=1, warmup_epochs=1,
                max_epochs=1, out=str(run), model_factory="user_models:resnet")  # fmt: skip
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("user_models:resnet", "planted:model"))
    (run / "planted.py").write_text("raise SystemExit('ran code from the folder')\n")
    monkeypatch.syspath_prepend(str(run))
    with pytest.raises(incop.UserError, match="a file of the folder it is read from"):
        incop.load_ticket(run)


def test_the_command_line_takes_a_model_factory(tmp_path):
    run = tmp_path / "run"
    assert main(["run", "--model", "user_models:digits_net", "--method", "sap", "--levels", "1",
                 "--warmup-epochs", "1", "--max-epochs", "1", "--out", str(run)]) == 0  # fmt: skip
    model, masks = incop.load_ticket(run)
    assert isinstance(model, torch.nn.Sequential) and set(masks) == {"1.weight", "3.weight"}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["own_cnn", "hf_text_classifier", "regression"])
def test_the_examples_run(script, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    if script == "hf_text_classifier":
        pytest.importorskip("transformers")
    examples = Path(__file__).parents[1] / "examples"
    assert len((examples / f"{script}.py").read_text().splitlines()) < 60
    done = subprocess.run([sys.executable, f"{script}.py", str(tmp_path / "run")], cwd=examples,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "flow" in done.stdout and (tmp_path / "run" / "summary.json").is_file()


def test_a_run_of_an_earlier_incop_prune_that_recorded_mlp_still_resumes():
    from incop.config import resolve
    from incop.engine.resume import check_settings

    config = resolve({"model": "user:ResNet"})
    check_settings({**config.to_dict(), "model": "mlp"}, config)  # what it recorded then
    with pytest.raises(incop.UserError, match="model: 'lenet5' saved, 'mlp' now"):
        check_settings({**resolve({}).to_dict(), "model": "lenet5"}, resolve({}))
