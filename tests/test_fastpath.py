"""The fast path changes how the model trains, not what it finds: channels_last, compile."""

import pytest
import torch

from incop import UserError, prune
from incop.workload.data import Batches
from incop.workload.models import build_model

CHANNELS_LAST = torch.channels_last


def images(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    # Each class lights up its own quadrant: learnable in a few epochs.
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    for cls in range(4):
        rows, cols = divmod(cls, 2)
        x[y == cls, :, rows * 4 : rows * 4 + 4, cols * 4 : cols * 4 + 4] += 2.0
    return x, y


def pruned_lenet5(**options):
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 8, 4)
    x, y = images()
    train = Batches(x[:192], y[:192], 32, shuffle=True)
    val = Batches(x[192:], y[192:], 64)
    result = prune(
        model, train, val, method="sap", levels=2, warmup_epochs=3, max_epochs=2, lr=0.05, **options
    )
    return model, result


def test_conv_models_train_channels_last_by_default_and_find_the_same_ticket():
    fast, a = pruned_lenet5()
    plain, b = pruned_lenet5(channels_last=False)
    conv = next(name for name in a.masks if a.masks[name].dim() == 4)
    assert fast.get_parameter(conv).is_contiguous(memory_format=CHANNELS_LAST)
    assert plain.get_parameter(conv).is_contiguous()
    for name, mask in a.masks.items():
        assert mask.is_contiguous()
        weight = fast.get_parameter(name)
        assert torch.all(weight[~mask] == 0)
    agree = sum(int((a.masks[k] == b.masks[k]).sum()) for k in a.masks)
    assert agree / sum(m.numel() for m in a.masks.values()) > 0.99
    assert [lv.remaining_fraction for lv in a.levels] == [lv.remaining_fraction for lv in b.levels]
    assert a.levels[-1].val_accuracy > 0.9


def test_channels_last_on_a_model_without_convolutions_is_refused():
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    data = Batches(x, y, 16)
    model = torch.nn.Sequential(torch.nn.Linear(10, 3))
    with pytest.raises(UserError, match="channels_last: true would do nothing"):
        prune(model, data, data, method="sap", levels=1, channels_last=True)


@pytest.mark.slow
def test_a_compiled_model_finds_the_ticket_the_plain_one_finds():
    model, compiled = pruned_lenet5(compile=True)
    _, plain = pruned_lenet5()
    for name, mask in compiled.masks.items():
        assert torch.all(model.get_parameter(name)[~mask] == 0)
    agree = sum(int((compiled.masks[k] == plain.masks[k]).sum()) for k in plain.masks)
    assert agree / sum(m.numel() for m in plain.masks.values()) > 0.99
    for a, b in zip(compiled.levels, plain.levels, strict=True):
        assert abs(a.val_accuracy - b.val_accuracy) <= 0.02
