"""PNG plots of the benchmarks (written atomically through :func:`molrecon.io.save_figure_atomic`); each method
has the colour and marker of :data:`molrecon.names.METHODS` in every figure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..io import save_figure_atomic
from ..names import METHODS

STYLE = {name: (spec.color, spec.marker) for name, spec in METHODS.items()}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the benchmark machines
    import matplotlib.pyplot as plt

    return plt


def plot_memory(rows: Sequence[dict], path: str | os.PathLike, summary: Sequence[dict] = ()) -> None:
    """Peak MiB of one training step vs iterations, one panel per dims, one line per method (dotted: the bytes
    saved for backward, when measured); MoDL's fitted line ``a + bK`` dashed (the budget extrapolation)."""

    plt = _plt()
    dims_list = list(dict.fromkeys(r["dims"] for r in rows))
    fig, axes = plt.subplots(1, len(dims_list), figsize=(4.6 * len(dims_list), 3.8), squeeze=False)
    fits = {s["dims"]: s for s in summary}
    for ax, dims in zip(axes[0], dims_list):
        sub = [r for r in rows if r["dims"] == dims]
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted((r["iters"], r["peak_mib"]) for r in sub if r["method"] == method)
            color, marker = STYLE.get(method, ("k", "x"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=method)
            saved = sorted((r["iters"], r["saved_mib"]) for r in sub if r["method"] == method and "saved_mib" in r)
            if saved:
                ax.plot([p[0] for p in saved], [p[1] for p in saved], marker=marker, color=color, ls=":",
                        mfc="none", label=f"{method} saved")
        s = fits.get(dims, {})
        if "modl_slope_mib_per_iter" in s:
            kmax = max(r["iters"] for r in sub)
            ax.plot([0, kmax], [s["modl_intercept_mib"], s["modl_intercept_mib"] + s["modl_slope_mib_per_iter"] * kmax],
                    ls="--", color=STYLE["modl"][0], lw=0.8, label="MoDL fit")
        shape = "×".join(map(str, sub[0]["shape"]))
        ax.set_title(f"{dims} ({shape}, {sub[0].get('coils', '?')} coils, {sub[0]['device']})")
        ax.set_xlabel("iterations (MoDL: K; MOL: max_iter)")
        ax.set_ylabel("peak memory of one training step (MiB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_fit(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Peak MiB of one 3D training step vs the volume's side, one line per method; a cross where the step ran out
    of memory (``molrecon bench fit``)."""

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    top = max([r["peak_mib"] for r in rows if r["fits"]] or [1.0])
    for method in dict.fromkeys(r["method"] for r in rows):
        own = sorted((r for r in rows if r["method"] == method), key=lambda r: r["size"])
        color, marker = STYLE.get(method, ("k", "x"))
        fits = [r for r in own if r["fits"]]
        ax.plot([r["size"] for r in fits], [r["peak_mib"] for r in fits], marker=marker, color=color, label=method)
        for r in own:
            if not r["fits"]:
                ax.plot([r["size"]], [top], marker="X", ms=10, color=color, ls="none")
    ax.set_xlabel("volume side N (N³ voxels)")
    ax.set_ylabel("peak memory of one training step (MiB)")
    ax.set_title(f"3D training step on {rows[0]['device'] if rows else '?'} (X: out of memory)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_speed(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Left: share of inference time per component (stacked bars per model). Right: forward iterations to
    ``tol``, plain vs Anderson."""

    plt = _plt()
    models = results.get("models", [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    cats = list(dict.fromkeys(c for m in models for c in m.get("profile", {}).get("shares", {})))
    colors = plt.cm.tab10.colors
    labels = [m["label"] for m in models if m.get("profile")]
    bottoms = [0.0] * len(labels)
    for i, c in enumerate(cats):
        vals = [m["profile"]["shares"].get(c, 0.0) for m in models if m.get("profile")]
        axes[0].bar(range(len(labels)), vals, bottom=bottoms, color=colors[i % 10], label=c)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    axes[0].axhline(0.7, color="k", ls=":", lw=0.8)
    axes[0].set_xticks(range(len(labels)), labels, rotation=15, ha="right", fontsize=8)
    axes[0].set_ylabel("share of inference time")
    axes[0].set_title("where the time goes (dotted: CNN target 70 %)")
    axes[0].legend(fontsize=7)
    it_models = [m for m in models if m.get("iterations")]
    width = 0.38
    for j, solver in enumerate(("plain", "anderson")):
        vals = [m["iterations"][solver]["iterations"] for m in it_models]
        axes[1].bar([i + (j - 0.5) * width for i in range(len(it_models))], vals, width, label=solver)
    axes[1].set_xticks(range(len(it_models)), [m["label"] for m in it_models], rotation=15, ha="right",
                       fontsize=8)
    axes[1].set_ylabel(f"forward iterations to tol {results.get('tol', '')}")
    axes[1].set_title("plain vs Anderson")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_quality(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """PSNR (left) and SSIM (right) per method, one bar group per acceleration, error bars = std."""

    plt = _plt()
    accels = list(dict.fromkeys(r["acceleration"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(accels))
    for ax, key in zip(axes, ("psnr", "ssim")):
        for j, a in enumerate(accels):
            xs, vals, errs = [], [], []
            for i, m in enumerate(methods):
                r = next((r for r in rows if r["method"] == m and r["acceleration"] == a), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(accels) - 1) / 2) * width)
                vals.append(r[key])
                errs.append(r.get(f"{key}_std") or 0.0)
            ax.bar(xs, vals, width, yerr=errs, capsize=2, label=f"{a:g}×")
        ax.set_xticks(range(len(methods)), methods, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("PSNR (dB)" if key == "psnr" else "SSIM")
        if key == "ssim":
            ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_train(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Left: median training-step time per method, grouped by dims. Then one panel per dims: validation PSNR
    against summed training-step time (the curves the time-to-PSNR figures are read from)."""

    plt = _plt()
    dims_list = list(dict.fromkeys(r["dims"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 1 + len(dims_list), figsize=(4.6 * (1 + len(dims_list)), 3.8), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(methods))
    # one colour per method of the run (variants such as mol-lr@cg_iter=15 or *-cached are methods of their own)
    colors = {m: plt.cm.tab10(j % 10) for j, m in enumerate(methods)}
    for j, method in enumerate(methods):
        vals = [next((r["step_time_median_s"] for r in rows if r["dims"] == d and r["method"] == method), 0.0)
                for d in dims_list]
        ax.bar([i + j * width for i in range(len(dims_list))], vals, width, color=colors[method], label=method)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(dims_list))], dims_list)
    ax.set_ylabel("training step (s, median)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    for ax, dims in zip(axes[0][1:], dims_list):
        for r in (r for r in rows if r["dims"] == dims):
            base = r["method"].split("@")[0].removesuffix("-cached")
            marker = STYLE.get("modl" if base.startswith("modl") else base, ("k", "x"))[1]
            pts = [(c["train_seconds"], c["val_psnr"]) for c in r["val_curve"]]
            ls = "--" if base.startswith("modl") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colors[r["method"]], ls=ls,
                    label=r["method"])
        target = next((r.get("target_psnr") for r in rows if r["dims"] == dims), None)
        if target is not None:
            ax.axhline(target, color="gray", lw=0.8, ls=":")
        ax.set_title(f"{dims}: validation PSNR vs training time")
        ax.set_xlabel("summed step time (s)")
        ax.set_ylabel("val PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path)
