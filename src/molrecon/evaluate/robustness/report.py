"""The robustness report: the summary table, the markdown report and the JSON + markdown + PNG writer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...io import machine_info, write_json_atomic, write_text_atomic
from ...metrics import PSNR_WHOLE_IMAGE
from ..report import markdown_table
from .plots import write_plots


# ---------------------------------------------------------------------------------------------- reporting
def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        v = float(v)
        if not math.isfinite(v):
            return "inf" if v > 0 else "nan"
        return f"{v:.{nd}g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.{nd}f}"
    return str(v)


def summary_rows(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, ε): worst-case and random amplification, PSNR drop, certificate and verdict."""
    rows = []
    for label, att in res.get("attack", {}).items():
        rnd = {r["eps"]: r for r in res.get("random", {}).get(label, [])}
        for r in att:
            rr = rnd.get(r["eps"], {})
            ratio = (r["amplification_max"] / rr["amplification_mean"]) if rr.get("amplification_mean") else None
            rows.append({"model": label, "method": res["models"][label]["method"], "eps": r["eps"],
                         "worst-case amp.": _f(r["amplification_max"]),
                         "exact-fixed-point bracket": (f"[{_f(r['amplification_low_max'])}, "
                                                       f"{_f(r['amplification_high_max'])}]"
                                                       if r["amplification_high_max"] is not None else "—"),
                         "random amp. (mean / max)": (f"{_f(rr.get('amplification_mean'))} / "
                                                      f"{_f(rr.get('amplification_max'))}" if rr else "—"),
                         "worst / random": _f(ratio, 2),
                         "PSNR drop dB (max)": _f(r["psnr_drop_max"]),
                         "certificate C": (_f(r["certificate_min"]) + (" (certified)" if r["certified"]
                                                                       else " (estimate)")
                                           if r["certificate_min"] is not None else "—"),
                         "verdict": r["verdict"]})
    return rows


#: figure file -> its label in the report, in the order the report shows them
FIGURE_LABELS = {"amplification_vs_eps.png": "amplification", "convergence.png": "convergence",
                 "adversarial_examples.png": "examples", "distribution_shift.png": "shift"}


def markdown_report(res: Mapping[str, Any], title: str = "molrecon robustness report") -> str:
    """The human-readable report: acceptance answers first, then one table per measurement."""

    lines = [f"# {title}", ""]
    mach = res.get("machine", {})
    if mach:
        lines += [f"Command: `{mach.get('command', '')}`  ", f"Machine: {mach.get('processor')} × "
                  f"{mach.get('cpu_count')} CPUs, torch {mach.get('torch')}, {mach.get('torch_threads')} threads"
                  f"{', ' + mach['cuda'] if mach.get('cuda') else ''}; run time {_f(res.get('seconds'), 4)} s", ""]
    lines += [f"Slices: {', '.join(res.get('examples', []))}"
              + (f" (acceleration {res['data_acceleration']:g}×)" if res.get("data_acceleration") else ""), ""]
    lines += [f"PSNR: {res.get('psnr_definition', PSNR_WHOLE_IMAGE)}.", ""]
    v = res.get("verdicts", {})
    lines += ["## Answers", ""]
    if "mol_sn_within_certificate" in v:
        lines.append(f"- MOL-SN measured amplification within its certificate C: "
                     f"**{_f(v['mol_sn_within_certificate'])}** (largest measured/C = {_f(v.get('mol_sn_ratio_max'))})")
    if "mol_more_robust_than_baselines" in v:
        lines.append(f"- MOL (SN/LR) worst case smaller than every baseline (MoDL/DEQ) at every ε: "
                     f"**{_f(v['mol_more_robust_than_baselines'])}**")
        for c in v.get("robustness_comparison", []):
            lines.append(f"  - ε = {c['eps']:g}: worst MOL amplification {_f(c['mol_worst'])} vs best baseline "
                         f"{_f(c['others_best'])}")
    if len(lines) and lines[-1] == "":
        lines.append("- (no MOL-SN or no baseline among the models: nothing to compare)")
    lines.append("")
    rows = summary_rows(res)
    if rows:
        cols = ["model", "eps", "worst-case amp.", "exact-fixed-point bracket", "random amp. (mean / max)",
                "worst / random", "PSNR drop dB (max)", "certificate C", "verdict"]
        lines += ["## Worst-case and random perturbations", "",
                  "Amplification = ‖x(b+δ) − x(b)‖/‖δ‖ (max over slices), both reconstructions re-solved at "
                  f"tol {_f(res['config']['eval_tol'])}; the bracket is the amplification of the *exact* fixed "
                  "points given the solver's a-posteriori error bounds. Verdict compares it with C "
                  "(‖x*(b1) − x*(b2)‖ ≤ C‖b1 − b2‖): confirmed = bracket ≤ C, violated = bracket > C.", "",
                  markdown_table(rows, cols)]
    conv = res.get("convergence", {})
    if conv:
        crow = []
        for label, studies in conv.items():
            s = studies[0]
            sm = s.get("summary", {})
            sol = s.get("solver") or {}
            crow.append({"model": label, "iterations run": s["iterations"],
                         "trained iterations": _f(s.get("trained_iterations")),
                         "residual at trained": _f(sm.get("residual_at_trained")),
                         "final residual": _f(sm.get("final_residual")), "min residual": _f(sm.get("min_residual")),
                         "PSNR at trained": _f(sm.get("psnr_at_trained")), "final PSNR": _f(sm.get("final_psnr")),
                         "diverged at": _f(sm.get("diverged_at")),
                         "solver (iters, converged, final res.)": (
                             f"{sol.get('name')}: {sol.get('iterations')}, {_f(sol.get('converged'))}, "
                             f"{_f(sol['residual'][-1]) if sol.get('residual') else '—'}") if sol else "—"})
        lines += ["## Convergence far past the training iteration count", "",
                  "Plain iteration of the model's own map from its usual start; residual ‖x_{n+1} − x_n‖/‖x_n‖. "
                  "For MoDL the unrolled block is simply applied more times than its K.", "",
                  markdown_table(crow, list(crow[0]))]
    uniq = res.get("uniqueness", {})
    if uniq:
        urow = []
        for label, studies in uniq.items():
            s = studies[0]
            if not s.get("applicable"):
                urow.append({"model": label, "spread": "n/a", "note": s.get("note", "")})
                continue
            urow.append({"model": label, "spread": _f(s["spread"]), "bound (2·max error bound)": _f(s["spread_bound"]),
                         "PSNR per start": ", ".join(f"{k} {_f(p)}" for k, p in s["psnr"].items()),
                         "converged": ", ".join(f"{k} {_f(c)}" for k, c in s["converged"].items())})
        cols = ["model", "spread", "bound (2·max error bound)", "PSNR per start", "converged", "note"]
        lines += ["## Uniqueness: the same answer from different starts", "",
                  "spread = max over pairs of starts (zero, A^H b, noise, CG-SENSE) of ‖x_i − x_j‖/‖x_cg‖.", "",
                  markdown_table(urow, cols)]
    shift = res.get("shift", {})
    if shift:
        keys_acc: list[str] = []
        keys_noise: list[str] = []
        for s in shift.values():
            keys_acc += [k for k in s.get("acceleration", {}) if k not in keys_acc]
            keys_noise += [k for k in s.get("noise", {}) if k not in keys_noise]
        srow = []
        for label, s in shift.items():
            row: dict[str, Any] = {"model": label}
            for k in keys_acc:
                name = (f"{res['data_acceleration']:g}× (data)" if res.get("data_acceleration") else "data") \
                    if k == "data" else f"{k}×"
                e = s["acceleration"].get(k)
                row[name] = f"{_f(e['psnr'])} / {_f(e['ssim'])}" if e else "—"
            for k in keys_noise:
                e = s["noise"].get(k)
                row[f"+noise {k} dB"] = f"{_f(e['psnr'])} / {_f(e['ssim'])}" if e else "—"
            srow.append(row)
        lines += ["## Distribution shift (PSNR dB / SSIM, mean over slices)", "", markdown_table(srow, list(srow[0]))]
    if res.get("errors"):
        lines += ["## Failures", ""] + [f"- {lb}: {e}" for lb, errs in res["errors"].items() for e in errs] + [""]
    figures = res.get("figures")
    if figures is None:
        figures = list(FIGURE_LABELS)
    if figures:
        lines += ["## Figures", ""]
        for name in figures:
            lines += [f"![{FIGURE_LABELS.get(name, Path(name).stem)}]({name})", ""]
    return "\n".join(lines)


def write_report(res: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``robustness.json`` (with machine info and command), ``robustness.md`` and the PNG plots into
    ``out_dir``, each atomically; return the paths."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res.setdefault("psnr_definition", PSNR_WHOLE_IMAGE)
    res.setdefault("machine", machine_info())
    res.setdefault("command", res["machine"].get("command"))
    plots = write_plots(res, out)
    res["figures"] = [p.name for p in plots]  # the report links only the figures that the results allowed
    clean = {k: v for k, v in res.items() if not k.startswith("_")}
    write_json_atomic(out / "robustness.json", clean)
    write_text_atomic(out / "robustness.md", markdown_report(res))
    return {"json": out / "robustness.json", "markdown": out / "robustness.md",
            **{p.stem: p for p in plots}}
