r"""Validation during training, and which validated checkpoint becomes ``best.pt``.

Every validation reconstructs the validation slices and averages PSNR / SSIM / NMSE on the magnitudes (data range
= ``max_value``, fastMRI style) and the forward iterations. ``best.pt`` is the checkpoint of the best mean PSNR.

With ``train.best_requires_monotone`` a MOL model also reports ``val_lipschitz``: the largest ``Lip(H)`` over the
validation items, each taken where ``H`` acts in that item's reconstruction (the image in the normalised k-space's
units), as ``model.certificate`` reports it: the proof of a certified network (MOL-SN), the converged estimate
otherwise (MOL-LR, the DEQ). A checkpoint then becomes ``best.pt`` only when, beside a better PSNR,
``val_lipschitz < 1``: ``F = I − H`` is monotone by that figure at every validation item
(``train.best_lipschitz_below`` < 1 asks for a margin). Without the rule the best PSNR can fall on a step where a
MOL-LR is not monotone at some items, while later, slightly worse steps are. The validation items are not the
images the model will see: a checkpoint below 1 at all of them can be above 1 elsewhere, which a margin guards
against (``benchmarks/README.md``, "Choosing best.pt by the monotone rule"). The check costs a certificate per
validation item (a Jacobian power iteration and an adversarial ascent: a few seconds per 2D slice on one CPU
thread), draws from its own seeded generators and leaves the model as it was, so training takes the same steps
with and without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import collate, physics_from_batch
from ..distributed import all_reduce_logs
from ..metrics import nmse, psnr, ssim
from ..normalization import where_the_network_acted
from .datasets import to_device
from .logs import info_logs

#: ``val_lipschitz`` below this: monotone by the certificate's figure at every validation item
MONOTONE_BELOW = 1.0


def lipschitz_where_h_acts(model: torch.nn.Module, x_hat: torch.Tensor, physics: Any) -> float:
    """``Lip(H)`` of a MOL model where ``H`` acted in its last reconstruction ``x_hat`` (one item), as its
    certificate reports it."""
    lipschitz, _, _ = model.lipschitz_at(physics, x=where_the_network_acted(x_hat, model.last_info))
    return float(lipschitz)


@torch.no_grad()
def validate_model(model: torch.nn.Module, val_set: Dataset, device: torch.device | str,
                   reduce_means: Callable[[dict[str, float], int], dict[str, float]],
                   check_monotone: bool = False) -> dict[str, float]:
    """Mean validation figures over ``val_set`` (this rank's share), combined over ranks by ``reduce_means``;
    with ``check_monotone`` also ``val_lipschitz``, the largest over every rank's items (module docstring)."""
    loader = DataLoader(val_set, batch_size=1, shuffle=False, collate_fn=collate, num_workers=0)
    vals: dict[str, list[float]] = {"val_psnr": [], "val_ssim": [], "val_nmse": [], "val_iterations": []}
    lipschitz: list[float] = []
    t0 = time.perf_counter()
    for batch in loader:
        batch = to_device(batch, device)
        physics = physics_from_batch(batch)
        x_hat = model(batch["kspace"], physics)
        for i in range(x_hat.shape[0]):
            pred, tgt = x_hat[i].abs().cpu().numpy(), batch["target"][i].abs().cpu().numpy()
            dr = float(batch["max_value"][i])
            vals["val_psnr"].append(psnr(pred, tgt, data_range=dr))
            vals["val_ssim"].append(ssim(pred, tgt, data_range=dr))
            vals["val_nmse"].append(nmse(pred, tgt))
        info = info_logs(model)
        if "fwd_iterations" in info:
            vals["val_iterations"].append(info["fwd_iterations"])
        if check_monotone:
            lipschitz.append(lipschitz_where_h_acts(model, x_hat, physics))
    n = len(vals["val_psnr"])
    out = {k: float(np.mean(v)) for k, v in vals.items() if v}
    out["val_time_per_slice"] = (time.perf_counter() - t0) / max(1, n)
    out = reduce_means(out, n)
    if check_monotone:
        mine = {"val_lipschitz": max(lipschitz)} if lipschitz else {}
        out.update(all_reduce_logs(mine, max_keys=("val_lipschitz",)))
    return out


def becomes_best(val: dict[str, float], best_psnr: float, require_monotone: bool,
                 below: float = MONOTONE_BELOW) -> bool:
    """Whether the checkpoint just validated replaces ``best.pt``: a better PSNR and, with ``require_monotone``,
    ``val_lipschitz < below`` (module docstring)."""
    if not val or val["val_psnr"] <= best_psnr:
        return False
    return not require_monotone or val.get("val_lipschitz", math.inf) < below


__all__ = ["MONOTONE_BELOW", "becomes_best", "lipschitz_where_h_acts", "validate_model"]
