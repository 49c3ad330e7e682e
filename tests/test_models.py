import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from incop.errors import UserError
from incop.workload.models import MODELS, build_model

#: Models that must run on the default ``digits`` dataset (1x8x8).
SMALL_INPUT_MODELS = ["mlp", "lenet5", "conv4", "conv6", "resnet20", "resnet18"]
RESNETS = ["resnet18", "resnet50", "resnet20"]

CASES = [(name, 1, 28) for name in MODELS.names()]
CASES += [(name, 3, 32) for name in MODELS.names()]
CASES += [(name, 1, 8) for name in SMALL_INPUT_MODELS]


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_builds_and_trains(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels, size, 10)
    assert model.training
    x = torch.randn(2, channels, size, size)
    y = torch.tensor([3, 7])
    before = {key: value.detach().clone() for key, value in model.named_parameters()}

    logits = model(x)
    assert logits.shape == (2, 10)
    loss = F.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()

    weights = [
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    assert weights
    for key in weights:
        assert not torch.equal(before[key], model.get_parameter(key)), f"{key} did not change"


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        build_model("resnet19", 3, 32, 10)
    message = str(info.value)
    assert "resnet19" in message
    for name in MODELS.names():
        assert name in message


def test_too_small_input_fails_at_build_time() -> None:
    with pytest.raises(UserError, match=r"'lenet5'.*\(2, 1, 2, 2\)"):
        build_model("lenet5", 1, 2, 10)


def test_lenet5_pads_second_conv_only_for_small_inputs() -> None:
    def paddings(size: int) -> list[tuple[int, ...]]:
        model = build_model("lenet5", 1, size, 10)
        return [m.padding for m in model.modules() if isinstance(m, nn.Conv2d)]

    assert paddings(8) == [(2, 2), (2, 2)]
    assert paddings(28) == [(2, 2), (0, 0)]


@pytest.mark.parametrize(("channels", "size", "num_classes"), [(0, 8, 10), (1, 0, 10), (1, 8, 0)])
def test_nonpositive_sizes_are_user_errors(channels: int, size: int, num_classes: int) -> None:
    with pytest.raises(UserError, match=">= 1"):
        build_model("mlp", channels, size, num_classes)


def test_torchvision_model_needs_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(UserError, match="needs torchvision"):
        build_model("torchvision:resnet18", 3, 32, 10)


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_projection_shortcuts_are_named_downsample(name: str) -> None:
    model = build_model(name, 3, 8, 10).eval()
    blocks = {key: module for key, module in model.named_modules() if hasattr(module, "downsample")}
    changes_shape: dict[nn.Module, bool] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        changes_shape[module] = inputs[0].shape != output.shape

    for block in blocks.values():
        block.register_forward_hook(record)
    with torch.no_grad():
        model(torch.zeros(2, 3, 8, 8))

    assert len(changes_shape) == len(blocks) and any(changes_shape.values())
    for block_name, block in blocks.items():
        if changes_shape[block]:
            assert block.downsample is not None, block_name
            assert isinstance(block.downsample[0], nn.Conv2d)
            assert block.downsample[0].kernel_size == (1, 1)
            assert f"{block_name}.downsample.0.weight" in dict(model.named_parameters())
        else:
            assert block.downsample is None, block_name


def test_lenet5_pools_before_relu_computing_the_classic_function_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 28, 10)
    f = model.features
    convs = [f[0], f[3]]

    def classic(x):  # conv, ReLU, pool, as LeNet-5 is usually written
        for conv in convs:
            x = F.max_pool2d(torch.relu(conv(x)), 2)
        return model.classifier(x.flatten(1))

    x = torch.randn(8, 1, 28, 28)
    ours = model(x)
    assert torch.equal(ours, classic(x))
    grads = torch.autograd.grad(ours.square().sum(), [c.weight for c in convs])
    expected = torch.autograd.grad(classic(x).square().sum(), [c.weight for c in convs])
    assert all(torch.equal(a, b) for a, b in zip(grads, expected, strict=True))
