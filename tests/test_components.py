"""One file per component: a stopping rule and a pruner written outside incop (test-local
modules) run through `incop.prune` and the CLI; users' own objects, callbacks and loggers."""

import json
import re
from pathlib import Path

import pytest
import torch

import incop
import incop.methods.pruning
import movement_pruner
import plateau_rule
from helpers import TinyNet
from incop.engine.outputs import read_metrics
from incop.tools.cli import main

README = Path(__file__).parents[1] / "README.md"


def _net():
    torch.manual_seed(0)
    return TinyNet()


def test_a_new_stopping_rule_is_one_module_and_runs_through_prune(tiny_data):
    train, val = tiny_data
    result = incop.prune(_net(), train, val, method="sap", stop="plateau", plateau_patience=1,
                         levels=2, warmup_epochs=2, max_epochs=8, lr=0.001)  # fmt: skip
    assert result.config.plateau_patience == 1
    reasons = [level.stop_reason for level in result.levels[1:]]
    assert "plateau" in reasons, reasons
    # patience 1: each plateau level stopped on the first epoch that did not improve.
    assert all(level.epochs < 8 for level in result.levels[1:] if level.stop_reason == "plateau")
    assert "plateau" in result.table() and "stopped improving" in result.table()


def test_the_new_rule_checks_its_options_and_refuses_them_when_unused():
    with pytest.raises(incop.UserError, match=r"plateau_patience: 0 is not allowed; must be >= 1"):
        incop.config.resolve({"stop": "plateau", "plateau_patience": 0})
    with pytest.raises(
        incop.UserError, match=r"plateau_patience: 5 would be ignored: only stop plateau"
    ):
        incop.config.resolve({"method": "sap", "plateau_patience": 5})


def test_the_new_rule_is_in_the_cli_its_help_and_list(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    patience = text.split("--plateau-patience INT")[-1].split(" --", 1)[0]
    assert "stop after this many epochs without a better score" in patience
    assert "default: 3" in patience
    assert "plateau" in text.split("--stop STR")[-1].split(" --", 1)[0]
    assert main(["list"]) == 0
    assert "plateau_patience" in capsys.readouterr().out
    out = tmp_path / "run"
    flags = ["--method", "sap", "--stop", "plateau", "--plateau-patience", "1", "--levels", "1",
             "--warmup-epochs", "1", "--max-epochs", "4", "--out", str(out)]  # fmt: skip
    assert main(["run", *flags]) == 0
    saved = (out / "config.yaml").read_text()
    assert "stop: plateau" in saved and "plateau_patience: 1" in saved
    # A run of a built-in rule does not carry the outside rule's setting in its config.
    assert "plateau_patience" not in incop.config.to_yaml(incop.config.resolve({"method": "sap"}))


def test_a_pruner_that_needs_gradients_gets_them_through_the_training_hook(tiny_data):
    train, val = tiny_data
    result = incop.prune(_net(), train, val, method="sap", pruner="movement",
                         movement_rate=0.5, levels=2, warmup_epochs=2, max_epochs=2)  # fmt: skip
    assert [round(lv.remaining_fraction, 2) for lv in result.levels] == [1.0, 0.5, 0.25]
    # The scores used at each prune came from the hook: nonzero, and the masks kept the top.
    pruner = movement_pruner.MovementPruner(0.5)
    net = _net()
    incop.prune(net, train, val, method="sap", pruner=pruner, levels=1, warmup_epochs=2,
                max_epochs=1)  # fmt: skip
    batches = len(list(train))
    assert pruner.steps == batches * 3  # 2 warm-up epochs and 1 retraining epoch
    scores = pruner.used[0]
    assert all(s.abs().sum() > 0 for s in scores.values())
    masks = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    alive = sum(m.numel() for m in masks.values())
    expected = incop.methods.pruning.prune_scores(scores, masks, alive - round(0.5 * alive))
    for name in scores:
        assert torch.equal(net.get_parameter(name) != 0, expected[name]), name


def _example(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


def test_readme_pruner_example_is_the_built_in_magnitude_pruner(tiny_data):
    train, val = tiny_data
    namespace = {"model": _net(), "train": train, "val": val}
    exec(_example("pruner"), namespace)
    mine = namespace["result"]
    builtin = incop.prune(_net(), train, val, method="lth", rate=0.2, stop="fixed", levels=2)
    assert mine.config.pruner == "user:MyMagnitude"
    for name, mask in builtin.masks.items():
        assert torch.equal(mask, mine.masks[name]), name
    assert [lv.val_accuracy for lv in mine.levels] == [lv.val_accuracy for lv in builtin.levels]


class _FakeWandbRun:
    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


def test_readme_stop_and_callback_examples_run_and_resume(tiny_data, tmp_path):
    train, val = tiny_data
    fake = _FakeWandbRun()
    namespace = {"model": _net(), "train": train, "val": val,
                 "wandb": type("wandb", (), {"init": staticmethod(lambda **_: fake)})}  # fmt: skip
    exec("import incop\n" + _example("stop"), namespace)
    result = namespace["result"]
    assert result.config.stop == "user:ScorePlateau"
    assert {lv.stop_reason for lv in result.levels[1:]} <= {"plateau", "cap"}
    exec("import incop\n" + _example("callback"), namespace)
    assert fake.finished
    epochs = [entry for entry in fake.logged if "val_metric" in entry]
    levels = [entry for entry in fake.logged if "remaining" in entry]
    assert len(levels) == len(namespace["result"].levels)
    assert len(epochs) == sum(1 for _ in _records(namespace["result"]))

    # Resume with a user's rule: interrupted mid-run by a callback, taken up, the same result.
    rule_class = namespace["ScorePlateau"]
    whole = incop.prune(_net(), train, val, metric="loss", stop=rule_class(6, patience=1),
                        levels=3, out=str(tmp_path / "whole"))  # fmt: skip

    class Interrupt(incop.Callback):
        def on_epoch_end(self, record, state):
            if record["level"] == 2 and record["epoch"] == 1:
                raise KeyboardInterrupt

    out = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        incop.prune(_net(), train, val, metric="loss", stop=rule_class(6, patience=1),
                    levels=3, out=out, callbacks=[Interrupt()])  # fmt: skip
    again = incop.prune(_net(), train, val, metric="loss", stop=rule_class(6, patience=1),
                        levels=3, out=out, resume=True)  # fmt: skip
    assert [lv.epochs for lv in again.levels] == [lv.epochs for lv in whole.levels]
    assert [lv.val_loss for lv in again.levels] == [lv.val_loss for lv in whole.levels]
    assert _without_seconds(Path(out)) == _without_seconds(tmp_path / "whole")


def _records(result):
    return [None for lv in result.levels for _ in range(lv.epochs + (lv.level > 0))]


def _without_seconds(folder: Path, *also: str) -> list[dict]:
    """The epoch records of a run folder but their wall-clock times (and the keys ``also``)."""
    records = read_metrics(folder / "metrics.jsonl")
    return [
        {k: v for k, v in r.items() if not k.endswith("_seconds") and k not in also}
        for r in records
    ]


def test_a_callback_receives_every_epoch_record(tiny_data, tmp_path):
    train, val = tiny_data

    class Recorder(incop.Callback):
        def __init__(self):
            self.records, self.prunes, self.levels, self.summary = [], 0, [], None

        def on_epoch_end(self, record, state):
            assert isinstance(state, incop.RunState)
            self.records.append(dict(record))

        def on_prune(self, masks, state):
            self.prunes += 1

        def on_level_end(self, level, state):
            self.levels.append(level)

        def on_run_end(self, summary, state):
            self.summary = summary

    recorder = Recorder()
    out = tmp_path / "run"
    incop.prune(_net(), train, val, levels=2, warmup_epochs=2, max_epochs=3, out=str(out),
                callbacks=[recorder], finetune_epochs=1)  # fmt: skip
    assert recorder.records == read_metrics(out / "metrics.jsonl")
    assert recorder.prunes == 2
    assert recorder.levels == recorder.summary["levels"]


def test_objects_that_do_not_follow_the_protocols_are_refused_before_work(tiny_data, tmp_path):
    train, val = tiny_data
    with pytest.raises(incop.UserError, match="stop: object has no prepare, measure, decide"):
        incop.prune(_net(), train, val, stop=object(), out=str(tmp_path / "a"))
    with pytest.raises(incop.UserError, match="callbacks: int has none of the hooks"):
        incop.prune(_net(), train, val, callbacks=[3], out=str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_log_tensorboard_writes_event_files_tensorboard_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    flags = ["--method", "sap", "--levels", "2", "--warmup-epochs", "2", "--max-epochs", "2",
             "--log", "tensorboard,csv", "--out", str(out)]  # fmt: skip
    assert main(["run", *flags]) == 0
    records = read_metrics(out / "metrics.jsonl")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    accuracy = events.Scalars("epoch/val_accuracy")
    assert [e.value for e in accuracy] == pytest.approx([r["val_accuracy"] for r in records])
    assert [e.step for e in accuracy] == list(range(len(records)))
    assert [e.value for e in events.Scalars("level/remaining_fraction")][0] == 1.0
    assert any(tag.startswith("density/") for tag in tags)
    manifest = (out / "manifest.json").read_text()
    assert "tensorboard/events.out.tfevents." in manifest
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("level,epoch,phase") and len(rows) == 1 + len(records)


def test_log_needs_a_run_folder_and_a_known_logger(tiny_data):
    train, val = tiny_data
    with pytest.raises(incop.UserError, match="log: tensorboard writes into the run folder"):
        incop.prune(_net(), train, val, log=["tensorboard"])
    with pytest.raises(incop.UserError, match="log: unknown logger 'wandb'"):
        incop.prune(_net(), train, val, log=["wandb"])


def test_every_component_is_one_registry_lookup():
    config = incop.config.resolve({"method": "sap-mask"})
    assert type(config.build("stop")).__name__ == "MaskRule"
    assert config.options("stop").eps == config.eps
    assert config.section("training").lr == config.lr
    registered = [incop.STOPPING_RULES.get(name) for name in incop.STOPPING_RULES.names()]
    assert plateau_rule.Plateau in registered


PREVIOUS = Path(__file__).parent / "data" / "run-0.1.0-interrupted"


def test_a_run_folder_of_the_previous_version_resumes_and_its_config_reproduces_it(tmp_path):
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(PREVIOUS, cut)
    assert main(["run", "--resume", str(cut)]) == 0
    whole = tmp_path / "whole"
    assert main(["run", "--config", str(PREVIOUS / "config.yaml"), "--out", str(whole)]) == 0
    # The previous version's lines have no train_flops (counted since).
    assert _without_seconds(cut, "train_flops") == _without_seconds(whole, "train_flops")
    summary = json.loads((cut / "summary.json").read_text())
    assert [level["level"] for level in summary["levels"]] == [0, 1, 2, 3]
    before = (PREVIOUS / "metrics.jsonl").read_bytes()
    assert (cut / "metrics.jsonl").read_bytes().startswith(before)


def test_a_pruner_that_accumulates_resumes_with_its_state(tiny_data, tmp_path):
    train, val = tiny_data
    settings = {"method": "sap", "levels": 2, "warmup_epochs": 2, "max_epochs": 2}
    uninterrupted = movement_pruner.MovementPruner(0.5)
    whole = incop.prune(_net(), train, val, pruner=uninterrupted, out=str(tmp_path / "whole"),
                        **settings)  # fmt: skip

    class Interrupt(incop.Callback):
        def on_epoch_end(self, record, state):  # the state after epoch 1 holds its scores
            if record["level"] == 1 and record["epoch"] == 2:
                raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        incop.prune(_net(), train, val, pruner=movement_pruner.MovementPruner(0.5),
                    out=str(out), callbacks=[Interrupt()], **settings)  # fmt: skip
    fresh = movement_pruner.MovementPruner(0.5)
    again = incop.prune(_net(), train, val, pruner=fresh, out=str(out), resume=True, **settings)
    assert fresh.steps == uninterrupted.steps  # its saved count came back, and went on
    for name, score in uninterrupted.used[-1].items():  # level 2 pruned on the same scores
        assert torch.equal(score, fresh.used[-1][name]), name
    for name, mask in whole.masks.items():
        assert torch.equal(mask, again.masks[name]), name
    assert _without_seconds(out) == _without_seconds(tmp_path / "whole")


def test_a_comparison_gives_each_method_only_the_settings_it_uses():
    from incop.tools.compare import check_plan, method_config

    overrides = {"eps": 0.3, "levels": 2}
    assert method_config(overrides, "sap", 0).eps == incop.config.default_value("eps")
    assert method_config(overrides, "incop-gf", 0).eps == 0.3
    check_plan(["sap", "incop-gf"], [0], overrides)
    with pytest.raises(incop.UserError, match="eps: would be ignored: no method of the plan"):
        check_plan(["sap", "lth"], [0], overrides)
