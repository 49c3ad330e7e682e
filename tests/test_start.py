"""A fast start (issue 28): the command line answers --help, list and every refusal of bad input
without importing torch (the optimisers' part, no torch._dynamo: test_optimizers.py)."""

from __future__ import annotations

import pytest
import torch

import incop
from helpers import fresh_python
from incop.config import resolve
from incop.config.sections import FLOAT_MAX


def _cli(argv: list[str]) -> dict:
    """The exit status of ``incop argv``, what it wrote to stderr, and the modules it imported."""
    return fresh_python(f"""
        import contextlib, io, json, sys
        from incop.tools.cli import main
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main({argv!r})
            except SystemExit as exit:
                rc = exit.code
        loaded = [m for m in ("torch", "numpy", "matplotlib") if m in sys.modules]
        print(json.dumps({{"rc": rc, "out": out.getvalue(), "err": err.getvalue(),
                           "loaded": loaded}}))
    """)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--lr", "-1"], "lr: -1.0 is not allowed"),
        (["run", "--model", "lenet"], "did you mean 'lenet5'"),
        (["run", "--log", "nope"], "unknown logger 'nope'"),
        (["run", "--stop", "gf-plateau", "--plateau-tol", "-1"], "plateau_tol"),
        (["run", "--pruner", "tas", "--flop-ratio", "2"], "flop_ratio"),
        (["compare", "--methods", "sap,nope"], "unknown method 'nope'"),
        (["compare", "--methods", "sap", "--sweep", "eps=1,2"], "no chosen method"),
        (["export", "run", "--format", "nope", "--out", "x"], "unknown export format"),
        (["report", "/no/such/folder"], "not a comparison folder"),
        (["limit", "/no/such/folder", "--density", "nope"], "density: unknown 'nope'"),
    ],
)
def test_a_refusal_of_bad_input_imports_no_torch(argv: list[str], message: str) -> None:
    answer = _cli(argv)
    assert answer["rc"] == 2, answer
    assert message in answer["err"]
    assert answer["loaded"] == []


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["compare", "--help"], ["list"]])
def test_help_and_list_import_no_torch(argv: list[str]) -> None:
    answer = _cli(argv)
    assert answer["rc"] == 0, answer
    assert answer["loaded"] == []
    if argv == ["list"]:
        # Every registry is filled, the loggers' too (they live in the engine, a layer above).
        for name in ("sap", "incop-gf", "lenet5", "fashion-mnist", "csv", "tensorboard", "onnx"):
            assert name in answer["out"]


def test_a_good_config_is_checked_without_torch_and_its_loggers_are_known() -> None:
    answer = fresh_python("""
        import json, sys
        from incop.config import resolve
        config = resolve({"log": ["csv", "tensorboard"], "method": "incop-gf", "model": "resnet20",
                          "pruner": "sap", "stop": "mask-gf"})
        print(json.dumps({"log": config.log, "torch": "torch" in sys.modules}))
    """)
    assert answer == {"log": ["csv", "tensorboard"], "torch": False}


def test_import_incop_is_lazy_and_every_public_name_resolves() -> None:
    answer = fresh_python("""
        import json, sys
        import incop
        before = "torch" in sys.modules
        names = {name: type(getattr(incop, name)).__name__ for name in incop.__all__}
        print(json.dumps({"before": before, "after": "torch" in sys.modules,
                          "dir": sorted(set(incop.__all__) - set(dir(incop)))}))
    """)
    assert answer == {"before": False, "after": True, "dir": []}
    assert set(incop.__all__) == {"__version__", *incop._WHERE}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = incop.nope


def test_float_max_is_float32s_largest_finite_value() -> None:
    assert FLOAT_MAX == float(torch.finfo(torch.float32).max)
    with pytest.raises(incop.UserError, match="float32's range"):
        resolve({"lr": 1e39})
