"""The driver: every study for every model on the examples, aggregated, with the acceptance verdicts; and
the examples (slices) it runs on."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data import collate, physics_from_batch
from ...errors import InputError, MolreconError
from ...physics import LinearPhysics, default_center_fraction
from ...tensor_utils import batch_norms
from ..evaluation import load_dataset
from .adapters import is_fixed_point_model, measured_data, method_of, reconstruct
from .attack import (
    certificate_of,
    certificate_verdict,
    measure_perturbations,
    random_perturbation,
    worst_case_perturbation,
)
from .config import Example, RobustnessConfig
from .studies import convergence_study, evaluate_setting, uniqueness_study


# ----------------------------------------------------------------------------------------------- the driver
def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _label_models(models: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    if isinstance(models, Mapping):
        return dict(models)
    out: dict[str, Any] = {}
    for m in models:
        name = method_of(m)
        k, label = 2, name
        while label in out:
            label, k = f"{name}#{k}", k + 1
        out[label] = m
    return out


def run_robustness(models: Mapping[str, Any] | Sequence[Any], examples: Sequence[Example],
                   config: RobustnessConfig | None = None,
                   shift_examples: Mapping[float, Sequence[Example]] | None = None,
                   progress: Callable[[str], None] | None = None,
                   data_acceleration: float | None = None) -> dict[str, Any]:
    """Run every measurement of ``config.parts`` for every model on ``examples``; return the results dict
    (what :func:`write_report` writes). ``models`` maps labels to models (or is a list, labelled by method);
    ``shift_examples`` maps an acceleration to the same slices undersampled at that acceleration;
    ``data_acceleration`` is the acceleration of ``examples`` themselves (for the shift table and plot).
    """
    cfg = (config or RobustnessConfig()).validate()
    if not examples:
        raise InputError("robustness: no slice to measure on")
    labelled = _label_models(models)
    if not labelled:
        raise InputError("robustness: no model given")
    t_start = time.perf_counter()
    res: dict[str, Any] = {"config": asdict(cfg), "examples": [e.name for e in examples],
                           "data_acceleration": data_acceleration, "models": {},
                           "attack": {}, "random": {}, "convergence": {}, "uniqueness": {}, "shift": {},
                           "certificate": {}}
    for label, model in labelled.items():
        model.eval()
        method = method_of(model)
        res["models"][label] = {"method": method, "fixed_point": is_fixed_point_model(model),
                                "num_parameters": int(sum(p.numel() for p in model.parameters())),
                                "source": getattr(model, "robustness_source", None)}
        per_slice_attack: list[list[dict]] = []
        per_slice_random: list[list[dict]] = []
        certs: list[dict | None] = []
        conv: list[dict] = []
        uniq: list[dict] = []
        for si, ex in enumerate(examples):
            y, ph = ex.y, ex.physics
            tag = f"{label} / {ex.name}"
            try:
                _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: reference reconstruction")
                x_ref, info_ref = reconstruct(model, y, ph, tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
                cert = certificate_of(model, ph, x_ref) if is_fixed_point_model(model) else None
                certs.append(cert)
                b_norm = float(batch_norms(measured_data(y, ph)))
                radius = torch.tensor([e * b_norm for e in cfg.eps], dtype=torch.float32)
                if "attack" in cfg.parts:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: attack "
                                   f"({cfg.attack_steps} steps x {len(cfg.eps)} radii)")
                    att = worst_case_perturbation(model, y, ph, cfg.eps, x_ref=x_ref, steps=cfg.attack_steps,
                                                  restarts=cfg.attack_restarts, step_size=cfg.attack_step_size,
                                                  seed=cfg.seed + 101 * si, tol=cfg.attack_tol)
                    meas = measure_perturbations(model, y, ph, att.delta, x_ref, info_ref, ex.target, ex.max_value,
                                                 tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
                    const = None if cert is None else cert.get("robustness_constant")
                    for e, m, hist in zip(cfg.eps, meas, att.history):
                        m.update({"eps": e, "radius": e * b_norm, "history": hist, "objective_at_attack_tol": hist[-1],
                                  "certificate": const, "certified": None if cert is None else cert.get("certified"),
                                  "verdict": certificate_verdict(m["amplification"], m["amplification_low"],
                                                                 m["amplification_high"], const),
                                  "mask_leak": float(batch_norms(att.delta * (1 - ph.sampling_weights()
                                                                                              .to(torch.float32))).max()),
                                  "attack_seconds": att.seconds / len(cfg.eps)})
                    if att.warnings:
                        meas[0]["attack_warnings"] = att.warnings[:5]
                    per_slice_attack.append(meas)
                    if si == 0:
                        res.setdefault("_images", {})[label] = _example_images(model, y, ph, x_ref, att.delta[-1:],
                                                                               ex, cfg)
                if "random" in cfg.parts and cfg.random_draws > 0:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: {cfg.random_draws} random "
                                   f"perturbations x {len(cfg.eps)} radii")
                    gen = torch.Generator().manual_seed(cfg.seed + 977 * si + 13)
                    rad = radius.repeat_interleave(cfg.random_draws)
                    shape = (len(rad), *y.shape[1:])
                    deltas = random_perturbation(shape, ph.sampling_weights(), rad, gen)
                    meas = measure_perturbations(model, y, ph, deltas, x_ref, info_ref, ex.target, ex.max_value,
                                                 tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)
                    rows = []
                    for ei, e in enumerate(cfg.eps):
                        chunk = meas[ei * cfg.random_draws:(ei + 1) * cfg.random_draws]
                        amps = [c["amplification"] for c in chunk]
                        rows.append({"eps": e, "amplification_mean": float(np.mean(amps)),
                                     "amplification_max": float(np.max(amps)),
                                     "psnr_drop_mean": float(np.mean([c["psnr_drop"] for c in chunk])),
                                     "draws": len(chunk)})
                    per_slice_random.append(rows)
                if "convergence" in cfg.parts and si < cfg.conv_slices:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: convergence ({cfg.conv_iters} "
                                   f"iterations)")
                    c = convergence_study(model, y, ph, ex.target, ex.max_value, cfg.conv_iters, cfg.conv_tol)
                    c["slice"] = ex.name
                    conv.append(c)
                if "uniqueness" in cfg.parts and si < cfg.uniqueness_slices:
                    _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {tag}: uniqueness")
                    u = uniqueness_study(model, y, ph, ex.target, ex.max_value, cfg.eval_tol, cfg.eval_max_iter,
                                         cfg.seed + si)
                    u["slice"] = ex.name
                    uniq.append(u)
            except MolreconError as exc:
                # one model failing on one slice (e.g. a diverging DEQ) must not lose the other results
                res.setdefault("errors", {}).setdefault(label, []).append(f"{ex.name}: {exc}")
                _log(progress, f"{tag}: failed: {exc}")
        res["certificate"][label] = certs
        if per_slice_attack:
            res["attack"][label] = _aggregate_attack(cfg.eps, per_slice_attack)
        if per_slice_random:
            res["random"][label] = _aggregate_random(cfg.eps, per_slice_random)
        if conv:
            res["convergence"][label] = conv
        if uniq:
            res["uniqueness"][label] = uniq
        if "shift" in cfg.parts:
            _log(progress, f"[{time.perf_counter() - t_start:6.0f}s] {label}: distribution shift")
            try:
                res["shift"][label] = _shift(model, examples, shift_examples, cfg)
            except MolreconError as exc:
                res.setdefault("errors", {}).setdefault(label, []).append(f"distribution shift: {exc}")
    if "shift" in cfg.parts:
        res["shift"]["sense (reference)"] = _shift(None, examples, shift_examples, cfg)
    res["verdicts"] = verdicts(res)
    res["seconds"] = time.perf_counter() - t_start
    return res


def _shift(model: Any | None, examples: Sequence[Example], shift_examples: Mapping[float, Sequence[Example]] | None,
           cfg: RobustnessConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"acceleration": {}, "noise": {}}
    out["acceleration"]["data"] = evaluate_setting(model, examples)
    for acc, exs in sorted((shift_examples or {}).items()):
        out["acceleration"][f"{float(acc):g}"] = evaluate_setting(model, exs)
    for snr in cfg.noise_snr_db:
        out["noise"][f"{float(snr):g}"] = evaluate_setting(model, examples, noise_snr_db=snr, seed=cfg.seed)
    return out


def _aggregate_attack(eps: Sequence[float], per_slice: list[list[dict]]) -> list[dict[str, Any]]:
    """Per radius: worst (max) and mean over slices of the amplification; per-slice records kept."""
    rows = []
    for ei, e in enumerate(eps):
        recs = [s[ei] for s in per_slice]
        amps = [r["amplification"] for r in recs]
        highs = [r["amplification_high"] for r in recs]
        lows = [r["amplification_low"] for r in recs]
        consts = [r["certificate"] for r in recs if r["certificate"] is not None]
        verdict_order = ["violated", "exceeded-within-error", "holds-measured", "confirmed", "n/a"]
        worst_verdict = min((r["verdict"] for r in recs), key=verdict_order.index)
        rows.append({
            "eps": e, "amplification_max": float(max(amps)), "amplification_mean": float(np.mean(amps)),
            "amplification_high_max": None if any(h is None for h in highs) else float(max(highs)),
            "amplification_low_max": None if any(v is None for v in lows) else float(max(lows)),
            "psnr_drop_max": float(max(r["psnr_drop"] for r in recs)),
            "psnr_drop_mean": float(np.mean([r["psnr_drop"] for r in recs])),
            "certificate_min": float(min(consts)) if consts else None,
            "certified": recs[0]["certified"], "verdict": worst_verdict,
            "mask_leak_max": float(max(r["mask_leak"] for r in recs)),
            "delta_over_radius_max": float(max(r["delta_norm"] / r["radius"] for r in recs)),
            "per_slice": recs})
    return rows


def _aggregate_random(eps: Sequence[float], per_slice: list[list[dict]]) -> list[dict[str, Any]]:
    rows = []
    for ei, e in enumerate(eps):
        recs = [s[ei] for s in per_slice]
        rows.append({"eps": e, "amplification_mean": float(np.mean([r["amplification_mean"] for r in recs])),
                     "amplification_max": float(max(r["amplification_max"] for r in recs)),
                     "psnr_drop_mean": float(np.mean([r["psnr_drop_mean"] for r in recs])),
                     "draws": int(sum(r["draws"] for r in recs))})
    return rows


def _example_images(model: Any, y: torch.Tensor, physics: LinearPhysics, x_ref: torch.Tensor, delta: torch.Tensor,
                    ex: Example, cfg: RobustnessConfig) -> dict[str, np.ndarray]:
    """Magnitudes of x(b), x(b+δ) (largest ε) and |x(b+δ) − x(b)| of the first slice, for the figure (of a
    volume or a series, its central plane along the first axis)."""
    x_adv, _ = reconstruct(model, y + delta, physics, tol=cfg.eval_tol, max_iter=cfg.eval_max_iter)

    def plane(x: torch.Tensor) -> np.ndarray:
        x = x[0].abs()
        return (x[x.shape[0] // 2] if x.ndim == 3 else x).cpu().numpy()

    return {"clean": plane(x_ref), "perturbed": plane(x_adv), "difference": plane(x_adv - x_ref),
            "target": plane(ex.target), "eps": float(cfg.eps[-1])}


def verdicts(res: Mapping[str, Any]) -> dict[str, Any]:
    """The robustness questions (does MOL-SN stay within its certificate, is MOL more robust than MoDL and the
    DEQ, ...) answered from the numbers (never assumed)."""
    out: dict[str, Any] = {}
    attack = res.get("attack", {})
    methods = {label: res["models"][label]["method"] for label in attack}
    sn = [lb for lb, m in methods.items() if m == "mol-sn"]
    if sn:
        rows = [r for lb in sn for r in attack[lb]]
        worst = [r["verdict"] for r in rows]
        out["mol_sn_within_certificate"] = all(v in ("confirmed", "holds-measured") for v in worst)
        out["mol_sn_ratio_max"] = max((r["amplification_max"] / r["certificate_min"]) for r in rows
                                      if r["certificate_min"]) if any(r["certificate_min"] for r in rows) else None
    mol = [lb for lb, m in methods.items() if m in ("mol-sn", "mol-lr")]
    others = [lb for lb, m in methods.items() if m in ("modl", "deq")]
    if mol and others:
        comp = []
        for ei in range(len(next(iter(attack.values())))):
            worst_mol = max(attack[lb][ei]["amplification_max"] for lb in mol)
            best_other = min(attack[lb][ei]["amplification_max"] for lb in others)
            comp.append({"eps": attack[mol[0]][ei]["eps"], "mol_worst": worst_mol, "others_best": best_other,
                         "mol_more_robust": worst_mol < best_other})
        out["mol_more_robust_than_baselines"] = all(c["mol_more_robust"] for c in comp)
        out["robustness_comparison"] = comp
    return out



def slice_indices(n_items: int, n: int) -> list[int]:
    """``n`` evenly spread item indices (different contrasts/positions of the built-in test split)."""
    if n_items < 1:
        raise InputError("robustness: the dataset has no slices")
    n = max(1, min(int(n), n_items))
    return sorted({int(round(v)) for v in np.linspace(0, n_items - 1, n)})


def load_examples(data: str | Path | None, slices: int = 2, acceleration: float | None = None,
                  center_fraction: float | None = None, kind: str = "2d") -> list[Example]:
    """``slices`` evenly spread test slices of ``data`` (``None``: the built-in test split) as examples; with
    ``acceleration`` a seeded fastMRI random mask replaces the files' masks."""

    if acceleration is not None and center_fraction is None:
        center_fraction = default_center_fraction(acceleration)
    ds = load_dataset(data, kind=kind, split="test", acceleration=acceleration, center_fraction=center_fraction)
    out = []
    for i in slice_indices(len(ds), slices):
        item = ds[i]
        batch = collate([item])
        out.append(Example(y=batch["kspace"], physics=physics_from_batch(batch), target=batch["target"],
                           max_value=float(item["max_value"]), name=f"{item['fname']}:{item['slice']}"))
    return out
