"""The optimisers (issue 28): torch's own update, bit for bit, without the torch._dynamo import
(1.9 s) that torch's classes make on their first construction and step."""

from __future__ import annotations

import pytest
import torch

from helpers import fresh_python
from incop.core.optimizers import eager, make_optimizer


def test_a_run_never_imports_dynamo_unless_it_compiles(tmp_path) -> None:
    answer = fresh_python(f"""
        import json, sys
        from incop.config import resolve
        from incop.engine.experiment import run_experiment
        for i, extra in enumerate([{{"model": "lenet5", "precision": "bf16", "schedule": "cosine"}},
                                   {{"model": "mlp", "optimizer": "adam", "method": "incop-gf"}},
                                   {{"model": "lenet5", "method": "tas", "tas_epochs": 1}}]):
            config = resolve({{"dataset": "digits", "levels": 1, "warmup_epochs": 1,
                              "max_epochs": 1, "out": "{tmp_path}/run%d" % i, **extra}})
            run_experiment(config, mode="new")
        print(json.dumps({{"dynamo": "torch._dynamo" in sys.modules}}))
    """)
    assert answer == {"dynamo": False}


def _train(optimizer_of, steps: int = 5) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    optimizer = optimizer_of(net.parameters())
    for step in range(steps):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()], optimizer.state_dict()


@pytest.mark.parametrize("fused", [True, None])
@pytest.mark.parametrize(
    ("base", "options"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.0}),
        (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-4}),
    ],
)
def test_the_eager_optimisers_update_bit_for_bit_as_torchs(base, options, fused) -> None:
    theirs, their_state = _train(lambda p: base(p, **options, fused=fused))
    ours, our_state = _train(lambda p: eager(base)(p, **options, fused=fused))
    for a, b in zip(theirs, ours, strict=True):
        assert torch.equal(a, b)
    assert our_state["param_groups"] == their_state["param_groups"]
    for key, value in their_state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(our_state["state"][key][name], tensor)
    assert isinstance(eager(base)([torch.nn.Parameter(torch.zeros(2))], lr=0.1), base)


def test_an_eager_optimiser_resumes_from_torchs_state() -> None:
    net = torch.nn.Linear(3, 2)
    theirs = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(4, 3)).sum().backward()
    theirs.step()
    ours = make_optimizer(net.parameters(), "sgd", lr=0.1, momentum=0.9)
    ours.load_state_dict(theirs.state_dict())
    buffers = [ours.state[p]["momentum_buffer"] for p in net.parameters()]
    assert all(torch.equal(b, theirs.state[p]["momentum_buffer"])
               for b, p in zip(buffers, net.parameters(), strict=True))  # fmt: skip
