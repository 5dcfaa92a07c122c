"""The training-time side of a MOL model's constraint: the Lipschitz penalty and its safeguard.

:class:`PenaltyMixin` gives :class:`~molrecon.models.mol.MOL` the two hooks the trainer calls around each
optimiser step: :meth:`~PenaltyMixin.extra_loss` (MOL-LR's penalty on an estimate of ``Lip(H)``; zero for MOL-SN
and the DEQ) and :meth:`~PenaltyMixin.enforce_lipschitz` (the rescaling safeguard). The estimators and the barrier
are the constraint strategy's (:mod:`molrecon.models.constraints`); the mixin supplies them the model's network at
its current effective weights, and keeps the estimate for the certificate's bound
(:mod:`molrecon.models.certificate`).
"""

from __future__ import annotations

import torch

from ..errors import InputError


class PenaltyMixin:
    """The training penalty of a MOL model (module docstring)."""

    def extra_loss(self, x_hat: torch.Tensor, target: torch.Tensor | None = None,
                   v0: torch.Tensor | None = None,
                   warm: dict[str, torch.Tensor | None] | None = None) -> tuple[torch.Tensor, dict]:
        """MOL-LR: ``lr_weight · barrier(L_est)`` with the authors' adversarial estimate around ``x_hat``
        (detached), plus the Jacobian term with ``lr_jacobian_steps``; logs ``lipschitz`` (max over the batch
        and the estimators) and ``lipschitz_penalty``. Zero for SN / DEQ.

        Amortised estimates: ``warm`` holds the vectors named by the strategy's ``warm_keys()`` for this batch
        (kept by the trainer's fixed-point cache): the adversarial point this slice reached last time
        (``"lip_v"``, also accepted as ``v0``; used with ``lr_warm_steps``) and the power-iteration vector
        (``"lip_u"``). The new vectors are left in ``last_lip_points`` (the adversarial one also in
        ``last_lip_point``)."""
        zero = self.log_lam.new_zeros(())
        if not self.constraint_strategy.has_penalty:
            return zero, {}
        if self.denoiser is None:
            raise InputError("MOL.extra_loss: call the model once (or pass dims=) before the penalty")
        if not torch.isfinite(x_hat).all():
            raise InputError("MOL.extra_loss: x_hat contains NaN/Inf")
        warm = dict(warm or {})
        if v0 is not None:
            warm["lip_v"] = v0
        weights = self._weights(tuple(x_hat.shape[1:]))
        # a ReLU CNN's Jacobian as masked convolutions: exact, without holding a graph of H for the power iteration
        jacobian_at = getattr(self.denoiser, "jacobian_at", None)
        linearize = None if jacobian_at is None else (lambda v: jacobian_at(v, weights))
        pen, logs, self.last_lip_points = self.constraint_strategy.penalty(lambda v: self._h(v, weights), x_hat,
                                                                           warm, linearize)
        self.last_lip_point = self.last_lip_points.get("lip_v")
        self._lip_estimate = logs["lipschitz"]
        return pen, logs

    def enforce_lipschitz(self, estimate: float | None) -> float:
        """The constraint's safeguard after an optimiser step (MOL-LR: rescaling above ``lr_clip``,
        :meth:`~molrecon.models.constraints.LipschitzPenalty.enforce`); returns the scale applied (1.0: none)."""
        return self.constraint_strategy.enforce(self.denoiser, estimate)


__all__ = ["PenaltyMixin"]
