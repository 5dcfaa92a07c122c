r"""The built-in offline dataset: SIMULATED multi-coil k-space from real anatomy (the MNI152 2009 template).

Simulation ("inverse crime": the same discrete forward model makes and reconstructs the data, so results are
optimistic and not comparable with raw fastMRI numbers). For a magnitude image :math:`m` (one of the contrasts of
:mod:`molrecon.data.anatomy`):

.. math::
    x = s\,m\,e^{i\varphi},\qquad y_c = \mathcal{F}(S_c x) + n_c,\qquad
    n_c \sim \mathcal{CN}(0, \sigma^2),\qquad \sigma = \frac{\operatorname{rms}(\mathcal{F}(S x))}{10^{\mathrm{SNR}/20}}

- :math:`\varphi` a smooth random phase (quadratic polynomial over the field of view, new per slice/volume);
- :math:`S_c` birdcage coils (``simulate_coil_maps``; radius drawn per file from 1.3–1.7), :math:`\sum_c|S_c|^2 = 1`;
- :math:`s` scales the target so that :math:`\max|x| = 1` over each file (``attrs["scale"]`` keeps it);
- the fully-sampled noisy :math:`y` is stored; the noise std σ is computed once per file (same σ for all its
  slices) and stored in ``attrs["sigma"]``; SNR (dB) is defined on the rms of the whole noiseless k-space of
  the file (= rms of the coil images, the FFT being orthonormal).

Kinds and layout (``ROOT/<kind>/{train,val,test}/*.h5`` + ``ROOT/<kind>/manifest.json``):

- ``2d``: 128×128 axial slices (1.82 mm pixels, 233 mm FOV), 8 coils, 4 contrasts. The axial range of the brain
  is cut into ``units`` blocks; in each block ``[train slices][gap][val slice][gap][test slice][gap]``
  (1.5 mm spacing of train slices, ≥ 5 mm gaps), so no split sees another split's slices. One file per
  (contrast, block): ``kspace`` ``[S, C, H, W]``; ``maps`` ``[1, C, H, W]`` (shared by the slices).
- ``3d``: 64³ volumes (3.25 mm isotropic, 208 mm FOV), 8 coils; each volume is the template under a new random
  affine deformation (±6 % scale, ±6° rotation, ±2 voxel shift) in one contrast. One volume per file:
  ``kspace`` ``[1, C, D, H, W]`` (readout along ``D``), Poisson-disc 4× mask ``[H, W]`` (variable-density
  random sampling below 48³, where sigpy's Poisson-disc generator is unreliable). The 3D splits share the
  one template brain (they differ in deformation, contrast, phase, coils, noise, mask) — use them for code
  paths, speed and memory, not for claims of generalisation.
- ``dynamic``: 12 frames of 96×96 (2.43 mm pixels) of one axial slice under a periodic deformation (one
  respiratory-like cycle: 3 mm antero-posterior shift + 3 % stretch; two cardiac-like cycles: 2.5 mm radial
  pulsation of the centre, Gaussian envelope), slices taken from the 2D split blocks (no leakage). One series
  per file: ``kspace`` ``[1, C, T, H, W]``, ``maps`` ``[1, C, T, H, W]`` (static, repeated), per-frame masks
  ``[T, 1, W]``.

Every file also has ``reconstruction_rss`` (rss of the noisy fully-sampled coil images), ``target`` (the
noiseless complex image), ``mask`` (the default 4× mask, seeded by the file name as fastMRI does),
``ismrmrd_header`` and attributes (``dims``, ``contrast``, ``scale``, ``sigma``, ``snr_db``, ``max``, ``norm``,
``simulated``...). Arrays are byte-identical for a given seed and parameters.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from .._version import __version__
from ..errors import InputError
from ..io import atomic_path, atomic_write, file_lock, sha256_file
from ..names import DIMS_OF_KIND, KIND_ALIASES
from ..physics import PoissonDiscMask, RandomMask, VariableDensity2DMask
from . import anatomy
from .header import make_header
from .simulation import _rng, moving_series, simulate_file
from .slice_dataset import SliceDataset, collate, physics_from_batch
from .transforms import fname_seed

KINDS = tuple(DIMS_OF_KIND)
FORMAT_VERSION = 1

DEFAULTS: dict[str, dict[str, Any]] = {
    "2d": {"size": 128, "coils": 8, "snr_db": 30.0, "contrasts": list(anatomy.CONTRASTS), "units": 4,
           "spacing_mm": 1.5, "gap_mm": 5, "acceleration": 4.0, "center_fraction": 0.08},
    "3d": {"size": 64, "coils": 8, "snr_db": 30.0, "contrasts": list(anatomy.CONTRASTS), "n_train": 4,
           "n_val": 1, "n_test": 2, "acceleration": 4.0, "calib_size": 12},
    "dynamic": {"size": 96, "coils": 8, "snr_db": 30.0, "contrasts": list(anatomy.CONTRASTS), "frames": 12,
                "n_train": 8, "n_val": 2, "n_test": 2, "units": 4, "spacing_mm": 1.5, "gap_mm": 5,
                "acceleration": 4.0, "center_fraction": 0.08, "resp_mm": 3.0, "card_mm": 2.5,
                "card_cycles": 2},
}


def normalize_kind(kind: str) -> str:
    """``"2d"``, ``"3d"`` or ``"dynamic"`` (``"2d+t"``/``"2dt"`` are accepted for the latter)."""
    try:
        return KIND_ALIASES[str(kind).lower()]
    except KeyError:
        raise InputError(f"unknown built-in dataset kind {kind!r} (choose from {', '.join(KINDS)})") from None


def default_root() -> Path:
    """Root folder of the built-in data: ``$MOLRECON_DATA`` or ``~/.cache/molrecon/builtin``."""
    env = os.environ.get("MOLRECON_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "molrecon" / "builtin"


def _write_file(path: Path, sim: dict[str, Any], mask: np.ndarray, header: str, attrs: dict[str, Any]) -> str:
    """Write one fastMRI-layout file atomically (no HDF5 timestamps); return its sha256."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.create_dataset("kspace", data=sim["kspace"], track_times=False)
            f.create_dataset("reconstruction_rss", data=sim["rss"], track_times=False)
            f.create_dataset("target", data=sim["target"], track_times=False)
            f.create_dataset("maps", data=sim["maps"], track_times=False)
            f.create_dataset("mask", data=mask.astype(np.float32), track_times=False)
            f.create_dataset("ismrmrd_header", data=header)
            rss = sim["rss"]
            base = {"acquisition": "SIMULATED", "patient_id": "mni152-2009a", "max": float(rss.max()),
                    "norm": float(np.linalg.norm(rss)), "simulated": True, "inverse_crime": True,
                    "scale": float(sim["scale"]), "sigma": float(sim["sigma"]), "target_max": 1.0,
                    "coil_radius": float(sim["coil_radius"])}
            for k, v in {**base, **attrs}.items():
                f.attrs[k] = v
    return sha256_file(path)


# ----------------------------------------------------------------------------------------------- 2D splits
def plan_axial_splits(units: int = 4, spacing_mm: float = 1.5, gap_mm: int = 5,
                      min_area_fraction: float = 0.2) -> list[dict[str, list[int]]]:
    """Axial positions (1 mm template indices) per block: ``[{"train": [...], "val": [z], "test": [z]}, ...]``.

    The brain's axial range is cut into ``units`` equal blocks laid out as
    ``[train slices every spacing_mm][gap][val][gap][test][gap]``, so every val/test slice is at least
    ``gap_mm`` from any slice of another split.
    """
    if units < 1 or gap_mm < 1 or spacing_mm <= 0:
        raise InputError(f"bad split plan: units={units}, gap_mm={gap_mm}, spacing_mm={spacing_mm}")
    z_lo, z_hi = anatomy.brain_z_range(min_area_fraction)
    unit_len = (z_hi - z_lo + 1) / units
    if unit_len < 3 * gap_mm + 1:
        raise InputError(f"{units} blocks with {gap_mm} mm gaps do not fit the {z_hi - z_lo + 1} mm brain range")
    plan = []
    for u in range(units):
        start = z_lo + int(round(u * unit_len))
        end = z_lo + int(round((u + 1) * unit_len))  # first index of the next block
        test = end - gap_mm
        val = test - gap_mm
        train = sorted({int(round(z)) for z in np.arange(start, val - gap_mm + 1e-9, spacing_mm)})
        plan.append({"train": train, "val": [val], "test": [test]})
    return plan


# ---------------------------------------------------------------------------------------------- builders
def build_2d(out: Path, seed: int = 0, *, size: int = 128, coils: int = 8, snr_db: float = 30.0,
             contrasts: Sequence[str] = anatomy.CONTRASTS, units: int = 4, spacing_mm: float = 1.5,
             gap_mm: int = 5, acceleration: float = 4.0, center_fraction: float = 0.08,
             max_train_slices: int | None = None) -> dict[str, Any]:
    """Build the 2D set into ``out/{train,val,test}``; return the manifest's ``files``/``splits`` part.

    ``max_train_slices`` keeps only the first slices of each train block (for tiny test builds).
    """

    plan = plan_axial_splits(units, spacing_mm, gap_mm)
    fov = anatomy.axial_fov_mm()
    mask_obj = RandomMask(center_fraction, acceleration)
    files: list[dict[str, Any]] = []
    for u, split, zs in axial_blocks(plan, max_train_slices):
        for contrast in contrasts:
            name = f"mni_{contrast}_z{zs[0]:03d}.h5"
            mag = anatomy.axial_slices(contrast, zs, size)
            sim = simulate_file(mag, "2d", coils, snr_db, _rng(seed, name))
            mask = mask_obj((size, size), seed=fname_seed(name))[0].numpy()  # [W]
            header = make_header((size, size, 1), (fov, fov, 1.0), coils, phase_steps=size)
            attrs = {"dims": "2d", "contrast": contrast, "snr_db": snr_db, "seed": seed, "block": u,
                     "z_index_mm": np.asarray(zs, np.int32), "voxel_size_mm": [1.0, fov / size, fov / size],
                     "mask_default": repr(mask_obj)}
            path = out / split / name
            digest = _write_file(path, sim, mask, header, attrs)
            files.append({"file": f"{split}/{name}", "split": split, "contrast": contrast, "block": u,
                          "z_index_mm": list(map(int, zs)), "slices": len(zs), "sha256": digest})
    return {"files": files, "plan": plan}


def _deform_cube(vol: torch.Tensor, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random affine deformation of ``vol`` ``[N, N, N]`` (oversampled), area-resampled to ``size``³."""
    ang = math.radians(rng.uniform(-6, 6))
    scale = rng.uniform(0.94, 1.06, size=3)
    shift = rng.uniform(-2, 2, size=3) * 2 / size  # voxels of the output grid, normalised coordinates
    rot = np.eye(3)
    # rotation in the axial plane (about the D axis); grid_sample's theta maps (W, H, D) output coords to input
    rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = math.cos(ang), -math.sin(ang), math.sin(ang), math.cos(ang)
    theta = np.zeros((3, 4))
    theta[:, :3] = rot @ np.diag(1 / scale)
    theta[:, 3] = shift
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32)[None], [1, 1, *vol.shape], align_corners=False)
    warped = F.grid_sample(vol[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.interpolate(warped, size=(size,) * 3, mode="area")[0, 0].numpy()


def build_3d(out: Path, seed: int = 0, *, size: int = 64, coils: int = 8, snr_db: float = 30.0,
             contrasts: Sequence[str] = anatomy.CONTRASTS, n_train: int = 4, n_val: int = 1, n_test: int = 2,
             acceleration: float = 4.0, calib_size: int = 12) -> dict[str, Any]:
    """Build the 3D set (one deformed template volume per file) into ``out/{train,val,test}``."""

    fov = 208
    # sigpy's Poisson-disc generator can fail or never return on small grids (its bisection on the density
    # slope does not terminate when the tolerance cannot be met); tiny builds use random variable density.
    mask_obj = PoissonDiscMask(acceleration, calib_size) if size >= 48 else VariableDensity2DMask(acceleration)
    files: list[dict[str, Any]] = []
    cubes: dict[str, torch.Tensor] = {}
    k = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            contrast = list(contrasts)[k % len(contrasts)]
            if contrast not in cubes:
                cubes[contrast] = anatomy.cube_volume(contrast, size, fov)
            name = f"vol_{contrast}_s{k:02d}.h5"
            rng = _rng(seed, name)
            mag = _deform_cube(cubes[contrast], size, rng)[None]
            sim = simulate_file(mag, "3d", coils, snr_db, rng)
            mask = mask_obj((size,) * 3, seed=fname_seed(name))[0].numpy()  # [H, W]
            header = make_header((size, size, size), (fov, fov, fov), coils, phase_steps=size,
                                 partition_steps=size)
            attrs = {"dims": "3d", "contrast": contrast, "snr_db": snr_db, "seed": seed,
                     "voxel_size_mm": [fov / size] * 3, "mask_default": repr(mask_obj)}
            digest = _write_file(out / split / name, sim, mask, header, attrs)
            files.append({"file": f"{split}/{name}", "split": split, "contrast": contrast, "slices": 1,
                          "sha256": digest})
            k += 1
    return {"files": files}


def axial_blocks(plan: list[dict[str, list[int]]],
                 max_train_slices: int | None = None) -> list[tuple[int, str, list[int]]]:
    """``(block, split, z positions)`` of the 2D files, block by block (``max_train_slices`` keeps the first
    train slices of each block, for tiny builds)."""
    return [(u, split, block[split][:max_train_slices] if split == "train" and max_train_slices else block[split])
            for u, block in enumerate(plan) for split in ("train", "val", "test")]


def dynamic_picks(plan: list[dict[str, list[int]]], n_train: int, n_val: int,
                  n_test: int) -> list[tuple[str, int]]:
    """``(split, z)`` of the 2D+time series: train spread over the blocks' train slices, val/test from the
    blocks' val/test slices."""
    train_pool = [z for b in plan for z in b["train"][1::2]]
    picks = {"train": [train_pool[int(i)] for i in np.linspace(0, len(train_pool) - 1, n_train).round()]
             if n_train else [],
             "val": [b["val"][0] for b in plan][:n_val], "test": [b["test"][0] for b in plan][::-1][:n_test]}
    return [(split, z) for split in ("train", "val", "test") for z in picks[split]]


def build_dynamic(out: Path, seed: int = 0, *, size: int = 96, coils: int = 8, snr_db: float = 30.0,
                  contrasts: Sequence[str] = anatomy.CONTRASTS, frames: int = 12, n_train: int = 8,
                  n_val: int = 2, n_test: int = 2, units: int = 4, spacing_mm: float = 1.5, gap_mm: int = 5,
                  acceleration: float = 4.0, center_fraction: float = 0.08, resp_mm: float = 3.0,
                  card_mm: float = 2.5, card_cycles: int = 2) -> dict[str, Any]:
    """Build the 2D+time set (one moving axial slice per file) into ``out/{train,val,test}``."""

    plan = plan_axial_splits(units, spacing_mm, gap_mm)
    fov = anatomy.axial_fov_mm()
    mask_obj = RandomMask(center_fraction, acceleration)
    files: list[dict[str, Any]] = []
    for k, (split, z) in enumerate(dynamic_picks(plan, n_train, n_val, n_test)):
        contrast = list(contrasts)[k % len(contrasts)]
        name = f"dyn_{contrast}_z{z:03d}.h5"
        rng = _rng(seed, name)
        mag = moving_series(contrast, z, frames, size, rng, resp_mm, card_mm, card_cycles)[None]
        sim = simulate_file(mag, "2d+t", coils, snr_db, rng)
        mask = mask_obj((frames, size, size), seed=fname_seed(name), dims="2d+t").numpy()  # [T, 1, W]
        header = make_header((size, size, 1), (fov, fov, 1.0), coils, phase_steps=size, repetitions=frames)
        attrs = {"dims": "2d+t", "contrast": contrast, "snr_db": snr_db, "seed": seed, "frames": frames,
                 "z_index_mm": np.asarray([z], np.int32), "voxel_size_mm": [1.0, fov / size, fov / size],
                 "resp_mm": resp_mm, "card_mm": card_mm, "card_cycles": card_cycles,
                 "mask_default": repr(mask_obj)}
        digest = _write_file(out / split / name, sim, mask, header, attrs)
        files.append({"file": f"{split}/{name}", "split": split, "contrast": contrast, "z_index_mm": [int(z)],
                      "slices": 1, "frames": frames, "sha256": digest})
    return {"files": files, "plan": plan}


_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {"2d": build_2d, "3d": build_3d, "dynamic": build_dynamic}
_DATASETS: dict[str, Callable[..., Any]] = {}
_LAYOUTS = {"2d": "kspace [S,C,H,W]; maps [1,C,H,W]; mask [W]",
            "3d": "kspace [1,C,D,H,W]; maps [1,C,D,H,W]; mask [H,W]",
            "dynamic": "kspace [1,C,T,H,W]; maps [1,C,T,H,W] (static); mask [T,1,W]"}
_NOTES: dict[str, str] = {}
_INVERSE_CRIME_NOTE = ("SIMULATED multi-coil k-space from a real anatomical template (inverse crime: the same discrete "
                       "forward model simulates and reconstructs; results are optimistic and not comparable with "
                       "raw-data numbers).")


def register_kind(kind: str, builder: Callable[..., dict[str, Any]], dataset: Callable[..., Any],
                  defaults: dict[str, Any], layout: str, note: str) -> None:
    """Add a built-in data kind (its name must be in :data:`molrecon.names.DIMS_OF_KIND`): the builder
    ``builder(out, seed, **params)``, the dataset class of one split folder, the default parameters, and the
    manifest's layout line and note (:mod:`molrecon.data.builtin_radial` registers the non-Cartesian kinds)."""
    if kind not in DIMS_OF_KIND:
        raise InputError(f"unknown data kind {kind!r}: add it to molrecon.names.DIMS_OF_KIND first")
    _BUILDERS[kind], _DATASETS[kind], DEFAULTS[kind], _LAYOUTS[kind], _NOTES[kind] = (builder, dataset, defaults,
                                                                                      layout, note)


def build_builtin(out: str | os.PathLike, kind: str = "2d", seed: int = 0, overwrite: bool = False,
                  **params: Any) -> Path:
    """Build one kind of the built-in set into ``out`` (the folder of that kind: ``out/{train,val,test}`` and
    ``out/manifest.json``), atomically: everything is written into a temporary sibling folder that is renamed
    into place at the end. ``params`` override :data:`DEFAULTS` (e.g. ``size=32`` for tiny builds).
    """
    import nilearn

    kind = normalize_kind(kind)
    out = Path(out)
    unknown = set(params) - set(DEFAULTS[kind]) - {"max_train_slices"}
    if unknown:
        raise InputError(f"unknown parameter(s) for the {kind} set: {', '.join(sorted(unknown))}")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (use overwrite=True / --force to rebuild)")
    cfg = {**DEFAULTS[kind], **params}
    for c in cfg["contrasts"]:
        if c not in anatomy.CONTRASTS:
            raise InputError(f"unknown contrast {c!r} (choose from {', '.join(anatomy.CONTRASTS)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        t0 = time.perf_counter()
        result = _BUILDERS[kind](tmp, seed, **cfg)
        seconds = time.perf_counter() - t0
        splits = {s: [f["file"] for f in result["files"] if f["split"] == s] for s in ("train", "val", "test")}
        manifest = {
            "name": f"molrecon-builtin-{kind}", "format_version": FORMAT_VERSION, "kind": kind,
            "dims": DIMS_OF_KIND[kind], "simulated": True,
            "note": _NOTES.get(kind, _INVERSE_CRIME_NOTE),
            "source": {"anatomy": anatomy.TEMPLATE_NAME, "package": f"nilearn {nilearn.__version__}",
                       "files": [{"file": Path(p).name, "sha256": sha256_file(Path(p))}
                                 for p in anatomy.template_files()],
                       "licence": "MNI ICBM152 2009 template, Copyright (C) 1993-2009 Louis Collins, McConnell "
                                  "Brain Imaging Centre, Montreal Neurological Institute, McGill University; "
                                  "permissive licence (copy/modify/distribute with the copyright notice); "
                                  "see docs/data.md",
                       "references": ["Fonov et al., NeuroImage 54(1) 2011", "Fonov et al., NeuroImage 47 S102 "
                                      "2009", "Collins et al., 1999"]},
            "parameters": cfg, "seed": int(seed), "splits": splits, "files": result["files"],
            "num_slices": {s: sum(f["slices"] for f in result["files"] if f["split"] == s) for s in splits},
            "layout": _LAYOUTS[kind],
            "plan": result.get("plan"),
            "build": {"seconds": round(seconds, 2), "molrecon": __version__, "torch": torch.__version__},
        }

        with atomic_write(tmp / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=1)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_builtin(kind: str = "2d", root: str | os.PathLike | None = None, seed: int = 0,
                   **params: Any) -> Path:
    """Return ``ROOT/<kind>`` (``ROOT`` = ``root`` or :func:`default_root`), building it first if absent
    (with ``seed`` and ``params``, see :func:`build_builtin`; an existing set is returned as it is).

    Concurrent callers serialise on a lock file ``ROOT/.<kind>.lock``; the build itself lands by an atomic
    folder rename, so a reader never sees half a dataset.
    """
    kind = normalize_kind(kind)
    root = Path(root) if root is not None else default_root()
    folder = root / kind
    if (folder / "manifest.json").exists():
        return folder
    with file_lock(root / f".{kind}.lock"):
        if not (folder / "manifest.json").exists():
            build_builtin(folder, kind, seed=seed, overwrite=True, **params)
    return folder


def load_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``folder/manifest.json`` (``folder`` = one kind's folder)."""
    path = Path(folder) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest (not a built-in dataset folder?)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: corrupted manifest ({exc})") from None


def verify_builtin(folder: str | os.PathLike) -> list[str]:
    """Check every file of a built set against the manifest's sha256; return the problems (empty = fine)."""
    folder = Path(folder)
    problems = []
    for entry in load_manifest(folder)["files"]:
        path = folder / entry["file"]
        if not path.exists():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: checksum mismatch")
    return problems


def builtin_dataset(kind: str = "2d", split: str = "train", root: str | os.PathLike | None = None,
                    mask_func: Any = None, **kwargs: Any):
    """The dataset of one split of the built-in set (built first if absent): a
    :class:`~molrecon.data.SliceDataset` for the Cartesian kinds, the registered class otherwise
    (:class:`~molrecon.data.builtin_radial.RadialDataset`: ``spokes=...`` instead of a ``mask_func``)."""

    if split not in ("train", "val", "test"):
        raise InputError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = ensure_builtin(kind, root)
    dataset = _DATASETS.get(normalize_kind(kind), SliceDataset)
    return dataset(folder / split, mask_func=mask_func, **kwargs)


def builtin_test_example(index: int = 0, kind: str = "2d", root: str | os.PathLike | None = None,
                         mask_func: Any = None):
    """One test item of the built-in set as ``(y [1, C, *sp], physics, target [1, *sp])`` (complex64)."""

    ds = builtin_dataset(kind, "test", root, mask_func=mask_func)
    if not 0 <= index < len(ds):
        raise InputError(f"test example index {index} out of range (the {kind} test split has {len(ds)} items)")

    batch = collate([ds[index]])
    return batch["kspace"], physics_from_batch(batch), batch["target"]
