r"""Data-parallel training and batch reconstruction on ``torch.distributed`` (launched with ``torchrun``).

Nothing here is home-made: processes are started by ``torchrun`` (or any launcher that sets the standard
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables), the process group is
initialised with ``init_method="env://"`` and gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`.

Semantics
---------
* **Backend.** ``nccl`` when the training device is CUDA, ``gloo`` on CPU (chosen automatically).
  On CUDA each process uses ``cuda:LOCAL_RANK``.
* **Global batch.** Each of the :math:`W` ranks draws ``data.batch_size`` = :math:`b` slices per step, so the
  global batch is :math:`bW`. The loss of a rank is the mean over its :math:`b` slices and DDP averages the
  gradients over ranks, hence

  .. math:: \nabla = \frac1W\sum_{r}\frac1b\sum_{i\in\mathcal B_r}\nabla\ell_i
             = \frac1{bW}\sum_{i\in\mathcal B}\nabla\ell_i,

  the gradient of one process with batch :math:`bW` over the same slices. The sampler gives rank :math:`r` the
  positions :math:`r, r+W, r+2W, \dots` of one permutation per epoch (seeded by ``(seed, epoch)``, identical on
  every rank), so a step of :math:`W` ranks with batch :math:`b` sees the same slices as one process with batch
  :math:`bW`. (The per-slice equality is exact when :math:`b=1`; for :math:`b>1` the slices of a global batch
  are the same set in a different order.)
* **Resume on any world size.** The position inside an epoch is stored as the number of *global* samples
  already consumed (``epoch_samples``), not as a per-rank batch count; a run resumed with :math:`W'` processes
  continues with the remaining positions of the same permutation, split ``[r::W']``.
* **Rank 0 only** writes checkpoints (atomically), CSV/TensorBoard logs and shows the progress bar. On resume
  rank 0 reads ``last.pt`` and broadcasts it, so ``out_dir`` need not be shared between nodes (only rank 0's
  copy is used).
* **RNG.** Every rank seeds identically and performs the same random draws, so the RNG state saved by rank 0
  is the state of every rank (this is what makes resume exact).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .errors import InputError

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``,
    the ``backend`` (``None`` on one process) and whether :func:`init_distributed` created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# -- environment --------------------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when not launched by it)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` set by ``torchrun`` (0 when not launched by it)."""
    return _env_int("RANK", 0)


def env_local_rank() -> int:
    """``LOCAL_RANK`` set by ``torchrun`` (0 when not launched by it)."""
    return _env_int("LOCAL_RANK", 0)


def launched_distributed() -> bool:
    """True when this process belongs to a multi-process launch (``WORLD_SIZE > 1``) or a group exists."""
    return is_initialized() or env_world_size() > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank in the default group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Size of the default group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices (when built with NCCL), ``gloo`` otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA if available else CPU; under a multi-process launch CUDA means ``cuda:LOCAL_RANK``."""
    dev = str(device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {dev!r} requested but CUDA is not available")
    out = torch.device(dev)
    if out.type == "cuda" and launched_distributed():
        local = env_local_rank()
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) on this "
                             f"node: use --nproc_per_node <= {torch.cuda.device_count()}")
        out = torch.device("cuda", local)
    return out


def init_distributed(device: str | torch.device = "cpu", timeout_s: float | None = None) -> DistInfo:
    """Initialise the default process group from the ``torchrun`` environment variables (``env://``).

    One process (no ``WORLD_SIZE`` > 1, no existing group): returns ``DistInfo(0, 1, device=...)`` and
    initialises nothing. A group that already exists (e.g. created by the caller) is used as it is.
    """
    dev = resolve_device(device)
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_local_rank(), dev, dist.get_backend(), False)
    world = env_world_size()
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None, False)
    missing = [v for v in _ENV_VARS if v not in os.environ]
    if missing:
        raise InputError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before init: NCCL binds each process to its own GPU
    backend = backend_for(dev)
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        kwargs["device_id"] = dev  # eager NCCL init on the right GPU
    dist.init_process_group(**kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), env_local_rank(), dev, backend, True)


def cleanup(info: DistInfo | None = None) -> None:
    """Destroy the default group if ``info`` says :func:`init_distributed` created it (or ``info`` is None)."""
    if is_initialized() and (info is None or info.created_group):
        dist.destroy_process_group()


# -- collectives (all no-ops on one process) ---------------------------------------------------------------------
def _reduce_device() -> torch.device:
    """Tensors for collectives live on the current CUDA device with NCCL, on the CPU with gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_true(flag: bool) -> bool:
    """True iff ``flag`` is true on every rank (so all ranks take the same branch and never deadlock)."""
    if get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) == 0.0


def all_reduce_logs(logs: dict[str, float], max_keys: tuple[str, ...] = (), min_keys: tuple[str, ...] = (),
                    ) -> dict[str, float]:
    """Combine per-rank step numbers: the mean over ranks, the max for ``max_keys``, the min for ``min_keys``.

    Keys missing on some rank are combined over the ranks that have them (a key present nowhere is dropped).
    Every rank must call this with the same key *set* union; keys are exchanged first, so that holds.
    """
    world = get_world_size()
    if world == 1:
        return dict(logs)
    keys_per_rank: list[list[str]] = [[] for _ in range(world)]
    dist.all_gather_object(keys_per_rank, sorted(logs))
    keys = sorted(set().union(*keys_per_rank))
    dev = _reduce_device()
    inf = float("inf")
    vals = torch.tensor([float(logs.get(k, 0.0)) for k in keys], dtype=torch.float64, device=dev)
    cnt = torch.tensor([1.0 if k in logs else 0.0 for k in keys], dtype=torch.float64, device=dev)
    mx = torch.tensor([float(logs.get(k, -inf)) for k in keys], dtype=torch.float64, device=dev)
    mn = torch.tensor([float(logs.get(k, inf)) for k in keys], dtype=torch.float64, device=dev)
    both = torch.stack([vals, cnt])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    dist.all_reduce(mx, op=dist.ReduceOp.MAX)
    dist.all_reduce(mn, op=dist.ReduceOp.MIN)
    out: dict[str, float] = {}
    for i, k in enumerate(keys):
        if k in max_keys:
            out[k] = float(mx[i])
        elif k in min_keys:
            out[k] = float(mn[i])
        else:
            out[k] = float(both[0, i] / both[1, i])
    return out


def average_over_ranks(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The mean over ranks of each tensor (``None`` entries stay ``None``; they must be ``None`` on every rank),
    in one all-reduce of the flattened tensors: for gradients computed outside DDP's own backward."""
    present = [t for t in tensors if t is not None]
    if get_world_size() == 1 or not present:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in present]).to(_reduce_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = (flat / get_world_size()).to(present[0].device)
    out: list[torch.Tensor | None] = []
    offset = 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def all_reduce_weighted_mean(values: dict[str, float], count: int, keys: list[str]) -> dict[str, float]:
    r"""Global mean of per-rank means: :math:`\sum_r n_r v_r / \sum_r n_r` for each of ``keys``.

    A rank with ``count == 0`` (or without a key) contributes nothing; keys with no contribution anywhere are
    left out. ``keys`` must be the same list on every rank.
    """
    if get_world_size() == 1:
        return {k: values[k] for k in keys if k in values} if count else {}
    dev = _reduce_device()
    num = torch.tensor([float(values[k]) * count if (k in values and count) else 0.0 for k in keys],
                       dtype=torch.float64, device=dev)
    den = torch.tensor([float(count) if (k in values and count) else 0.0 for k in keys],
                       dtype=torch.float64, device=dev)
    both = torch.stack([num, den])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    return {k: float(both[0, i] / both[1, i]) for i, k in enumerate(keys) if float(both[1, i]) > 0}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (returns it on every rank).

    Used for the resume/rollback checkpoint: only rank 0 reads the file (it was loaded with
    ``weights_only=True``); tensors should be on the CPU (each rank moves them to its own device).
    """
    if get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_reduce_device())
    return box[0]


def shard(items: list[Any], rank: int | None = None, world_size: int | None = None) -> list[Any]:
    """``items[rank::world_size]``: the share of one rank (every item goes to exactly one rank)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(items)[rank::world_size]


def wrap_ddp(model: torch.nn.Module, device: torch.device, **kwargs: Any) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` on ``device`` (the model itself on one process).

    ``find_unused_parameters`` stays off: every trainable parameter of MOL/MoDL receives a gradient from the
    output (MOL's implicit backward runs ``torch.autograd.grad`` w.r.t. the fixed point only, which fires no
    parameter-gradient hook, and then one ordinary backward through the recorded block reaches every weight).
    """
    if get_world_size() == 1:
        return model
    if device.type == "cuda":
        return DDP(model, device_ids=[device.index], output_device=device.index, **kwargs)
    return DDP(model, **kwargs)


__all__ = [
    "DistInfo", "init_distributed", "cleanup", "resolve_device", "backend_for",
    "env_rank", "env_world_size", "env_local_rank", "launched_distributed", "is_initialized",
    "get_rank", "get_world_size", "is_main_process", "barrier", "all_true", "all_reduce_logs",
    "all_reduce_weighted_mean", "average_over_ranks", "broadcast_object", "shard", "wrap_ddp",
]
