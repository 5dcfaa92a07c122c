r"""The certificate of a MOL model: the theorems' constants from ``Lip(H)`` (``docs/theory.md``).

:class:`CertificateMixin` gives :class:`~molrecon.models.mol.MOL` its :meth:`~CertificateMixin.certificate` (the
monotonicity, step range, contraction factor and robustness constant on an acquisition) and the a-posteriori
error bound of each solve. ``Lip(H)`` is a proof for MOL-SN (certified layers) and an estimate at a point for
MOL-LR and the DEQ (:mod:`molrecon.models.lipschitz`). The mixin works on the model's own state: its network,
constraint, step ``alpha``, ``lam`` and last reconstruction, and the estimate it caches for the bounds
(``_bound_lip_cache``, ``_lip_estimate``, both set up by :class:`~molrecon.models.mol.MOL`).
"""

from __future__ import annotations

import math

import torch

from ..physics.linear import LinearPhysics
from ..solvers.info import SolverInfo
from ..solvers.timing import region
from ..tensor_utils import batch_norms
from .cnn import ConvDenoiser
from .lipschitz import adversarial_lipschitz, jacobian_spectral_norm
from .priors import OrthogonalDenoiser, SLLDenoiser

#: certified networks and the certificate's description: a proof read from the weights, in every mode
CERTIFIED_PRIORS = {SLLDenoiser: "certified: L of 1-Lipschitz SLL layers",
                    OrthogonalDenoiser: "certified: L times the kernel bounds of orthogonal convolutions"}
#: networks whose weights MOL normalises once per reconstruction (``effective_weights`` + ``apply``)
WEIGHTED_PRIORS = (ConvDenoiser, *CERTIFIED_PRIORS)
#: ascent steps of the adversarial estimate in :meth:`CertificateMixin.certificate`, at the least (the authors')
CERTIFICATE_ASCENT_STEPS = 10
#: the estimator an uncertified network's ``L`` comes from (MOL-LR, the DEQ)
ESTIMATED = "estimate: max(adversarial, Jacobian power iteration)"


def contraction_factor(alpha: float, lipschitz: float) -> float:
    """Lipschitz bound ``|1−α| + αL`` of the MOL block (``‖(I + αλA^HA)^{-1}‖ ≤ 1``)."""
    return abs(1.0 - alpha) + alpha * lipschitz


def robustness_constant(lam: float, m: float, norm_a: float = 1.0) -> float:
    r"""``C`` in ``‖x*(b1) − x*(b2)‖ ≤ C‖b1 − b2‖``: :math:`\min(\lambda\|A\|/m,\ \tfrac12\sqrt{\lambda/m})`."""
    if m <= 0:
        return math.inf
    return min(lam * norm_a / m, 0.5 * math.sqrt(lam / m))


class CertificateMixin:
    """The certificate and the a-posteriori bound of a MOL model (module docstring)."""

    def _proof_decides(self, proof: float) -> bool:
        """Whether a network's proven bound is its certificate: always under MOL-SN; under MOL-LR (an orthogonal
        ``H`` scaled to ``L``) only below 1, since a bound >= 1 says nothing about monotonicity and the estimate
        speaks instead."""
        return self.constraint == "sn" or proof < 1

    def _lipschitz_for_bound(self, x: torch.Tensor, weights) -> tuple[float, bool]:
        """``(L, certified)`` used for the a-posteriori bound of a solve."""
        den = self.denoiser
        spatial = tuple(x.shape[1:])
        if isinstance(den, tuple(CERTIFIED_PRIORS)):  # read from this solve's weights, in every mode
            proof = self._per_weights(spatial, lambda: den.certified_lipschitz(spatial, weights), "proof")
            if self._proof_decides(proof):
                return proof, True
        if self.constraint == "sn" and isinstance(den, ConvDenoiser):
            t = den.per_layer_target
            L = 1.0
            for s in den.last_sigmas:
                L *= min(s, t)
            # eval mode normalises by certified upper bounds (certified); training mode by power iteration
            return L, not den.training
        if self.training:
            return (self._lip_estimate if self._lip_estimate is not None else math.nan), False
        # An estimate either way (MOL-LR / DEQ), at the first reconstruction of each size, so that inference does
        # not pay a Jacobian power iteration per solve.
        return self._per_weights(spatial, lambda: float(jacobian_spectral_norm(
            lambda v: self._h(v, weights), x[:1], n_iter=10, generator=torch.Generator().manual_seed(0)).max())), False

    def _per_weights(self, spatial: tuple[int, ...], compute, what: str = "estimate") -> float:
        """``compute()`` of the figure ``what``, once per image size and set of parameter values
        (``_bound_lip_cache``)."""
        key = (spatial, tuple((p.data_ptr(), p._version) for p in self.denoiser.parameters()))
        if self._bound_lip_cache.get("key") != key:
            self._bound_lip_cache = {"key": key}
        if what not in self._bound_lip_cache:
            self._bound_lip_cache[what] = compute()
        return self._bound_lip_cache[what]

    def lipschitz_at(self, physics: LinearPhysics, x: torch.Tensor | None = None,
                     power_iterations: int = 300) -> tuple[float, bool, str]:
        """``(L, certified, estimator)``: ``Lip(H)`` on this acquisition's image size, as :meth:`certificate`
        reports it (the proof of a certified network; else the estimate at ``x``, see there), without changing
        the model's state: the training loop may call it between steps and train on exactly as before."""
        den = self.denoiser
        if den is None:
            self._build(physics.dims if self.dims is None else self.dims)
            den = self.denoiser
        spatial = tuple(physics.spatial_shape)
        if (self.constraint == "sn" and isinstance(den, WEIGHTED_PRIORS)) or isinstance(den, tuple(CERTIFIED_PRIORS)):
            with torch.no_grad():
                L = den.certified_lipschitz(spatial)
            if self._proof_decides(L):
                return L, L < 1, CERTIFIED_PRIORS.get(type(den), "certified: product of circular-embedding conv norms")
        if x is None:
            if self._last_x is not None and tuple(self._last_x.shape[1:]) == spatial:
                x = self._last_x[:1]
            else:
                g = torch.Generator().manual_seed(0)
                x = torch.randn((1, *spatial), generator=g, dtype=torch.complex64).to(self.log_lam.device)
        weights = self._weights(spatial)
        h = lambda v: self._h(v, weights)  # noqa: E731
        with torch.enable_grad():
            # run to convergence: the top of the spectrum is crowded, so a fixed 30 steps read 0.985 where 100 read
            # 1.001 on the model shipped before the Jacobian penalty (jacobian_spectral_norm's docstring)
            jac = float(jacobian_spectral_norm(h, x, n_iter=power_iterations, tol=1e-4,
                                               generator=torch.Generator().manual_seed(0)).max())
            settings = getattr(self.constraint_strategy, "estimate_kwargs", dict)()
            # at least as many ascent steps as the authors' estimator, whatever the training used (lr_steps can
            # be fewer, or 0 when only the Jacobian term trains the constraint)
            settings["steps"] = max(int(settings.get("steps", 0)), CERTIFICATE_ASCENT_STEPS)
            adv = float(adversarial_lipschitz(h, x, **settings,
                                              generator=torch.Generator().manual_seed(0)).detach().max())
        return max(jac, adv), False, ESTIMATED

    def certificate(self, physics: LinearPhysics, x: torch.Tensor | None = None,
                    power_iterations: int = 300) -> dict:
        """The theorems' constants for this model on this acquisition (see ``docs/theory.md``).

        Keys: ``m`` (monotonicity of F = I − H), ``L`` (Lipschitz bound of H), ``alpha_range`` (steps with a
        contractive block), ``alpha``, ``contraction`` (factor of the block at ``alpha``),
        ``robustness_constant`` (C in ‖x*(b1) − x*(b2)‖ ≤ C‖b1 − b2‖), ``certified`` (True only when L is a
        proven bound < 1: MOL-SN, or an orthogonal ``H`` scaled below 1 under MOL-LR), ``estimator``, ``lam``,
        ``norm_A_bound``, ``method``.
        For MOL-LR / DEQ, L is the larger of the adversarial and Jacobian power-iteration estimates at ``x``
        (default: the last reconstruction of matching shape, else the CG-SENSE-free random image); the power
        iteration runs until it rises by less than 1e-4 over 10 steps, at most ``power_iterations`` steps, and
        the ascent takes ``max(lr_steps, CERTIFICATE_ASCENT_STEPS)`` steps, so that a model trained with a
        cheaper estimate is not certified with it. An estimate is remembered for the bounds of later solves in
        training mode.
        """
        L, certified, estimator = self.lipschitz_at(physics, x, power_iterations)
        if estimator == ESTIMATED:
            self._lip_estimate = L
        spatial = tuple(physics.spatial_shape)
        lam = float(self.lam.detach())
        m = 1.0 - L
        norm_a = physics.norm_bound()  # certified, from the operator itself (LinearPhysics)
        return {"method": self.method_name, "m": m, "L": L,
                "alpha_range": [0.0, 2.0 / (1.0 + L)] if L < 1 else [0.0, 0.0], "alpha": self.alpha,
                "contraction": contraction_factor(self.alpha, L),
                "robustness_constant": robustness_constant(lam, m, norm_a),
                "certified": bool(certified), "estimator": estimator, "lam": lam, "norm_A_bound": norm_a,
                "spatial_shape": list(spatial)}

    def _add_bound(self, info: SolverInfo, x_out: torch.Tensor, x_last: torch.Tensor, weights,
                   cg_err: torch.Tensor | None, from_start: bool) -> None:
        """The a-posteriori bound ``‖x_out − x*‖ ≤ c/(1−c)‖x_out − x_last‖ + ‖r‖/(1−c)`` into ``info.extra``;
        without the CG residual ``r`` (``cg_err`` None) the bound is reported but never certified."""
        with torch.no_grad():
            step = batch_norms(x_out.detach() - x_last)
        with region("error-bound", absorb=True):
            L, certified = self._lipschitz_for_bound(x_out.detach(), weights)
        c = contraction_factor(self.alpha, L) if math.isfinite(L) else math.nan
        if math.isfinite(c) and c < 1:
            bound = step * (c / (1 - c)) + (0.0 if cg_err is None else cg_err / (1 - c))
        else:
            bound = torch.full_like(step, math.inf if math.isfinite(c) else math.nan)
        xn = batch_norms(x_out.detach()).clamp_min(1e-30)
        info.extra.update({"error_bound": bound, "error_bound_relative": bound / xn, "contraction": c,
                           "lipschitz": L, "bound_certified": bool(certified and c < 1 and cg_err is not None),
                           "method": self.method_name, "final_step": step, "init": "cg-sense" if from_start else "x0"})


__all__ = ["CertificateMixin", "CERTIFICATE_ASCENT_STEPS", "CERTIFIED_PRIORS", "ESTIMATED", "WEIGHTED_PRIORS",
           "contraction_factor", "robustness_constant"]
