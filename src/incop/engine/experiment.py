"""From a config to a finished run: load the data, build the model, drive the IMP loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from incop.config import Config
from incop.core.batches import eval_batch
from incop.core.world import World
from incop.engine.distributed import current_world
from incop.engine.imp import IMP, resolve_device
from incop.engine.outputs import run_writer
from incop.engine.result import Result
from incop.errors import UserError
from incop.workload.data import Batches, Dataset, load_dataset, validation_split
from incop.workload.models import build_model


@dataclass(frozen=True)
class Splits:
    """The batches of a run, on its device: ``train`` (shuffled by the run's seed), ``val``
    (held out of the training split: every decision reads it) and ``test`` (the dataset's
    test split: evaluated and reported, never used to decide)."""

    train: Batches
    val: Batches
    test: Batches


def build_batches(
    config: Config, dataset: Dataset, model: nn.Module, world: World | None = None
) -> Splits:
    """``val_fraction`` of the training split, stratified by class and drawn with
    ``split_seed`` (not the run's seed: every method and seed of a comparison sees the same
    validation set), becomes the validation split; the rest trains, or ``train_fraction``
    of each of its classes (also drawn with ``split_seed``). In a data-parallel ``world``
    each rank takes its part of every batch. Validation and test batches are
    ``eval_batch_size`` (``auto``: chosen for ``model``)."""
    world = world or World()
    if config.batch_size < world.size:
        raise UserError(
            f"batch_size: {config.batch_size} is the global batch, split over {world.size}"
            f" ranks; allowed: at least {world.size}"
        )
    device = world.device(resolve_device(config.device))
    eval_size = eval_batch(config.eval_batch_size, model)
    train_idx, val_idx = validation_split(dataset.train_y, config.val_fraction, config.split_seed)
    if config.train_fraction < 1:
        _, kept = validation_split(
            dataset.train_y[train_idx], config.train_fraction, config.split_seed
        )
        train_idx = train_idx[kept]
    pixels, normalize = dataset.train_pixels, dataset.normalize
    train = Batches(
        pixels[train_idx],
        dataset.train_y[train_idx],
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        device=device,
        shard=world.shard,
        even=True,
        normalize=normalize,
    )
    val = Batches(
        pixels[val_idx],
        dataset.train_y[val_idx],
        eval_size,
        device=device,
        shard=world.shard,
        normalize=normalize,
    )
    test = Batches(
        dataset.test_pixels,
        dataset.test_y,
        eval_size,
        device=device,
        shard=world.shard,
        normalize=normalize,
    )
    return Splits(train, val, test)


def run_experiment(config: Config, *, progress: bool = False, mode: str = "new") -> Result:
    """Run ``config`` end to end, writing the run folder ``config.out`` (if set).

    ``mode`` (for the folder): ``new``, ``overwrite`` or ``resume`` (go on from the
    last completed epoch saved there; ``config`` must be the saved one).
    """
    world = current_world()
    writer = run_writer(config.out, mode=mode, main=world.is_main)
    dataset = load_dataset(config.dataset, config.data_dir, config.download)
    info = dataset.info
    # The seed fixes the initial weights too, so a run is reproducible from its config alone.
    torch.manual_seed(config.seed)
    model = build_model(config.model, info.channels, info.image_size, info.num_classes)
    splits = build_batches(config, dataset, model, world)
    # The splits hold their own copies: the whole dataset need not stay alive beside them.
    del dataset
    imp = IMP(
        config,
        model,
        splits.train,
        splits.val,
        test_data=splits.test,
        writer=writer,
        progress=progress,
        world=world,
    )
    return imp.run(resume=mode == "resume")
