"""Per-slice fixed-point cache: each training slice warm-starts its forward solve from its last fixed point.

As in the deep-equilibrium literature, the forward iteration of a slice starts from the fixed point found the
last time that slice was trained on instead of the CG-SENSE image. The weights moved since, so it is only a
start: the solve still runs to the same tolerance and reaches the same (unique, for a contraction) fixed point —
the learned fixed point is not changed, only the iterations to reach it. MOL-LR can keep its adversarial
Lipschitz point per slice here as well (``"lip_v"``), so that the estimate continues the ascent of the last
epoch instead of starting afresh.

Exactness. The cache is part of the training state: :meth:`FixedPointCache.state_dict` goes into every
checkpoint and a resumed run warm-starts exactly as the uninterrupted one. Under distributed training every
rank's new entries are all-gathered at each store, so all ranks hold the same global cache whatever slices they
trained on (rank 0's copy, in the checkpoint, is the whole of it; a run resumes on any world size).

Entries are keyed by the slice's position in the training set (:class:`IndexedDataset` adds it to every item as
``"index"``) and kept on the CPU, so device memory does not grow with the data set. The key
:data:`SHARED_SLOT` (-1, no slice's) holds vectors shared across slices: the last Jacobian power-iteration
vector of MOL-LR, which starts a slice's first estimate, and the vectors that belong to no slice (MOL-LR's
power iteration at x = 0). :meth:`FixedPointCache.penalty_points` and :meth:`~FixedPointCache.store_penalty_points`
hand a constraint's penalty its vectors and keep the new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from ..errors import CheckpointError

#: the cache key of entries that belong to no slice
SHARED_SLOT = -1


class IndexedDataset(Dataset):
    """``dataset`` with the item's position added as ``item["index"]`` (the cache's key)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "index": int(i)}


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class FixedPointCache:
    """``{slice index: {name: tensor}}`` with warm starts for a batch (see the module docstring)."""

    VERSION = 1

    def __init__(self) -> None:
        self.entries: dict[int, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, keys: Sequence[int], name: str, shape: Sequence[int], device: torch.device | str,
            default: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """The batch's cached ``name`` stacked ``[B, *shape]``, or ``None`` when no slice of the batch has one.

        When only some slices have an entry, the others take their rows of ``default()`` (e.g. the CG-SENSE
        image); without ``default`` a partial hit counts as a miss.
        """
        shape = tuple(int(s) for s in shape)
        found = [self.entries.get(int(k), {}).get(name) for k in keys]
        hit = [t is not None and tuple(t.shape) == shape for t in found]
        self.hits += sum(hit)
        self.misses += len(hit) - sum(hit)
        if not any(hit) or (not all(hit) and default is None):
            return None
        if all(hit):
            return torch.stack([t for t in found]).to(device)  # type: ignore[misc]
        out = default().detach().clone()  # type: ignore[misc]
        for i, (h, t) in enumerate(zip(hit, found)):
            if h:
                out[i] = t.to(out)  # type: ignore[union-attr]
        return out

    def put(self, keys: Sequence[int], name: str, values: torch.Tensor) -> None:
        """Store ``values[i]`` for slice ``keys[i]``; under distributed training, every rank's batch."""
        pairs: list[tuple[list[int], torch.Tensor]] = [([int(k) for k in keys], values.detach().cpu())]
        if _world() > 1:
            gathered: list[Any] = [None] * _world()
            dist.all_gather_object(gathered, pairs[0])
            pairs = gathered
        for ks, vs in pairs:
            for k, v in zip(ks, vs):
                self.entries.setdefault(k, {})[name] = v.clone()

    def penalty_points(self, strategy: Any, keys: Sequence[int], spatial_shape: Sequence[int],
                       device: torch.device | str) -> dict[str, torch.Tensor | None] | None:
        """The vectors a constraint ``strategy``'s penalty continues from, for this batch (``None``: it keeps
        none). Per slice for ``strategy.warm_keys()`` (the shared slot on a slice's first visit for those of
        ``shared_warm_keys()``), and the shared slot's one vector for ``global_warm_keys()``."""
        per_slice, shared, single = strategy.warm_keys(), strategy.shared_warm_keys(), strategy.global_warm_keys()
        if not (per_slice or single):
            return None
        shapes = {k: strategy.warm_shape(k, tuple(spatial_shape)) for k in per_slice + single}
        points = {k: self.get(keys, k, shapes[k], device) for k in per_slice}
        for k in shared:
            if points[k] is None:
                points[k] = self.get([SHARED_SLOT] * len(keys), k, shapes[k], device)
        for k in single:
            points[k] = self.get([SHARED_SLOT], k, shapes[k], device)
        return points

    def store_penalty_points(self, strategy: Any, keys: Sequence[int], points: dict[str, torch.Tensor]) -> None:
        """Keep the penalty's new vectors: per slice, and the last of the batch in the shared slot for the
        strategy's shared keys; its slice-free vectors in the shared slot only."""
        shared, single = strategy.shared_warm_keys(), strategy.global_warm_keys()
        for k, point in points.items():
            if k in single:
                self.put([SHARED_SLOT], k, point)
                continue
            self.put(keys, k, point)
            if k in shared:
                self.put([SHARED_SLOT], k, point[-1:])

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "entries": {k: dict(v) for k, v in self.entries.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != self.VERSION:
            raise CheckpointError("fixed-point cache in the checkpoint has an unknown layout")
        self.entries = {int(k): {n: t.cpu() for n, t in v.items()} for k, v in state["entries"].items()}


__all__ = ["FixedPointCache", "IndexedDataset"]
