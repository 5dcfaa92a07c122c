r"""Real anatomy for the built-in dataset: the MNI ICBM152 2009 template bundled inside the nilearn wheel.

Source (nothing is downloaded): ``nilearn.datasets.load_mni152_template``, ``load_mni152_gm_template`` and
``load_mni152_wm_template`` at ``resolution=1`` read the files ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted
.nii.gz`` shipped in ``nilearn/datasets/data`` (1 mm isotropic, 197×233×189 voxels, RAS+ axes, skull-stripped
T1-weighted average of 152 adults; grey/white-matter probability maps). Reference: Fonov et al., NeuroImage 2011
and 2009; Collins et al. 1999. See ``docs/data.md`` for the licence notes.

Contrasts. The T1 image is the template itself. Other weightings are made from the tissue probabilities
:math:`p_{GM}, p_{WM}` and :math:`p_{CSF} = \operatorname{clip}(b - p_{GM} - p_{WM}, 0, 1)` (``b`` a soft brain
mask, the template's support) as a linear mix

.. math:: m(r) = w_{CSF}\,p_{CSF}(r) + w_{GM}\,p_{GM}(r) + w_{WM}\,p_{WM}(r)

with the weights in :data:`CONTRAST_WEIGHTS` (T2-like: CSF bright, GM > WM; PD-like: flat, CSF ≥ GM > WM;
FLAIR-like: CSF suppressed, GM > WM). These are *simulated* weightings of real tissue maps, not scans.

Image orientation used everywhere in :mod:`molrecon.data`: an axial slice is ``[H, W]`` with row 0 anterior
(rows run anterior → posterior) and column 0 the patient's right (radiological view); 3D volumes are
``[D, H, W]`` with ``D`` running inferior → superior.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

CONTRASTS = ("t1", "t2", "pd", "flair")
CONTRAST_WEIGHTS: dict[str, tuple[float, float, float]] = {
    # (CSF, GM, WM) signal weights of the simulated weightings
    "t2": (1.0, 0.45, 0.30),
    "pd": (0.90, 0.80, 0.65),
    "flair": (0.04, 0.75, 0.50),
}
TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric (nilearn bundled, 1 mm)"


@functools.lru_cache(maxsize=1)
def load_tissue_volumes() -> dict[str, np.ndarray]:
    """The 1 mm template volumes ``t1, gm, wm, csf, brain`` as float32 arrays in array order (x, y, z), RAS+.

    Cached for the process (about 0.5 s on first call).
    """
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    t1 = t1 / max(float(t1.max()), 1e-6)
    gm = np.clip(gm, 0, 1)
    wm = np.clip(wm, 0, 1)
    # Soft brain support: the (skull-stripped) template's own support, slightly smoothed at the edge.
    brain = np.clip(t1 / 0.15, 0, 1)
    csf = np.clip(brain - gm - wm, 0, 1)
    return {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "brain": brain}


def template_files() -> list[str]:
    """Paths of the bundled NIfTI files used (recorded with checksums in the manifest)."""
    from nilearn.datasets import struct

    return [str(struct.MNI152_FILE_PATH), str(struct.GM_MNI152_FILE_PATH), str(struct.WM_MNI152_FILE_PATH)]


@functools.lru_cache(maxsize=4)
def contrast_volume(contrast: str) -> np.ndarray:
    """The 1 mm magnitude volume (x, y, z) for ``contrast`` in :data:`CONTRASTS` (values in [0, 1])."""
    vols = load_tissue_volumes()
    if contrast == "t1":
        return vols["t1"]
    if contrast not in CONTRAST_WEIGHTS:
        raise InputError(f"unknown contrast {contrast!r} (choose from {', '.join(CONTRASTS)})")
    w_csf, w_gm, w_wm = CONTRAST_WEIGHTS[contrast]
    return (w_csf * vols["csf"] + w_gm * vols["gm"] + w_wm * vols["wm"]).astype(np.float32)


def brain_z_range(min_area_fraction: float = 0.2) -> tuple[int, int]:
    """First and last axial index (1 mm) whose brain cross-section exceeds ``min_area_fraction`` of the largest."""
    area = (load_tissue_volumes()["brain"] > 0.5).sum(axis=(0, 1))
    idx = np.nonzero(area > min_area_fraction * area.max())[0]
    return int(idx[0]), int(idx[-1])


def _square_axial(vol: np.ndarray, z: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Axial slices at indices ``z`` in display orientation, zero-padded to a square: ``[Z, N, N]``."""
    sl = vol[:, :, np.asarray(z)]  # (x, y, Z)
    # rows anterior→posterior (y reversed), columns patient right→left (x reversed): radiological view
    sl = np.ascontiguousarray(np.transpose(sl[::-1, ::-1, :], (2, 1, 0)))
    n = max(sl.shape[1], sl.shape[2])
    out = np.zeros((sl.shape[0], n, n), np.float32)
    oh, ow = (n - sl.shape[1]) // 2, (n - sl.shape[2]) // 2
    out[:, oh:oh + sl.shape[1], ow:ow + sl.shape[2]] = sl
    return torch.from_numpy(out)


def axial_slices(contrast: str, z: Sequence[int], size: int) -> np.ndarray:
    """Axial slices ``[len(z), size, size]`` of ``contrast`` at 1 mm indices ``z``, area-resampled (anti-aliased)
    from the square 233 mm field of view; pixel size ``233/size`` mm."""
    sq = _square_axial(contrast_volume(contrast), z)
    return F.interpolate(sq[:, None], size=(size, size), mode="area")[:, 0].numpy()


def axial_fov_mm() -> float:
    """Field of view (mm) of the square axial slices (the template's larger in-plane extent)."""
    shape = load_tissue_volumes()["t1"].shape
    return float(max(shape[0], shape[1]))


def cube_volume(contrast: str, size: int, fov_mm: int = 208, oversample: int = 2) -> torch.Tensor:
    """A ``[D, H, W]`` cube of side ``fov_mm`` centred on the brain, area-resampled to ``oversample*size``
    voxels per side (``D`` inferior→superior, ``H`` anterior→posterior, ``W`` right→left)."""
    vol = contrast_volume(contrast)
    brain = load_tissue_volumes()["brain"] > 0.5
    centre = [int(round(np.mean(np.nonzero(brain.any(axis=tuple(j for j in range(3) if j != i)))[0][[0, -1]])))
              for i in range(3)]
    out = np.zeros((fov_mm,) * 3, np.float32)
    src, dst = [], []
    for i in range(3):
        lo = centre[i] - fov_mm // 2
        s0, s1 = max(lo, 0), min(lo + fov_mm, vol.shape[i])
        src.append(slice(s0, s1))
        dst.append(slice(s0 - lo, s1 - lo))
    out[tuple(dst)] = vol[tuple(src)]
    # (x, y, z) -> (z, y reversed, x reversed)
    out = np.ascontiguousarray(np.transpose(out[::-1, ::-1, :], (2, 1, 0)))
    t = torch.from_numpy(out)[None, None]
    n = oversample * size
    return F.interpolate(t, size=(n, n, n), mode="area")[0, 0]
