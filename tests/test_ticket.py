"""The ticket outside incop (issue 11): masks kept in the user's loop, load, export."""

import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import incop
from helpers import TinyNet, blobs
from incop.errors import UserError
from incop.methods.pruners import MagnitudePruner
from incop.tools.cli import main
from incop.tools.ticket.compact import compact
from incop.tools.ticket.formats import FORMATS
from incop.workload.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def random_masks(model, keep, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(p.shape, generator=g) < keep
        for name, p in model.named_parameters()
        if name.endswith("weight") and p.dim() > 1
    }


def train(model, optimizer, steps, seed=0):
    x, y = blobs(256, seed=seed)
    for step in range(steps):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=5e-4),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("give_optimizer", [True, False])
def test_apply_masks_keeps_pruned_weights_zero_through_200_steps(name, give_optimizer):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = OPTIMIZERS[name](model.parameters())
    masks = random_masks(model, keep=0.3)
    handle = incop.apply_masks(model, masks, optimizer if give_optimizer else None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, optimizer, 200)
    for n, p in model.named_parameters():
        if n in masks:
            assert torch.all(p[~masks[n]] == 0), n
            assert not torch.equal(p[masks[n]], before[n][masks[n]]), n  # alive ones trained
    handle.remove()
    train(model, optimizer, 20, seed=1)
    revived = sum(int((p[~masks[n]] != 0).sum()) for n, p in model.named_parameters() if n in masks)
    assert revived > 0


def test_apply_masks_with_the_optimizer_clears_state_built_before_pruning():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = OPTIMIZERS["sgd"](model.parameters())
    train(model, optimizer, 20)  # momentum of every weight is non-zero now
    masks = random_masks(model, keep=0.5)
    incop.apply_masks(model, masks, optimizer)
    train(model, optimizer, 50)
    assert all(torch.all(p[~masks[n]] == 0) for n, p in model.named_parameters() if n in masks)


def test_apply_masks_refuses_masks_that_do_not_fit():
    model = TinyNet()
    masks = random_masks(model, keep=0.5)
    masks["hidden.weight"] = masks["hidden.weight"][:, :3]
    masks["nosuch.weight"] = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(UserError, match=r"(?s)nosuch\.weight.*names no parameter") as err:
        incop.apply_masks(model, masks)
    assert "'hidden.weight' has shape (32, 3)" in str(err.value)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ticket") / "run"
    code = main(
        ["run", "--method", "sap", "--levels", "2", "--warmup-epochs", "1", "--max-epochs", "1",
         "--finetune-epochs", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


IMAGES = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("level", [None, 1])
def test_load_ticket_from_run_folder_and_checkpoint(run_dir, level):
    model, masks = incop.load_ticket(run_dir, level=level)
    where = "final" if level is None else "levels/1"
    saved = torch.load(run_dir / where / "checkpoint.pt", weights_only=True)
    assert masks.keys() == saved["masks"].keys()
    assert all(torch.equal(masks[n], saved["masks"][n]) for n in masks)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["state_dict"].items())
    same, _ = incop.load_ticket(run_dir / where / "checkpoint.pt")
    assert torch.equal(outputs(same, IMAGES), outputs(model, IMAGES))


def test_load_ticket_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(UserError, match="level 7 is not in .*its levels: 0, 1, 2"):
        incop.load_ticket(run_dir, level=7)
    (tmp_path / "junk.pt").write_bytes(b"not a ticket")
    with pytest.raises(UserError, match="junk.pt: not a ticket incop can read"):
        incop.load_ticket(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="does not fit the model"):
        incop.load_ticket(run_dir, TinyNet())


@pytest.mark.parametrize("fmt", ["state_dict", "torch-prune", "sparse"])
def test_export_round_trip_gives_the_same_outputs_and_masks(run_dir, tmp_path, fmt):
    ticket_model, ticket_masks = incop.load_ticket(run_dir)
    out = incop.export_ticket(run_dir, fmt, tmp_path / f"ticket.{fmt}")
    given = None if fmt == "sparse" else incop.load_ticket(run_dir)[0]  # sparse holds a config
    model, masks = incop.load_ticket(out, given)
    assert torch.equal(outputs(model, IMAGES), outputs(ticket_model, IMAGES))
    assert masks.keys() == ticket_masks.keys()
    assert all(torch.equal(masks[n], ticket_masks[n]) for n in masks)


# The mlp on 8x8 digits, written out so that the subprocess needs nothing from incop.
PLAIN_MLP = """
import sys, torch
from torch import nn
from torch.nn.utils import prune
sys.modules["incop"] = None  # any import of incop now fails
model = nn.Sequential()
model.add_module("flatten", nn.Flatten())
model.add_module("fc1", nn.Linear(64, 300)); model.add_module("relu1", nn.ReLU())
model.add_module("fc2", nn.Linear(300, 100)); model.add_module("relu2", nn.ReLU())
model.add_module("fc3", nn.Linear(100, 10))
"""
# The README's three lines.
TORCH_PRUNE_LOAD = """
state = torch.load(sys.argv[1])
for name in {key.rsplit(".", 1)[0] for key in state if key.endswith("weight_mask")}:
    prune.identity(model.get_submodule(name), "weight")
model.load_state_dict(state)
"""


@pytest.mark.parametrize("fmt", ["state_dict", "torch-prune"])
def test_export_loads_without_incop(run_dir, tmp_path, fmt):
    out = incop.export_ticket(run_dir, fmt, tmp_path / f"ticket.{fmt}")
    torch.save(IMAGES, tmp_path / "x.pt")
    load = (
        TORCH_PRUNE_LOAD
        if fmt == "torch-prune"
        else "model.load_state_dict(torch.load(sys.argv[1]))\n"
    )
    script = PLAIN_MLP + load + textwrap.dedent("""
        with torch.no_grad():
            torch.save(model.eval()(torch.load(sys.argv[2])), sys.argv[3])
        """)  # fmt: skip
    subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True,
    )
    model, _ = incop.load_ticket(run_dir)
    assert torch.equal(torch.load(tmp_path / "y.pt"), outputs(model, IMAGES))


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the onnx extra")
def test_onnx_export_folds_the_masks_and_computes_the_same_outputs(run_dir, tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    out = incop.export_ticket(run_dir, "onnx", tmp_path / "ticket.onnx")
    model, masks = incop.load_ticket(run_dir)
    graph = onnx.load(str(out))
    zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in graph.graph.initializer)
    assert zeros >= sum(int((~m).sum()) for m in masks.values())
    (got,) = ReferenceEvaluator(graph).run(None, {"input": IMAGES.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), outputs(model, IMAGES), atol=1e-5, rtol=0)
    back, back_masks = incop.load_ticket(out)  # the graph carries the run's config
    assert torch.equal(outputs(back, IMAGES), outputs(model, IMAGES))
    assert all(torch.equal(back_masks[n], masks[n]) for n in masks)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the onnx extra")
def test_onnx_of_a_batchnorm_model_is_refused_by_load_ticket_saying_why(tmp_path):
    _, _, out = export_channel_ticket(tmp_path, "resnet20", (3, 32, 32), "onnx")
    with pytest.raises(UserError, match="folds BatchNorm"):
        incop.load_ticket(out, build_model("resnet20", 3, 32, 10))


def test_onnx_without_its_extra_names_the_extra(run_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    with pytest.raises(UserError, match=r'pip install "incop\[onnx\]"'):
        incop.export_ticket(run_dir, "onnx", tmp_path / "t.onnx")
    assert not (tmp_path / "t.onnx").exists()


def test_sparse_file_at_10_percent_is_at_most_a_quarter_of_the_state_dict(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 28, 10)
    masks = random_masks(model, keep=0.1)
    incop.apply_masks(model, masks)
    torch.save({"state_dict": model.state_dict(), "masks": masks}, tmp_path / "checkpoint.pt")
    dense = incop.export_ticket(
        tmp_path / "checkpoint.pt", "state_dict", tmp_path / "d", model=model
    )
    sparse = incop.export_ticket(tmp_path / "checkpoint.pt", "sparse", tmp_path / "s", model=model)
    ratio = sparse.stat().st_size / dense.stat().st_size
    assert ratio <= 0.25, ratio
    back, back_masks = incop.load_ticket(sparse, build_model("lenet5", 1, 28, 10))
    assert all(torch.equal(back_masks[n], masks[n]) for n in masks)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(outputs(back, x), outputs(model, x))


def test_cli_export_writes_only_new_files(run_dir, tmp_path, capsys):
    target = tmp_path / "mine.pt"
    assert (
        main(["export", str(run_dir), "--format", "sparse", "--out", str(target), "--level", "1"])
        == 0
    )
    assert "sparse:" in capsys.readouterr().out
    _, masks = incop.load_ticket(target)
    _, level1 = incop.load_ticket(run_dir, level=1)
    assert all(torch.equal(masks[n], level1[n]) for n in masks)
    target.write_text("the user's own file")
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(target)]) == 2
    assert "exists" in capsys.readouterr().err
    assert target.read_text() == "the user's own file"
    assert main(["export", str(run_dir), "--format", "nosuch", "--out", str(tmp_path / "n")]) == 2
    assert sorted(FORMATS.names()) == sorted(
        ["state_dict", "torch-prune", "sparse", "compact", "onnx"]
    )


def channel_ticket(name, shape, rate=0.5, seed=0):
    """A built-in model with half its units (per layer) pruned, BatchNorm statistics set."""
    torch.manual_seed(seed)
    model = build_model(name, shape[0], shape[1], 10)
    with torch.no_grad():
        for _ in range(2):  # running statistics away from their initial 0 / 1
            model.train()(torch.randn(8, *shape))
    params = incop.prunable_parameters(model)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    masks = MagnitudePruner(rate=rate, scope="channel")(params, masks, torch.Generator())
    incop.apply_masks(model, masks)
    return model.eval(), masks


def export_channel_ticket(tmp_path, name, shape, fmt):
    """A channel ticket of a built-in model, saved as a checkpoint and exported: (model,
    masks, the exported file)."""
    model, masks = channel_ticket(name, shape)
    torch.save({"state_dict": model.state_dict(), "masks": masks}, tmp_path / "checkpoint.pt")
    out = incop.export_ticket(
        tmp_path / "checkpoint.pt",
        fmt,
        tmp_path / f"ticket.{fmt}",
        model=model,
        example_input=torch.zeros(1, *shape),
    )
    return model, masks, out


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, shape",
    [
        ("lenet5", (1, 28, 28)),
        ("resnet20", (3, 32, 32)),
        pytest.param("vgg11", (3, 32, 32), marks=pytest.mark.slow),
    ],
)
def test_compact_gives_the_same_outputs_with_fewer_parameters(name, shape):
    model, _ = channel_ticket(name, shape)
    result = compact(model, torch.zeros(1, *shape))
    assert count(result.model) < 0.9 * count(model)
    assert result.removed and all(n > 0 for n in result.removed.values())
    x = torch.randn(6, *shape)
    torch.testing.assert_close(outputs(result.model, x), outputs(model, x), atol=1e-5, rtol=1e-5)


def test_compact_folds_the_constant_of_a_dead_neuron_with_a_bias():
    torch.manual_seed(0)
    model = build_model("mlp", 1, 8, 10)
    with torch.no_grad():
        model.fc1.bias.fill_(0.5)  # a dead fc1 neuron still sends relu(0.5) to fc2
    masks = {"fc1.weight": torch.ones(300, 64, dtype=torch.bool)}
    masks["fc1.weight"][:100] = False
    incop.apply_masks(model, masks)
    result = compact(model, torch.zeros(1, 1, 8, 8))
    assert result.removed == {"fc1": 100}
    assert result.model.fc2.in_features == 200
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(outputs(result.model, x), outputs(model, x), atol=1e-5, rtol=1e-5)


def test_compact_keeps_dead_units_whose_constant_it_cannot_fold():
    # A dead conv filter with a positive bias feeds a padded conv: at the borders the padding
    # breaks the constant, so the filter must stay.
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[0].bias[1] = 1.0
        model[0].weight[2].zero_()
        model[0].bias[2] = -1.0  # relu(-1) = 0: this one can go
    result = compact(model, torch.zeros(1, 1, 6, 6))
    assert result.removed == {"0": 1}
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(outputs(result.model, x), outputs(model, x), atol=1e-6, rtol=0)


def test_compact_export_round_trip(tmp_path):
    model, _, out = export_channel_ticket(tmp_path, "lenet5", (1, 28, 28), "compact")
    small, small_masks = incop.load_ticket(out)
    assert count(small) < 0.5 * count(model)
    assert all(m.all() for m in small_masks.values())  # channel scope: alive units are whole
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():  # an exported program is fixed in eval mode: it has no .eval()
        got = small(x)
    torch.testing.assert_close(got, outputs(model, x), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="holds its own, smaller model"):
        incop.load_ticket(out, model)


def test_compact_without_torch_pruning_names_the_extra(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_pruning" else real(name, *a),
    )
    with pytest.raises(UserError, match=r'pip install "incop\[compact\]"'):
        incop.export_ticket(run_dir, "compact", tmp_path / "t.pt2")
    with pytest.raises(UserError, match=r'pip install "incop\[compact\]"'):
        compact(nn.Linear(2, 2), torch.zeros(1, 2))


@pytest.mark.parametrize("method", ["lth", "sap"])
def test_channel_scope_run_prunes_whole_units_and_compacts(tmp_path, method):
    out = tmp_path / "run"
    args = ["run", "--method", method, "--scope", "channel", "--model", "lenet5", "--levels", "2"]
    args += ["--warmup-epochs", "1", "--max-epochs", "1", "--out", str(out)]
    if method == "sap":
        args += ["--eta-r", "0.5"]  # enough units go at this small size
    assert main(args) == 0
    model, masks = incop.load_ticket(out)
    names = list(masks)
    assert masks[names[-1]].all()  # the classifier is never pruned
    dead = 0
    for name in names[:-1]:
        rows = masks[name].flatten(1)
        assert torch.equal(rows.all(dim=1), rows.any(dim=1)), name  # whole units only
        assert rows.any(dim=1).any(), name  # no layer emptied
        dead += int((~rows.any(dim=1)).sum())
    assert dead > 0
    small = compact(model.eval(), torch.zeros(1, 1, 8, 8)).model
    assert count(small) < count(model)
