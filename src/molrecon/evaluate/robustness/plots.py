"""Figures of the robustness report (:mod:`molrecon.evaluate.robustness`), written atomically as PNG.

- ``amplification_vs_eps.png``: worst-case amplification ‖Δx‖/‖δ‖ per method against ε (solid), random
  perturbations of the same norms (dashed: mean; dotted: max), and the MOL certificate C as a horizontal line;
- ``convergence.png``: residual ‖x_{n+1} − x_n‖/‖x_n‖ against the iteration (plain iteration solid, the model's
  solver dashed) and PSNR against the iteration, with each model's training iteration count marked;
- ``adversarial_examples.png``: per method, x(b), x(b+δ) at the largest ε and |x(b+δ) − x(b)| (the difference
  maps share one colour scale across methods so that they can be compared);
- ``distribution_shift.png``: PSNR against the acceleration and against the added-noise SNR.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...io import save_figure_atomic
from ...names import method_color


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(res: Mapping[str, Any], label: str, i: int) -> str:
    method = res.get("models", {}).get(label, {}).get("method")
    return method_color(method, f"C{i % 10}")


def plot_amplification(res: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Amplification vs ε per method (log scale), random perturbations and certificates alongside."""

    attack = res.get("attack", {})
    if not attack:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (label, rows) in enumerate(attack.items()):
        c = _color(res, label, i)
        eps = [r["eps"] for r in rows]
        ax.plot(eps, [r["amplification_max"] for r in rows], "o-", color=c, label=f"{label}: worst case")
        rnd = res.get("random", {}).get(label)
        if rnd:
            ax.plot([r["eps"] for r in rnd], [r["amplification_mean"] for r in rnd], "s--", color=c, alpha=0.7,
                    label=f"{label}: random (mean)")
            ax.plot([r["eps"] for r in rnd], [r["amplification_max"] for r in rnd], ":", color=c, alpha=0.7)
        consts = [r["certificate_min"] for r in rows if r.get("certificate_min")]
        if consts:
            certified = bool(rows[0].get("certified"))
            ax.axhline(min(consts), color=c, ls="-." if certified else (0, (1, 3)), lw=1.2,
                       label=f"{label}: C = {min(consts):.3g} ({'certified' if certified else 'estimate'})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ε  (‖δ‖ = ε‖b‖)")
    ax.set_ylabel("amplification ‖x(b+δ) − x(b)‖ / ‖δ‖")
    ax.set_title("Worst-case vs random k-space perturbations")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    out = Path(path)
    save_figure_atomic(fig, out)
    return out


def plot_convergence(res: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Residual and PSNR against the iteration (first slice of the convergence study)."""

    conv = res.get("convergence", {})
    if not conv:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, studies) in enumerate(conv.items()):
        s = studies[0]
        c = _color(res, label, i)
        plain = s.get("plain") or {}
        r = plain.get("residual") or []
        if r:
            it = np.arange(1, len(r) + 1)
            ax1.semilogy(it, np.maximum(r, 1e-12), "-", color=c, label=f"{label}: plain")
            ax2.plot(it, plain["psnr"], "-", color=c, label=label)
            if plain.get("diverged_at"):
                ax1.axvline(plain["diverged_at"], color=c, ls=":", lw=1)
        sol = s.get("solver") or {}
        if sol.get("residual"):
            rs = sol["residual"]
            ax1.semilogy(np.arange(1, len(rs) + 1), np.maximum(rs, 1e-12), "--", color=c,
                         label=f"{label}: {sol.get('name') or 'solver'}")
        k = s.get("trained_iterations")
        if k:
            ax2.axvline(k, color=c, ls=":", lw=1)
    ax1.set_xlabel("iteration n")
    ax1.set_ylabel("‖x_{n+1} − x_n‖ / ‖x_n‖")
    ax1.set_title("Residual, run far past the training iteration count")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.set_xlabel("iteration n")
    ax2.set_ylabel("PSNR (dB)")
    ax2.set_title("Image quality vs iteration (dotted: training count)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    out = Path(path)
    save_figure_atomic(fig, out)
    return out


def plot_examples(res: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Rows: methods; columns: target, x(b), x(b+δ), |difference| (shared colour scale)."""

    images = res.get("_images", {})
    if not images:
        return None
    plt = _plt()
    labels = list(images)
    dmax = max(float(np.max(im["difference"])) for im in images.values()) or 1.0
    vmax = max(float(np.max(im["target"])) for im in images.values()) or 1.0
    fig, axes = plt.subplots(len(labels), 4, figsize=(10, 2.6 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        im = images[label]
        panels = [("target", im["target"], vmax, "gray"), ("x(b)", im["clean"], vmax, "gray"),
                  (f"x(b+δ), ε={im['eps']:g}", im["perturbed"], vmax, "gray"),
                  ("|x(b+δ) − x(b)|", im["difference"], dmax, "inferno")]
        for col, (title, a, top, cmap) in enumerate(panels):
            ax = axes[row, col]
            h = ax.imshow(np.asarray(a), cmap=cmap, vmin=0, vmax=top)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0 or col > 0:
                ax.set_title(title if col else f"{label}\n{title}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
            if col == 3:
                fig.colorbar(h, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("Worst-case perturbation: reconstructions and difference maps", fontsize=10)
    out = Path(path)
    save_figure_atomic(fig, out)
    return out


def plot_shift(res: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """PSNR vs acceleration and vs added-noise SNR per method (CG-SENSE as reference)."""

    shift = res.get("shift", {})
    if not shift:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    base_acc = res.get("data_acceleration")
    for i, (label, s) in enumerate(shift.items()):
        c = "gray" if label.startswith("sense") else _color(res, label, i)
        pts = []
        for key, v in s.get("acceleration", {}).items():
            acc = base_acc if key == "data" else float(key)
            if acc is not None:
                pts.append((float(acc), v["psnr"]))
        pts.sort()
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=label)
        noise = sorted((float(k), v["psnr"]) for k, v in s.get("noise", {}).items())
        clean = s.get("acceleration", {}).get("data")
        xs = [n[0] for n in noise]
        ys = [n[1] for n in noise]
        if clean is not None:
            xs, ys = [*xs, 60.0], [*ys, clean["psnr"]]
        if xs:
            ax2.plot(xs, ys, "o-", color=c, label=label)
    ax1.set_xlabel("acceleration")
    ax1.set_ylabel("PSNR (dB)")
    ax1.set_title("Acceleration shift")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.set_xlabel("added-noise SNR (dB; 60 = data as stored)")
    ax2.set_ylabel("PSNR (dB)")
    ax2.set_title("Noise shift")
    ax2.grid(True, alpha=0.3)
    out = Path(path)
    save_figure_atomic(fig, out)
    return out


def write_plots(res: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """All figures that the results allow; returns the written paths."""
    out = Path(out_dir)
    made = [plot_amplification(res, out / "amplification_vs_eps.png"),
            plot_convergence(res, out / "convergence.png"),
            plot_examples(res, out / "adversarial_examples.png"),
            plot_shift(res, out / "distribution_shift.png")]
    return [p for p in made if p is not None]


__all__ = ["plot_amplification", "plot_convergence", "plot_examples", "plot_shift", "write_plots"]
