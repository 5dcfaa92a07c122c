"""What the trainer reads and in which order: the datasets of a config, the resumable batch order and the seeds.

The batch order comes from :class:`ResumableSampler`, a permutation drawn from a generator seeded by
``(seed, epoch)``, so that a position inside an epoch is fully described by the global samples consumed; see
:mod:`molrecon.train.trainer` for how a run resumes bitwise from it.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, Subset

from .. import data as mdata
from ..data.synthetic import SyntheticSliceDataset
from ..errors import InputError
from ..names import DIMS_OF_KIND, KIND_ALIASES, NONCARTESIAN_KINDS
from ..physics import mask_for

# every accepted spelling of data.kind -> the dimensionality of its CNN
DIMS_OF_KIND_ALIAS = {alias: DIMS_OF_KIND[kind] for alias, kind in KIND_ALIASES.items()}


class ResumableSampler(Sampler[int]):
    """Per-epoch shuffled indices, reproducible from ``(seed, epoch)`` and able to start mid-epoch.

    With ``world_size > 1`` each rank gets the slice ``perm[rank::world_size]`` of a permutation padded to a
    multiple of ``world_size`` (as ``DistributedSampler`` does), so the same class serves DDP.

    ``skip`` counts *global* positions of the permutation already consumed (by all ranks together): rank ``r``
    then gets ``perm[skip:][r::world_size]`` (the remainder padded to a multiple of ``world_size``). This makes
    the position independent of the world size: ``skip`` samples consumed by ``W`` ranks are resumed by ``W'``.
    On one process ``skip`` is simply the number of indices to skip.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_samples < 1:
            raise InputError("the training set is empty")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``skip`` global positions (already consumed)."""
        if skip < 0:
            raise InputError(f"ResumableSampler: skip must be >= 0, got {skip}")
        self.epoch, self.skip = int(epoch), int(skip)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            perm = list(range(self.num_samples))
        rest = perm[self.skip:]
        if not rest:
            return []
        per_rank = math.ceil(len(rest) / self.world_size)
        # pad by repeating the epoch's permutation from its start (as DistributedSampler does)
        pad = per_rank * self.world_size - len(rest)
        rest = rest + (perm * math.ceil(pad / len(perm) + 1))[:pad]
        return rest[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return math.ceil(max(0, self.num_samples - self.skip) / self.world_size)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_datasets(data_cfg: dict[str, Any], seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """The training and validation datasets described by the ``data`` section of a config."""
    source = data_cfg["source"]
    if source == "synthetic":
        common = dict(shape=data_cfg["shape"], num_coils=data_cfg["num_coils"],
                      acceleration=data_cfg["acceleration"], center_fraction=data_cfg["center_fraction"])
        train = SyntheticSliceDataset(num=data_cfg["num_train"], seed=seed, **common)
        val = SyntheticSliceDataset(num=data_cfg["num_val"], seed=seed + 7919, **common) \
            if data_cfg["num_val"] else None
    else:
        kind = data_cfg["kind"]
        dims = DIMS_OF_KIND_ALIAS.get(kind)
        if dims is None:
            raise InputError(f"data.kind must be one of {', '.join(DIMS_OF_KIND)}, got {kind!r}")
        if KIND_ALIASES[kind] in NONCARTESIAN_KINDS:
            sampling = {} if data_cfg["spokes"] is None else {"spokes": data_cfg["spokes"]}
        else:
            sampling = {"mask_func": mask_for(dims, data_cfg["acceleration"], data_cfg["center_fraction"],
                                              kind=data_cfg["mask"])}
        if source == "builtin":
            train = mdata.builtin_dataset(kind=kind, split="train", root=data_cfg["root"], **sampling)
            val = mdata.builtin_dataset(kind=kind, split="val", root=data_cfg["root"], **sampling)
        elif KIND_ALIASES[kind] in NONCARTESIAN_KINDS:
            train = mdata.RadialDataset(data_cfg["train_path"], **sampling)
            val = mdata.RadialDataset(data_cfg["val_path"], **sampling) if data_cfg["val_path"] else None
        else:
            mask_func = sampling["mask_func"]
            train = mdata.SliceDataset(data_cfg["train_path"], mask_func=mask_func)
            val = mdata.SliceDataset(data_cfg["val_path"], mask_func=mask_func) if data_cfg["val_path"] else None
    if data_cfg["limit_train"] is not None and len(train) > data_cfg["limit_train"]:
        train = Subset(train, range(data_cfg["limit_train"]))
    if val is not None and data_cfg["limit_val"] is not None and len(val) > data_cfg["limit_val"]:
        val = Subset(val, range(data_cfg["limit_val"]))
    if len(train) == 0:
        raise InputError("the training set is empty (check data.root / data.limit_train)")
    return train, val


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic`` ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few kernels (e.g. some CUDA scatter ops) have no deterministic version; warn, don't fail.
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic kernels only read what they wrote. torch's default here also fills every fresh allocation
        # with NaN (a check for reads of uninitialised memory), which took 5-7 % of a MOL training step on CPU:
        # most of it in the FFTs' output buffers of the CG steps.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
