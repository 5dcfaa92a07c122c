r"""The built-in non-Cartesian sets: SIMULATED golden-angle radial multi-coil k-space from the same anatomy.

Kinds (``ROOT/<kind>/{train,val,test}/*.h5`` + ``manifest.json``, built like the Cartesian kinds of
:mod:`molrecon.data.builtin`):

- ``radial``: 2D, 128×128 axial slices from the same split blocks as the ``2d`` kind (no slice of one split in
  another), 8 coils, 64 golden-angle spokes of 256 samples (twofold readout oversampling). A dataset takes the
  first ``spokes`` of them (default 32; 64 is the other documented setting): the first ``n`` spokes of a
  golden-angle sequence are themselves a near-uniform golden-angle acquisition.
- ``radial-dynamic``: 2D+time, 12 frames of 96×96 of the moving slices of the ``dynamic`` kind, 16 consecutive
  golden-angle spokes of 192 samples per frame (frame ``t`` continues the angles of frame ``t − 1``).

The inverse crime is weakened (Guerquin-Kern et al. 2012): the k-space is the NUFFT of the object on a **twice
finer grid** (256² or 192² pixels, with coil maps evaluated on that grid), computed with a wider Kaiser–Bessel
kernel and a larger NUFFT grid than reconstruction uses (width 8, oversampling 2.5, against 6 and 2), while the
reconstruction target and maps live on the 128² (96²) grid. The target is the object low-passed to that grid
(centre of its DFT), so it is what a 128² reconstruction can represent; the data carry the finer object's
higher-frequency content between the grid points of k-space and the NUFFT differences on top of the 30 dB
complex Gaussian noise. Scale: ``y = (N/M) · A_M x_M`` with ``M = 2N``, so that intensities agree with the
``N``-grid operator of :class:`~molrecon.physics.NonCartesianMRI` (both scaled like the centred orthonormal DFT,
``docs/conventions.md``).

Files: ``kspace`` ``[S, C, K]`` (2D+t: ``[1, C, T, K]``), ``trajectory`` ``[K, 2]`` (``[T, K, 2]``) in pixels of
the ``N`` grid (edge ``±N/2``), ``maps`` ``[1, C, H, W]`` (``[1, C, T, H, W]``, static), ``target``
``[S, H, W]`` (``[1, T, H, W]``, max |target| = 1 per file) and the attributes ``dims``, ``spokes``,
``readout``, ``sigma``, ``snr_db``, ``scale``, ``simulation`` and ``simulated``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_path, open_h5, sha256_file
from ..physics import NonCartesianMRI
from ..physics.dcf import pipe_menon_dcf
from ..physics.trajectories import golden_angle_dynamic, radial_trajectory
from . import anatomy
from .builtin import axial_blocks, dynamic_picks, plan_axial_splits, register_kind
from .simulation import _coil_maps, _rng, moving_series, smooth_phase
from .slice_dataset import _list_files, _read

#: the NUFFT that simulates (reconstruction uses NonCartesianMRI's defaults, width 6 on a 2x grid)
SIMULATION_NUFFT = {"oversampling": 2.5, "numpoints": 8}
FINE_FACTOR = 2


def _low_pass(x_fine: np.ndarray, size: int) -> np.ndarray:
    """The image on the ``size`` grid of a finer ``[..., M, M]`` image: the centre of its centred orthonormal
    DFT, scaled by ``size / M`` so that intensities are kept."""
    m = x_fine.shape[-1]
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x_fine, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    lo = (m - size) // 2
    k = k[..., lo:lo + size, lo:lo + size]
    x = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return x * (size / m)


def simulate_radial(mag_fine: np.ndarray, trajectory: torch.Tensor, size: int, coils: int, snr_db: float,
                    rng: np.random.Generator, dims: str = "2d") -> dict[str, Any]:
    """Simulate one file from fine magnitude images ``[S, M, M]`` (2D) or one series ``[T, M, M]`` (2D+t).

    Returns ``kspace`` (``[S, C, K]`` or ``[1, C, T, K]``), ``maps`` on the ``size`` grid, ``target`` (max 1),
    ``scale``, ``sigma`` and ``coil_radius`` (see the module docstring for the model).
    """
    mag = np.asarray(mag_fine, np.float64)
    m = mag.shape[-1]
    if dims == "2d+t":
        phase = np.broadcast_to(smooth_phase((m, m), rng), mag.shape)
    else:
        phase = np.stack([smooth_phase((m, m), rng) for _ in range(mag.shape[0])])
    x_fine = mag * np.exp(1j * phase)
    target = _low_pass(x_fine, size)
    peak = float(np.abs(target).max())
    if peak <= 0:
        raise InputError("simulation got an all-zero image (empty slice)")
    scale = 1.0 / peak
    target, x_fine = (target * scale).astype(np.complex64), (x_fine * scale).astype(np.complex64)
    radius = float(rng.choice([1.3, 1.4, 1.5, 1.6, 1.7]))
    maps_fine = torch.from_numpy(_coil_maps((m, m), coils, radius))
    maps = _coil_maps((size, size), coils, radius)
    if dims == "2d+t":
        frames = mag.shape[0]
        op = NonCartesianMRI(maps_fine[:, None].expand(-1, frames, -1, -1)[None].contiguous(), trajectory,
                             dims="2d+t", **SIMULATION_NUFFT)
        clean = op.A(torch.from_numpy(x_fine)[None]) * (size / m)  # [1, C, T, K]
        maps = np.ascontiguousarray(np.broadcast_to(maps[:, None], (coils, frames, size, size)))
        target = target[None]
    else:
        op = NonCartesianMRI(maps_fine[None], trajectory, dims="2d", **SIMULATION_NUFFT)
        clean = torch.cat([op.A(torch.from_numpy(x_fine[s:s + 1])) for s in range(x_fine.shape[0])]) * (size / m)
    clean = clean.numpy().astype(np.complex64)
    sigma = float(np.sqrt(np.mean(np.abs(clean) ** 2))) / 10 ** (snr_db / 20)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    noise = torch.randn((2, *clean.shape), generator=gen).numpy()
    kspace = (clean + (noise[0] + 1j * noise[1]).astype(np.complex64) * np.float32(sigma / math.sqrt(2)))
    return {"kspace": kspace.astype(np.complex64), "maps": maps[None].astype(np.complex64), "target": target,
            "scale": scale, "sigma": sigma, "coil_radius": radius}


def _write(path: Path, sim: dict[str, Any], trajectory: torch.Tensor, attrs: dict[str, Any]) -> str:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            for key in ("kspace", "target", "maps"):
                f.create_dataset(key, data=sim[key], track_times=False)
            f.create_dataset("trajectory", data=trajectory.numpy().astype(np.float32), track_times=False)
            base = {"acquisition": "SIMULATED", "patient_id": "mni152-2009a", "simulated": True,
                    "inverse_crime": False, "scale": float(sim["scale"]), "sigma": float(sim["sigma"]),
                    "target_max": 1.0, "coil_radius": float(sim["coil_radius"]),
                    "simulation": f"NUFFT of the object on a {FINE_FACTOR}x finer grid, Kaiser-Bessel width "
                                  f"{SIMULATION_NUFFT['numpoints']}, oversampling {SIMULATION_NUFFT['oversampling']}"}
            for k, v in {**base, **attrs}.items():
                f.attrs[k] = v
    return sha256_file(path)


def build_radial(out: Path, seed: int = 0, *, size: int = 128, coils: int = 8, snr_db: float = 30.0,
                 contrasts: Sequence[str] = anatomy.CONTRASTS, units: int = 4, spacing_mm: float = 1.5,
                 gap_mm: int = 5, spokes: int = 64, readout: int | None = None,
                 max_train_slices: int | None = None) -> dict[str, Any]:
    """Build the 2D radial set into ``out/{train,val,test}`` (the slices of the ``2d`` kind's plan)."""
    plan = plan_axial_splits(units, spacing_mm, gap_mm)
    readout = 2 * size if readout is None else int(readout)
    traj = radial_trajectory(spokes, readout, golden=True, image_size=size)
    files: list[dict[str, Any]] = []
    for u, split, zs in axial_blocks(plan, max_train_slices):
        for contrast in contrasts:
            name = f"rad_{contrast}_z{zs[0]:03d}.h5"
            mag = anatomy.axial_slices(contrast, zs, FINE_FACTOR * size)
            sim = simulate_radial(mag, traj, size, coils, snr_db, _rng(seed, name))
            attrs = {"dims": "2d", "contrast": contrast, "snr_db": snr_db, "seed": seed, "block": u,
                     "spokes": spokes, "readout": readout, "z_index_mm": np.asarray(zs, np.int32),
                     "voxel_size_mm": [1.0, anatomy.axial_fov_mm() / size, anatomy.axial_fov_mm() / size]}
            digest = _write(out / split / name, sim, traj, attrs)
            files.append({"file": f"{split}/{name}", "split": split, "contrast": contrast, "block": u,
                          "z_index_mm": list(map(int, zs)), "slices": len(zs), "sha256": digest})
    return {"files": files, "plan": plan}


def build_radial_dynamic(out: Path, seed: int = 0, *, size: int = 96, coils: int = 8, snr_db: float = 30.0,
                         contrasts: Sequence[str] = anatomy.CONTRASTS, frames: int = 12, n_train: int = 8,
                         n_val: int = 2, n_test: int = 2, units: int = 4, spacing_mm: float = 1.5, gap_mm: int = 5,
                         spokes_per_frame: int = 16, readout: int | None = None, resp_mm: float = 3.0,
                         card_mm: float = 2.5, card_cycles: int = 2) -> dict[str, Any]:
    """Build the 2D+time golden-angle radial set (the moving slices of the ``dynamic`` kind)."""
    plan = plan_axial_splits(units, spacing_mm, gap_mm)
    fov = anatomy.axial_fov_mm()
    readout = 2 * size if readout is None else int(readout)
    traj = golden_angle_dynamic(frames, spokes_per_frame, readout, image_size=size)
    files: list[dict[str, Any]] = []
    for k, (split, z) in enumerate(dynamic_picks(plan, n_train, n_val, n_test)):
        contrast = list(contrasts)[k % len(contrasts)]
        name = f"raddyn_{contrast}_z{z:03d}.h5"
        rng = _rng(seed, name)
        mag = moving_series(contrast, z, frames, FINE_FACTOR * size, rng, resp_mm, card_mm, card_cycles)
        sim = simulate_radial(mag, traj, size, coils, snr_db, rng, dims="2d+t")
        attrs = {"dims": "2d+t", "contrast": contrast, "snr_db": snr_db, "seed": seed, "frames": frames,
                 "spokes": spokes_per_frame, "readout": readout, "z_index_mm": np.asarray([z], np.int32),
                 "voxel_size_mm": [1.0, fov / size, fov / size], "resp_mm": resp_mm, "card_mm": card_mm,
                 "card_cycles": card_cycles}
        digest = _write(out / split / name, sim, traj, attrs)
        files.append({"file": f"{split}/{name}", "split": split, "contrast": contrast, "z_index_mm": [int(z)],
                      "slices": 1, "frames": frames, "sha256": digest})
    return {"files": files, "plan": plan}


class RadialDataset(torch.utils.data.Dataset):
    """Items of the built-in radial sets (one slice, or one 2D+t series), with the keys of
    :class:`~molrecon.data.SliceDataset` where they apply and ``trajectory`` instead of ``mask``:

    ``kspace`` ``[C, K]`` (``[C, T, K]``), ``trajectory`` ``[K, 2]`` (``[T, K, 2]``), ``dcf`` ``[K]`` (``[T, K]``,
    Pipe–Menon, for the gridding image), ``maps`` ``[C, *sp]``, ``target`` ``[*sp]``, ``max_value`` (1.0),
    ``fname``, ``slice``, ``dims``.
    :func:`~molrecon.data.physics_from_batch` turns a batch into a :class:`~molrecon.physics.NonCartesianMRI`.

    ``spokes`` keeps the first spokes of each frame (the file's count if ``None``); ``transform`` is applied to
    each item, as in :class:`~molrecon.data.SliceDataset`.
    """

    def __init__(self, path: str | Path | Sequence[str | Path], spokes: int | None = None,
                 transform: Any = None, mask_func: Any = None) -> None:
        if mask_func is not None:
            raise InputError("radial data have a trajectory, not a mask: choose the number of spokes instead "
                             "(spokes=...)")
        self.files = _list_files(path)
        self.transform = transform
        self.examples: list[tuple[Path, int]] = []
        self.meta: dict[Path, dict[str, Any]] = {}
        self._dcfs: dict[tuple, torch.Tensor] = {}
        for p in self.files:
            with open_h5(p) as f:
                if "trajectory" not in f:
                    raise InputError(f"{p}: missing HDF5 key 'trajectory' (not a radial file)")
                have = int(f.attrs["spokes"])
                n = have if spokes is None else int(spokes)
                if not 1 <= n <= have:
                    raise InputError(f"{p}: asked for {n} spokes, the file has {have}")
                self.meta[p] = {"dims": str(f.attrs["dims"]), "spokes": n, "readout": int(f.attrs["readout"]),
                                "slices": int(f["kspace"].shape[0])}
            self.examples += [(p, s) for s in range(self.meta[p]["slices"])]

    def __len__(self) -> int:
        return len(self.examples)

    def _dcf(self, traj: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Pipe–Menon density compensation of ``traj``, computed once per distinct trajectory (the files of a
        set share theirs; the iteration costs ~20 NUFFT pairs, too much for every item)."""
        key = (tuple(traj.shape), hash(traj.numpy().tobytes()), tuple(maps.shape[-2:]))
        if key not in self._dcfs:
            self._dcfs[key] = pipe_menon_dcf(traj, maps.shape[-2:])
        return self._dcfs[key]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        path, s = self.examples[index]
        meta = self.meta[path]
        keep = meta["spokes"] * meta["readout"]
        with open_h5(path) as f:
            kspace = torch.from_numpy(_read(f, "kspace", s, path)[..., :keep].astype(np.complex64))
            traj = torch.from_numpy(_read(f, "trajectory", (), path)[..., :keep, :].astype(np.float32))
            target = torch.from_numpy(_read(f, "target", s, path).astype(np.complex64))
            maps = torch.from_numpy(_read(f, "maps", 0, path).astype(np.complex64))
        item = {"kspace": kspace, "trajectory": traj, "maps": maps, "target": target,
                "dcf": self._dcf(traj, maps), "max_value": 1.0, "fname": path.name, "slice": int(s),
                "dims": meta["dims"]}
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        spokes = sorted({m["spokes"] for m in self.meta.values()})
        return f"RadialDataset({len(self.files)} files, {len(self)} items, spokes={spokes})"


#: spokes a 2D radial dataset takes by default (of the 64 stored): 32, the usual 8x-like radial undersampling
DEFAULT_SPOKES_2D = 32


def radial_2d_dataset(path: str | Path | Sequence[str | Path], spokes: int | None = DEFAULT_SPOKES_2D,
                      **kwargs: Any) -> RadialDataset:
    """The :class:`RadialDataset` of a 2D radial split, with the first :data:`DEFAULT_SPOKES_2D` spokes by default."""
    return RadialDataset(path, spokes, **kwargs)


register_kind("radial", build_radial, radial_2d_dataset,
              {"size": 128, "coils": 8, "snr_db": 30.0, "contrasts": list(anatomy.CONTRASTS), "units": 4,
               "spacing_mm": 1.5, "gap_mm": 5, "spokes": 64, "readout": None},
              "kspace [S,C,K]; trajectory [K,2] (pixels, edge +-N/2); maps [1,C,H,W]; target [S,H,W]",
              "SIMULATED golden-angle radial multi-coil k-space from a real anatomical template; the inverse "
              "crime is weakened (the NUFFT of a 2x finer object, another kernel and grid than reconstruction).")
register_kind("radial-dynamic", build_radial_dynamic, RadialDataset,
              {"size": 96, "coils": 8, "snr_db": 30.0, "contrasts": list(anatomy.CONTRASTS), "frames": 12,
               "n_train": 8, "n_val": 2, "n_test": 2, "units": 4, "spacing_mm": 1.5, "gap_mm": 5,
               "spokes_per_frame": 16, "readout": None, "resp_mm": 3.0, "card_mm": 2.5, "card_cycles": 2},
              "kspace [1,C,T,K]; trajectory [T,K,2]; maps [1,C,T,H,W] (static); target [1,T,H,W]",
              "SIMULATED golden-angle radial 2D+time multi-coil k-space from a real anatomical template; the "
              "inverse crime is weakened (the NUFFT of a 2x finer object, another kernel and grid).")
