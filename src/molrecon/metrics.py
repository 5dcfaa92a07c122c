"""Image-quality metrics computed as fastMRI does (``docs/conventions.md``).

All metrics act on the magnitude. PSNR and SSIM use ``data_range`` = the maximum of the *target volume*
(not 1.0, not the slice maximum); SSIM uses a 7×7 window (scikit-image, as fastMRI's ``evaluate.py``);
NMSE = ‖x − t‖² / ‖t‖².

Two PSNRs are reported in this project, and every report names the one it uses (``psnr_definition``):
:data:`PSNR_OBJECT_SUPPORT` (``molrecon evaluate``, ``demo``, ``bench quality``) and :data:`PSNR_WHOLE_IMAGE`
(training validation, the pretrained sidecars' validation figures, the robustness studies).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: fastMRI's evaluation: the magnitude inside the object support, data range = max |target| of the volume.
PSNR_OBJECT_SUPPORT = "object-support: magnitude inside the object support, data range = max |target| of the volume"
#: Training validation and robustness: the magnitude over the whole image, data range = max |target| of the item.
PSNR_WHOLE_IMAGE = "whole-image: magnitude over the whole image, data range = max |target| of the slice or item"


def _magnitude(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    return np.abs(a).astype(np.float64)


def _apply_support(pred: np.ndarray, target: np.ndarray, support: Any | None) -> tuple[np.ndarray, np.ndarray]:
    if support is None:
        return pred, target
    s = np.asarray(support.detach().cpu().numpy() if hasattr(support, "detach") else support).astype(bool)
    return pred * s, target * s


def nmse(pred: Any, target: Any, support: Any | None = None) -> float:
    """Normalised mean squared error ‖|x| − |t|‖² / ‖|t|‖²."""
    p, t = _apply_support(_magnitude(pred), _magnitude(target), support)
    return float(np.sum((p - t) ** 2) / max(np.sum(t**2), 1e-30))


def psnr(pred: Any, target: Any, data_range: float | None = None, support: Any | None = None) -> float:
    """Peak SNR in dB of the magnitudes; ``data_range`` defaults to the target's maximum."""
    p, t = _apply_support(_magnitude(pred), _magnitude(target), support)
    dr = float(t.max()) if data_range is None else float(data_range)
    mse = float(np.mean((p - t) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(dr**2 / mse))


def ssim(pred: Any, target: Any, data_range: float | None = None, support: Any | None = None) -> float:
    """Structural similarity of the magnitudes (7×7 window, fastMRI's parameters), averaged over slices
    when given ``[slices, H, W]`` (or frames/partitions of a 3D array)."""
    from skimage.metrics import structural_similarity

    p, t = _apply_support(_magnitude(pred), _magnitude(target), support)
    dr = float(t.max()) if data_range is None else float(data_range)
    if p.ndim == 2:
        return float(structural_similarity(t, p, data_range=dr, win_size=7))
    flat_p = p.reshape(-1, *p.shape[-2:])
    flat_t = t.reshape(-1, *t.shape[-2:])
    return float(np.mean([structural_similarity(ti, pi, data_range=dr, win_size=7)
                          for pi, ti in zip(flat_p, flat_t)]))


def evaluate_volume(pred: Any, target: Any, data_range: float | None = None,
                    support: Any | None = None) -> dict[str, float]:
    """PSNR, SSIM and NMSE of one volume (``[slices, H, W]``, ``[D, H, W]`` or ``[T, H, W]``) or slice."""
    t = _magnitude(target)
    dr = float(t.max()) if data_range is None else float(data_range)
    return {
        "psnr": psnr(pred, target, dr, support),
        "ssim": ssim(pred, target, dr, support),
        "nmse": nmse(pred, target, support),
    }


def object_support(target: Any, threshold: float = 0.05, dilate: int = 3) -> np.ndarray:
    """A mask of the object: |target| above ``threshold``·max, closed and dilated so that edges count."""
    from scipy import ndimage

    t = _magnitude(target)
    s = t > threshold * t.max()
    if dilate > 0:
        s = ndimage.binary_dilation(s, iterations=dilate)
    return ndimage.binary_fill_holes(s) if s.ndim == 2 else s
