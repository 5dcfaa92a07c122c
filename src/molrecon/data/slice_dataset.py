r"""A torch ``Dataset`` over multicoil HDF5 files in the fastMRI layout: the built-in set and real fastMRI data.

Files hold ``kspace`` ``[slices, C, *spatial]`` (complex), ``ismrmrd_header`` (XML) and, optionally, ``maps``
(leading dim 1 = shared by all slices, or ``slices``; other dims 1 broadcast), ``mask``, ``target`` and
``reconstruction_rss``. Each item is one slice (2D) or one volume/series (3D, 2D+time files have one):

=============  ===========================================================================================
``kspace``     complex64 ``[C, *sp]``, masked (the noisy, fully-sampled k-space times the mask)
``maps``       complex64 ``[C, *sp]``, :math:`\sum_c |S_c|^2 = 1` inside the object
``mask``       float32, same rank as ``kspace``: 2D ``[1, 1, W]``, 3D ``[1, 1, H, W]``, 2D+t ``[1, T, 1, W]``
``target``     complex64 ``[*sp]`` (built-in: the noiseless image; real data: the coil combination
               :math:`\sum_c \bar S_c \mathcal{F}^{-1} y_c` of the fully sampled k-space)
``max_value``  float, max of ``|target|`` over the whole file (PSNR data range; 1.0 after scaling)
``fname``, ``slice``, ``dims``  file name, slice index, ``"2d" | "3d" | "2d+t"``
``rss``        float32, the file's ``reconstruction_rss`` slice (fastMRI: centre-cropped to the header's recon
               matrix), scaled like the target; only when the file has one
=============  ===========================================================================================

Masks: ``mask_func`` (any mask object of :mod:`molrecon.physics.masks`) is called with the spatial shape and
the seed :func:`~molrecon.data.transforms.fname_seed` of the file name, so a volume's slices share one mask
and every epoch sees the same masks, as in fastMRI's validation. Without it the file's ``mask`` is used; a
file with neither is read fully sampled (with a warning).

Real fastMRI files have no ``maps``: ESPIRiT maps (``molrecon.physics.estimate_coil_maps``) are computed
once per file and cached in a sidecar ``<stem>.espirit.h5`` next to it (or in ``maps_cache_dir``; if the data
folder is read-only, in ``~/.cache/molrecon/espirit``), written atomically. Real data are scaled by
``1 / max|target|`` over the volume, so that ``max_value`` is 1 for every file as for the built-in set; the
factor is in the sidecar's ``target_max`` attribute (the k-space and ``rss`` are scaled by the same factor).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..io import atomic_path, file_lock, open_h5
from ..names import DIMS
from ..physics import MultiCoilMRI, NonCartesianMRI, estimate_coil_maps, ifft_centered
from .header import EncodingInfo, parse_header
from .transforms import fname_seed

SIDECAR_SUFFIX = ".espirit.h5"


def _list_files(path_or_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(path_or_files, (str, os.PathLike)):
        p = Path(path_or_files)
        if p.is_dir():
            files = sorted(q for q in p.glob("*.h5")
                           if not q.name.endswith(SIDECAR_SUFFIX) and not q.name.startswith("."))
            if not files:
                raise InputError(f"{p}: no .h5 files in this folder")
            return files
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        return [p]
    files = [Path(f) for f in path_or_files]
    if not files:
        raise InputError("SliceDataset got an empty list of files")
    return files


def _read(f: Any, key: str, index: Any, path: Path) -> np.ndarray:
    """``f[key][index]`` with clear errors for a missing key or a truncated/corrupted dataset."""
    try:
        ds = f[key]
    except KeyError:
        raise InputError(f"{path}: missing HDF5 key {key!r} (found: {', '.join(sorted(f.keys())) or 'none'})") \
            from None
    try:
        return ds[index]
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: cannot read {key!r}: truncated or corrupted file ({str(exc).splitlines()[0]})") \
            from None


class SliceDataset(Dataset):
    """Items of fastMRI-layout multicoil HDF5 files (see the module docstring for the item format).

    Parameters
    ----------
    path_or_files:
        A folder (all ``*.h5`` in it except sidecars), one file, or a list of files.
    mask_func:
        A mask object ``mask_func(spatial_shape, seed=, dims=)``; overrides the files' masks.
    transform:
        Optional callable applied to each item dict.
    maps_cache_dir:
        Where ESPIRiT sidecars go for files without ``maps`` (default: next to each file).
    calib_width:
        ESPIRiT calibration width (k-space lines).
    """

    def __init__(self, path_or_files: str | os.PathLike | Sequence[str | os.PathLike],
                 mask_func: Callable[..., torch.Tensor] | None = None,
                 transform: Callable[[dict[str, Any]], Any] | None = None, *,
                 maps_cache_dir: str | os.PathLike | None = None, calib_width: int = 24) -> None:
        self.files = _list_files(path_or_files)
        self.mask_func = mask_func
        self.transform = transform
        self.maps_cache_dir = Path(maps_cache_dir) if maps_cache_dir is not None else None
        self.calib_width = int(calib_width)
        self.meta: dict[Path, dict[str, Any]] = {}
        self.examples: list[tuple[Path, int]] = []
        self._sidecars: dict[Path, Path] = {}
        self._warned_full = False
        for path in self.files:
            with open_h5(path) as f:
                if "kspace" not in f:
                    raise InputError(f"{path}: missing HDF5 key 'kspace' (found: "
                                     f"{', '.join(sorted(f.keys())) or 'none'})")
                ds = f["kspace"]
                if ds.ndim not in (4, 5) or not np.issubdtype(ds.dtype, np.complexfloating):
                    raise InputError(f"{path}: 'kspace' must be complex [slices, coils, *spatial], got shape "
                                     f"{ds.shape} dtype {ds.dtype}")
                # touch the last element: a truncated file opens fine but fails here
                _read(f, "kspace", (ds.shape[0] - 1, ds.shape[1] - 1) + (-1,) * (ds.ndim - 2), path)
                attrs = dict(f.attrs)
                dims = attrs.get("dims")
                dims = dims.decode() if isinstance(dims, bytes) else dims
                if dims is None:
                    dims = "2d" if ds.ndim == 4 else "3d"
                if dims not in DIMS or (ds.ndim == 4) != (dims == "2d"):
                    raise InputError(f"{path}: attribute dims={dims!r} does not fit 'kspace' of shape {ds.shape}")
                info: EncodingInfo | None = None
                if "ismrmrd_header" in f:
                    info = parse_header(_read(f, "ismrmrd_header", (), path), path)
                self.meta[path] = {"shape": tuple(ds.shape), "dims": dims, "header": info,
                                   "has_maps": "maps" in f, "has_target": "target" in f,
                                   "target_max": float(attrs.get("target_max", 1.0))}
            self.examples.extend((path, s) for s in range(self.meta[path]["shape"][0]))

    def __len__(self) -> int:
        return len(self.examples)

    # -- masks ----------------------------------------------------------------------------------------------
    @staticmethod
    def _item_mask(m: np.ndarray | torch.Tensor, dims: str, spatial: tuple[int, ...], path: Path) -> torch.Tensor:
        """Reshape a mask to the item convention (same rank as k-space ``[C, *sp]``)."""
        m = torch.as_tensor(np.asarray(m, dtype=np.float32))
        if dims == "2d":
            want = (1, 1, spatial[-1])
        elif dims == "3d":
            want = (1, 1, spatial[-2], spatial[-1])
        else:
            want = (1, spatial[0], 1, spatial[-1])
        if m.numel() != int(np.prod(want)):
            raise InputError(f"{path}: mask of shape {tuple(m.shape)} does not fit {dims} k-space of spatial shape "
                             f"{spatial} (expected {int(np.prod(want))} entries)")
        m = m.reshape(want)
        if float(m.sum()) == 0:
            raise InputError(f"{path}: mask is empty (no k-space sample acquired)")
        return m

    # -- ESPIRiT sidecar ------------------------------------------------------------------------------------
    def sidecar_path(self, path: Path) -> Path:
        """Where the ESPIRiT maps of ``path`` are cached."""
        folder = self.maps_cache_dir if self.maps_cache_dir is not None else path.parent
        return folder / f"{path.stem}{SIDECAR_SUFFIX}"

    def _ensure_sidecar(self, path: Path) -> Path:
        if path in self._sidecars:
            return self._sidecars[path]
        side = self.sidecar_path(path)
        if not _sidecar_valid(side, path, self.meta[path]["shape"]):
            try:
                _write_sidecar(side, path, self.meta[path], self.calib_width)
            except PermissionError:
                # read-only data folder: fall back to the user cache
                key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
                side = Path.home() / ".cache" / "molrecon" / "espirit" / f"{key}_{path.stem}{SIDECAR_SUFFIX}"
                if not _sidecar_valid(side, path, self.meta[path]["shape"]):
                    _write_sidecar(side, path, self.meta[path], self.calib_width)
        self._sidecars[path] = side
        return side

    # -- items ----------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        path, s = self.examples[index]
        meta = self.meta[path]
        dims = meta["dims"]
        fft_dims = (-3, -2, -1) if dims == "3d" else (-2, -1)
        with open_h5(path) as f:
            kspace = torch.from_numpy(_read(f, "kspace", s, path).astype(np.complex64))
            spatial = tuple(kspace.shape[1:])
            target = torch.from_numpy(_read(f, "target", s, path).astype(np.complex64)) if meta["has_target"] \
                else None
            rss = torch.from_numpy(_read(f, "reconstruction_rss", s, path).astype(np.float32)) \
                if "reconstruction_rss" in f else None
            maps = None
            if meta["has_maps"]:
                mshape = f["maps"].shape
                maps = _read(f, "maps", 0 if mshape[0] == 1 else s, path)
            file_mask = _read(f, "mask", (), path) if "mask" in f else None
        scale = 1.0
        max_value = meta["target_max"]
        if maps is None:
            side = self._ensure_sidecar(path)
            with h5py.File(side, "r") as g:
                maps = g["maps"][s]
                scale = 1.0 / float(g.attrs["target_max"])
            max_value = 1.0
        try:
            maps = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(maps, kspace.shape)).astype(np.complex64))
        except ValueError:
            raise InputError(f"{path}: 'maps' shape {maps.shape} does not broadcast to k-space {tuple(kspace.shape)}") \
                from None
        if target is None:
            # real data: coil-combine the fully sampled k-space with the maps (before masking)
            target = (maps.conj() * ifft_centered(kspace, fft_dims)).sum(dim=0)
        if self.mask_func is not None:
            m = self.mask_func(spatial, seed=fname_seed(path.name), dims=dims)
            mask = self._item_mask(m, dims, spatial, path)
        elif file_mask is not None:
            mask = self._item_mask(file_mask, dims, spatial, path)
        else:
            if not self._warned_full:
                warnings.warn(f"{path}: no mask in the file and no mask_func given; reading fully sampled k-space",
                              stacklevel=2)
                self._warned_full = True
            mask = torch.ones(self._item_shape(dims, spatial))
        item: dict[str, Any] = {
            "kspace": (kspace * mask * scale).to(torch.complex64), "maps": maps, "mask": mask,
            "target": (target * scale).to(torch.complex64), "max_value": float(max_value), "fname": path.name,
            "slice": int(s), "dims": dims,
        }
        if rss is not None:
            item["rss"] = rss * scale
        return self.transform(item) if self.transform is not None else item

    @staticmethod
    def _item_shape(dims: str, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if dims == "2d":
            return (1, 1, spatial[-1])
        if dims == "3d":
            return (1, 1, spatial[-2], spatial[-1])
        return (1, spatial[0], 1, spatial[-1])

    def crop_size(self, index: int) -> tuple[int, int] | None:
        """fastMRI's target crop (the header's recon matrix) for item ``index``, or ``None`` without header."""
        info = self.meta[self.examples[index][0]]["header"]
        return None if info is None else info.crop_size

    def __repr__(self) -> str:
        return f"SliceDataset({len(self.files)} files, {len(self)} items, mask_func={self.mask_func!r})"


# ------------------------------------------------------------------------------------------ sidecar helpers
def _sidecar_valid(side: Path, source: Path, shape: tuple[int, ...]) -> bool:
    if not side.exists():
        return False
    try:
        with h5py.File(side, "r") as g:
            return (tuple(g["maps"].shape) == tuple(shape) and int(g.attrs["source_size"]) == source.stat().st_size
                    and "target_max" in g.attrs)
    except (OSError, KeyError):
        return False  # a broken cache is rebuilt, not reported


def _write_sidecar(side: Path, source: Path, meta: dict[str, Any], calib_width: int) -> None:
    """Estimate ESPIRiT maps slice by slice from the fully sampled k-space and cache them with the volume's
    ``target_max = max |Σ_c conj(S_c) F^{-1} y_c|``, atomically."""
    side.parent.mkdir(parents=True, exist_ok=True)
    dims = meta["dims"]
    fft_dims = (-3, -2, -1) if dims == "3d" else (-2, -1)
    lock = side.with_name(f".{side.name}.lock")
    with file_lock(lock):
        if _sidecar_valid(side, source, meta["shape"]):
            return  # another process finished it while we waited
        with atomic_path(side) as tmp, open_h5(source) as f, h5py.File(tmp, "w") as g:
            out = g.create_dataset("maps", shape=meta["shape"], dtype=np.complex64, track_times=False)
            target_max = 0.0
            for s in range(meta["shape"][0]):
                k = torch.from_numpy(_read(f, "kspace", s, source).astype(np.complex64))
                maps = estimate_coil_maps(k[None], calib_width=calib_width, dims=dims)[0]
                out[s] = maps.numpy()
                target = (maps.conj() * ifft_centered(k, fft_dims)).sum(dim=0)
                target_max = max(target_max, float(target.abs().max()))
            if target_max <= 0:
                raise InputError(f"{source}: k-space is all zeros")
            g.attrs["target_max"] = target_max
            g.attrs["source_size"] = source.stat().st_size
            g.attrs["source"] = source.name
            g.attrs["method"] = f"espirit calib_width={calib_width}"
    lock.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ batching
def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: tensors → ``[B, ...]`` (``kspace``/``maps`` ``[B, C, *sp]``, ``mask``
    ``[B, 1, ...]``, ``target`` ``[B, *sp]``), ``max_value`` → float32 ``[B]``, ``slice`` → int64 ``[B]``,
    strings → lists. Tensors whose shapes differ between items (e.g. ``rss`` of different crops) stay lists."""
    if not items:
        raise InputError("collate got no items")
    batch: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            same = all(v.shape == vals[0].shape for v in vals)
            batch[key] = torch.stack(vals) if same else vals
        elif key == "max_value":
            batch[key] = torch.tensor(vals, dtype=torch.float32)
        elif key == "slice":
            batch[key] = torch.tensor(vals, dtype=torch.int64)
        else:
            batch[key] = list(vals)
    return batch


def physics_from_batch(batch: dict[str, Any]) -> MultiCoilMRI | NonCartesianMRI:
    """The operator of a collated batch: :class:`~molrecon.physics.MultiCoilMRI` (maps, mask, dims), or
    :class:`~molrecon.physics.NonCartesianMRI` (maps, trajectory, optional ``dcf``) when the batch has a
    ``trajectory`` (one trajectory for the whole batch)."""

    dims = batch["dims"]
    dims = dims if isinstance(dims, str) else dims[0]
    if not isinstance(batch["dims"], str) and any(d != dims for d in batch["dims"]):
        raise InputError(f"a batch mixes dims {sorted(set(batch['dims']))}")
    if "trajectory" in batch:
        traj = batch["trajectory"]
        if isinstance(traj, list) or (traj.shape[0] > 1 and not bool((traj == traj[:1]).all())):
            raise InputError("a non-Cartesian batch mixes trajectories (use batch size 1, or one trajectory)")
        dcf = batch.get("dcf")
        return NonCartesianMRI(batch["maps"], traj[0], dcf=None if dcf is None else dcf[0], dims=dims)
    return MultiCoilMRI(batch["maps"], batch["mask"], dims=dims)
