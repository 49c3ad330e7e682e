"""From a config to a finished run: load the data, build the model, drive the IMP loop."""

from __future__ import annotations

import torch

from incop.config import Config
from incop.data import Batches, Dataset, load_dataset
from incop.imp import IMP, Result, resolve_device
from incop.models import build_model
from incop.outputs import RunWriter


def build_batches(config: Config, dataset: Dataset) -> tuple[Batches, Batches]:
    """Shuffled training batches and held-out (test split) evaluation batches, on the device."""
    device = resolve_device(config.device)
    train = Batches(
        dataset.train_x,
        dataset.train_y,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        device=device,
    )
    val = Batches(dataset.test_x, dataset.test_y, config.eval_batch_size, device=device)
    return train, val


def run_experiment(config: Config, *, progress: bool = False, mode: str = "new") -> Result:
    """Run ``config`` end to end, writing the run folder ``config.out`` (if set).

    ``mode`` (for the folder): ``new``, ``overwrite`` or ``resume`` (go on from the
    last completed epoch saved there; ``config`` must be the saved one).
    """
    writer = RunWriter(config.out, mode=mode) if config.out else None
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    info = dataset.info
    # The seed fixes the initial weights too, so a run is reproducible from its config alone.
    torch.manual_seed(config.seed)
    model = build_model(config.model, info.channels, info.image_size, info.num_classes)
    train, val = build_batches(config, dataset)
    imp = IMP(config, model, train, val, writer=writer, progress=progress)
    return imp.run(resume=mode == "resume")
