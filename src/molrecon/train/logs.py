"""The trainer's CSV logs: their columns, the per-step solver numbers and an append-only log that resumes."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write

TRAIN_COLUMNS = ["step", "epoch", "loss", "mse", "extra_loss", "lr", "lam", "grad_norm", "fwd_iterations",
                 "converged_frac", "final_residual", "lipschitz", "lipschitz_scale", "lipschitz_adversarial",
                 "lipschitz_jacobian", "lipschitz_zero", "step_time"]
VAL_COLUMNS = ["step", "epoch", "val_psnr", "val_ssim", "val_nmse", "val_iterations", "val_time_per_slice",
               "val_lipschitz"]
PRETRAIN_COLUMNS = ["step", "mse", "psnr", "lipschitz", "lipschitz_scale"]


def lam_of(model: torch.nn.Module) -> float | None:
    """The effective (positive) λ of a model, for the logs."""
    if hasattr(model, "lam_value"):
        return float(model.lam_value().detach())
    lam = getattr(model, "lam", None)
    return float(lam.detach().reshape(-1)[0]) if isinstance(lam, torch.Tensor) else None


def _float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean())
    return float(v)


def info_logs(model: torch.nn.Module) -> dict[str, float]:
    """Per-step solver numbers from ``model.last_info`` (iterations, converged fraction, final residual)."""
    info = getattr(model, "last_info", None)
    if info is None:
        return {}
    out = {"fwd_iterations": _float(info.iterations), "converged_frac": _float(info.converged.float())}
    if info.residuals:
        out["final_residual"] = float(info.residuals[-1].detach().float().max())
    lip = info.extra.get("lipschitz") if isinstance(info.extra, dict) else None
    if lip is not None and math.isfinite(_float(lip)):  # NaN = "not estimated in this mode"
        out["lipschitz"] = _float(lip)
    return out


class CSVLog:
    """Append-only CSV log with a fixed header; on resume rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= resume_step]
            buf = io.StringIO()
            w = csv.DictWriter(buf, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            with atomic_write(path, "w") as fh:
                fh.write(buf.getvalue())
        else:
            with atomic_write(path, "w") as fh:
                fh.write(",".join(columns) + "\n")
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, columns, extrasaction="ignore")

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
