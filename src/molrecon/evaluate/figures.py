"""Comparison figure: ground truth and every method's reconstruction, with error maps, as one PNG grid.

Top row: magnitudes on a common grey scale ``[0, data_range]`` (the target volume maximum, as the metrics use).
Bottom row: ``||x| - |t||`` on a common scale — the 99.5th percentile of all methods' errors inside the object —
so that the maps are comparable across methods; under the ground truth, the object support the metrics use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..io import save_figure_atomic
from ..names import display_name


def comparison_grid(target: np.ndarray, images: Mapping[str, np.ndarray], path: str | os.PathLike,
                    metrics: Mapping[str, Mapping[str, float]] | None = None, data_range: float | None = None,
                    support: np.ndarray | None = None, title: str | None = None) -> None:
    """Write the grid for one 2D slice: ``target`` and ``images`` are magnitudes ``[H, W]`` (complex accepted).

    ``metrics[name]`` (``psnr``, ``ssim``) is printed under each column; the file is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers/CI; must precede pyplot
    import matplotlib.pyplot as plt

    t = np.abs(np.asarray(target, dtype=np.complex128 if np.iscomplexobj(target) else np.float64))
    mags = {k: np.abs(np.asarray(v)) for k, v in images.items()}
    vmax = float(data_range) if data_range else float(t.max())
    inside = np.ones_like(t, dtype=bool) if support is None else np.asarray(support, dtype=bool)
    errs = {k: np.abs(m - t) for k, m in mags.items()}
    pooled = np.concatenate([e[inside] for e in errs.values()]) if errs else np.zeros(1)
    emax = float(np.percentile(pooled, 99.5)) if pooled.size else 1.0
    emax = emax if emax > 0 else 1.0

    ncol = 1 + len(mags)
    fig, axes = plt.subplots(2, ncol, figsize=(2.4 * ncol + 0.6, 5.4), squeeze=False, layout="constrained")
    axes[0, 0].imshow(t, cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("Ground truth", fontsize=9)
    axes[1, 0].imshow(inside, cmap="gray", vmin=0, vmax=1)
    axes[1, 0].set_title("object support", fontsize=8)
    err_im = None
    for j, (name, m) in enumerate(mags.items(), start=1):
        axes[0, j].imshow(m, cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(display_name(name), fontsize=9)
        err_im = axes[1, j].imshow(errs[name], cmap="inferno", vmin=0, vmax=emax)
        s = (metrics or {}).get(name)
        if s:
            axes[1, j].set_title(f"{s['psnr']:.2f} dB / {s['ssim']:.3f}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if err_im is not None:
        cbar = fig.colorbar(err_im, ax=axes[1, -1], shrink=0.9)
        cbar.set_label("| |x| - |t| |", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure_atomic(fig, path)
