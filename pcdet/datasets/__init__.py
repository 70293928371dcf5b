"""Datasets and the data loader factory (``build_dataloader``)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import DistributedSampler as _TorchDistributedSampler

from ..utils import common_utils
from .dataset import DatasetTemplate
from .kitti.kitti_dataset import KittiDataset
from .nuscenes.nuscenes_dataset import NuScenesDataset

# Registry: DATASET name in the config → class. A dict, as in OpenPCDet (``from pcdet.datasets import *`` still works).
__all__ = {
    "DatasetTemplate": DatasetTemplate,
    "KittiDataset": KittiDataset,
    "NuScenesDataset": NuScenesDataset,
}


class DistributedSampler(_TorchDistributedSampler):
    """Rank-strided sampler with an explicit shuffle switch (off for evaluation, so results keep info order).

    Indices are padded by repeating from the start so every rank gets the same count; the test script trims the
    gathered results back to ``len(dataset)``.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            indices = list(range(len(self.dataset)))
        while len(indices) < self.total_size:  # repeat (more than once if the dataset is tiny)
            indices += indices[: self.total_size - len(indices)]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def _seed_worker(worker_id: int, seed: int | None) -> None:
    if seed is not None:
        common_utils.worker_init_fn(worker_id, seed=seed)
    else:
        # torch seeds each worker differently, numpy not: without this, forked workers would all draw the same
        # augmentation parameters.
        np.random.seed(torch.initial_seed() % 2**32)


def build_dataloader(
    dataset_cfg,
    class_names,
    batch_size: int,
    dist: bool,
    root_path=None,
    workers: int = 4,
    seed: int | None = None,
    logger=None,
    training: bool = True,
    merge_all_iters_to_one_epoch: bool = False,
    total_epochs: int = 0,
):
    """Build ``(dataset, dataloader, sampler)``; ``sampler`` is None unless ``dist``."""
    if dataset_cfg.DATASET not in __all__:
        raise KeyError(f"unknown DATASET '{dataset_cfg.DATASET}' (known: {', '.join(__all__)})")
    dataset = __all__[dataset_cfg.DATASET](
        dataset_cfg=dataset_cfg, class_names=class_names, root_path=root_path, training=training, logger=logger
    )
    if merge_all_iters_to_one_epoch:
        if not hasattr(dataset, "merge_all_iters_to_one_epoch"):
            raise TypeError(f"{type(dataset).__name__} cannot merge all iterations into one epoch")
        dataset.merge_all_iters_to_one_epoch(merge=True, epochs=total_epochs)

    if dist:
        rank, world_size = common_utils.get_dist_info()
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=training)
    else:
        sampler = None
    dataloader = DataLoader(
        dataset,
        batch_size=batch_size,
        pin_memory=torch.cuda.is_available(),
        num_workers=workers,
        shuffle=(sampler is None) and training,
        collate_fn=dataset.collate_batch,
        drop_last=False,
        sampler=sampler,
        timeout=0,
        worker_init_fn=partial(_seed_worker, seed=seed),
    )
    return dataset, dataloader, sampler
