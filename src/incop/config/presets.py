"""Named settings for whole experiments (``--preset``)."""

from __future__ import annotations

from typing import Any

from incop.core.registry import Registry

#: Named settings for whole experiments (``--preset``): the published protocol (METHOD.md
#: section 7) for each network and dataset of the paper, for users with a GPU, and one sized
#: for a 2-core CPU. They sit above the method's preset and below the user's file and flags.
PRESETS: Registry[dict[str, Any]] = Registry("preset")
_PAPER = {
    "optimizer": "sgd",
    "lr": 0.01,
    "weight_decay": 5e-4,
    "batch_size": 64,
    "warmup_epochs": 10,
    "levels": 15,
    "max_epochs": 20,
    # The same final fine-tune for every method, so early stopping is not penalised at the
    # sparsest level: E epochs, as a level of the fixed schedule.
    "finetune_epochs": 20,
    "p": 0.5,
    "q": 1.0,
    "rewind": "dense",
}
for _model in ("vgg16", "resnet18", "resnet50"):
    for _dataset in ("mnist", "fashion-mnist", "cifar10"):
        PRESETS.register(f"paper-{_model}-{_dataset}")(
            {**_PAPER, "model": _model, "dataset": _dataset}
        )
PRESETS.register("cpu-small")(
    {
        **_PAPER,
        "model": "lenet5",
        "dataset": "fashion-mnist",
        "warmup_epochs": 5,
        "levels": 5,
        "max_epochs": 5,
        "finetune_epochs": 5,
    }
)
