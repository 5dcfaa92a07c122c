r"""Training losses.

The data term is the MSE between magnitudes, as the MOL and MoDL authors train:

.. math::
    \ell(\hat x, x) = \frac{1}{B}\sum_b \frac{1}{N\,s_b^2}\,\big\|\,|\hat x_b| - |x_b|\,\big\|_2^2,

with ``s_b`` the slice's ``max_value`` when ``normalize`` is on (so the loss is scale-free and comparable
between datasets: ``-10 log10(ℓ)`` is the PSNR of the batch with data range ``max_value``) and 1 otherwise.
The model's own regulariser (``model.extra_loss``, e.g. the MOL-LR Lipschitz barrier) is added on top, or
(``train.penalty_backward: after_data``) backpropagated on its own after the data term (:func:`penalty_loss`).
"""

from __future__ import annotations

import torch


def mse_magnitude(pred: torch.Tensor, target: torch.Tensor, max_value: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of the per-slice MSE of ``|pred| - |target|``, divided by ``max_value²`` if given."""
    diff = (pred.abs() - target.abs()).pow(2).reshape(pred.shape[0], -1).mean(dim=1)
    if max_value is not None:
        diff = diff / max_value.to(diff).reshape(-1).pow(2).clamp_min(1e-20)
    return diff.mean()


def penalty_loss(model: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor | None = None,
                 extra_kwargs: dict | None = None) -> tuple[torch.Tensor | float, dict[str, float]]:
    """``model.extra_loss`` (0 for a model without one) and its logs as plain numbers, ``extra_loss`` among them.
    ``extra_kwargs`` go to ``model.extra_loss`` (e.g. a warm start of the MOL-LR Lipschitz estimate)."""
    extra_fn = getattr(model, "extra_loss", None)
    if extra_fn is None:
        return 0.0, {}
    extra, extra_logs = extra_fn(pred, target, **(extra_kwargs or {}))
    logs = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in (extra_logs or {}).items()}
    if isinstance(extra, torch.Tensor):
        logs["extra_loss"] = float(extra.detach())
    elif extra:
        logs["extra_loss"] = float(extra)
    return extra, logs


def training_loss(model: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor,
                  max_value: torch.Tensor | None = None, extra_kwargs: dict | None = None,
                  with_penalty: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """``mse_magnitude + model.extra_loss``; returns the loss and a dict of plain numbers for the logs.
    ``with_penalty=False``: the data term alone (the penalty then gets its own backward, :func:`penalty_loss`)."""
    mse = mse_magnitude(pred, target, max_value)
    logs: dict[str, float] = {"mse": float(mse.detach())}
    loss = mse
    if with_penalty:
        extra, extra_logs = penalty_loss(model, pred, target, extra_kwargs)
        if "extra_loss" in extra_logs:
            loss = loss + extra
        logs.update(extra_logs)
    logs["loss"] = float(loss.detach())
    return loss, logs
