r"""Denoiser pre-training of MOL's network ``H`` under its own constraint, before deep-equilibrium training.

A DEQ step costs a whole fixed-point solve; an ``H`` that starts as a sensible denoiser needs far fewer of them.
Pre-training fits ``H`` alone, with no fixed point:

.. math:: \min_\theta\ \frac{1}{N s^2}\,\big\|\,|H_\theta(x_0)| - |x|\,\big\|^2 \;+\; \text{the model's penalty},

where :math:`x_0` is the model's own start image (CG-SENSE of the undersampled k-space, ``MOL.initial_image``),
:math:`x` the target and :math:`s` its ``max_value``. ``H`` is evaluated in training mode
(``MOL.prior(..., inference=False)``), so the constraint applies as in DEQ training: spectral normalisation or
SLL by construction, and for MOL-LR the Lipschitz penalty (``MOL.extra_loss``) plus the weight-rescaling
safeguard (``MOL.enforce_lipschitz``), whose firing is counted. λ is not trained here (it has no role without
the data term).

The start images are computed once per training slice (no gradients) and reused; the draws of slices are
seeded, so pre-training is deterministic and a run resumed from a checkpoint (written after pre-training) never
repeats it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from .datasets import to_device
from .losses import mse_magnitude


def pretrain_prior(model: torch.nn.Module, dataset: Dataset, steps: int, lr: float, seed: int,
                   collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
                   physics_of: Callable[[dict[str, Any]], Any], device: torch.device,
                   grad_clip: float | None = 1.0, log: Callable[[dict[str, float]], None] | None = None
                   ) -> dict[str, float]:
    """Fit ``model``'s ``H`` as a denoiser of its start images for ``steps`` Adam steps; returns a summary.

    ``collate`` and ``physics_of`` turn dataset items into a batch and its operator (the trainer's own).
    """
    params = [p for n, p in model.denoiser.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    g = torch.Generator().manual_seed(int(seed) * 7_368_787 + 11)
    model.train()
    rescaled = 0
    losses: list[float] = []
    lips: list[float] = []
    for step in range(int(steps)):
        index = int(torch.randint(len(dataset), (1,), generator=g))
        if index not in cache:
            batch = collate([dataset[index]])
            batch = to_device(batch, device)
            with torch.no_grad():
                x0 = model.initial_image(batch["kspace"], physics_of(batch))
            cache[index] = (x0, batch["target"], batch["max_value"])
        x0, target, max_value = cache[index]
        opt.zero_grad(set_to_none=True)
        out = model.prior(x0, inference=False)
        mse = mse_magnitude(out, target, max_value)
        extra, extra_logs = model.extra_loss(out, target)
        loss = mse + extra
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        mse_value = float(mse.detach())
        row = {"step": step + 1, "mse": mse_value, "psnr": -10 * math.log10(max(mse_value, 1e-30))}
        if "lipschitz" in extra_logs:
            lip = float(extra_logs["lipschitz"])
            row["lipschitz"] = lip
            lips.append(lip)
            scale = model.enforce_lipschitz(lip)
            row["lipschitz_scale"] = scale
            rescaled += scale != 1.0
        losses.append(row["mse"])
        if log is not None:
            log(row)
    tail = losses[-max(1, len(losses) // 10):]
    summary = {"pretrain_steps": float(steps), "pretrain_train_psnr": -10 * math.log10(max(sum(tail) / len(tail),
                                                                                              1e-30)),
               "pretrain_rescaled_steps": float(rescaled)}
    if lips:
        summary["pretrain_lipschitz_max"] = max(lips)
    return summary


__all__ = ["pretrain_prior"]
