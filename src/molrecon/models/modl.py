r"""MoDL: model-based deep learning (Aggarwal, Mani & Jacob, IEEE TMI 2019), the unrolled baseline of MOL.

MoDL alternates a learned denoiser and an exact data-consistency solve, for a fixed number ``K`` of
iterations, with the same CNN weights in every iteration:

.. math::
    x_0 = A^H y,\qquad z_k = D_w(x_k),\qquad
    x_{k+1} = \arg\min_x \|Ax - y\|^2 + \lambda\|x - z_k\|^2 = (A^H A + \lambda I)^{-1}(A^H y + \lambda z_k),

with :math:`D_w(x) = x + N_w(x)` a residual CNN (the authors' "noise estimator" plus a skip connection) and
the linear system solved by ``cg_iter`` conjugate-gradient steps. Unlike MOL, training differentiates through
everything by autograd: the ``K`` CNN applications *and* the CG iterations (``molrecon.solvers.
conjugate_gradient`` is written without in-place updates for this), so memory grows linearly with ``K`` and
``cg_iter``. :math:`\lambda` is learned; it is kept positive by using :math:`|\lambda| + 10^{-6}`.

Conventions (``docs/conventions.md``): images are complex ``[B, *spatial]``; the CNN sees real/imag as two
channels (inside :class:`molrecon.models.ConvDenoiser`); ``dims`` is ``"2d"``, ``"3d"`` or ``"2d+t"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..names import DIMS
from ..normalization import scale_invariant
from ..physics.linear import LinearPhysics
from ..solvers import SolverInfo, conjugate_gradient
from ..solvers.timing import region
from .cnn import ConvDenoiser


class MoDL(nn.Module):
    """Unrolled MoDL network; ``model(y, physics) -> x``.

    Parameters
    ----------
    K: number of unrolled iterations (shared CNN weights). dims: ``"2d"``, ``"3d"`` or ``"2d+t"``.
    channels, layers: width and depth of the CNN (``ConvDenoiser``). lam: initial data-consistency weight λ.
    cg_iter, cg_tol: conjugate-gradient iterations per data-consistency step and relative tolerance.
    denoiser: an optional ready CNN mapping a complex image ``[B, *spatial]`` to a complex image of the same
        shape (its output is added to the input); by default ``ConvDenoiser(dims, channels, layers)``.
    """

    method_name = "modl"

    def __init__(self, K: int = 10, dims: str = "2d", channels: int = 64, layers: int = 5, lam: float = 0.05,
                 cg_iter: int = 10, cg_tol: float = 1e-6, denoiser: nn.Module | None = None) -> None:
        super().__init__()
        if int(K) < 1:
            raise InputError(f"MoDL: K must be >= 1, got {K}")
        if int(cg_iter) < 1:
            raise InputError(f"MoDL: cg_iter must be >= 1, got {cg_iter}")
        if dims not in DIMS:
            raise InputError(f"MoDL: dims must be '2d', '3d' or '2d+t', got {dims!r}")
        if not lam > 0:
            raise InputError(f"MoDL: lam must be > 0, got {lam}")
        self.K, self.dims, self.channels, self.layers = int(K), dims, int(channels), int(layers)
        self.lam_init, self.cg_iter, self.cg_tol = float(lam), int(cg_iter), float(cg_tol)
        self._custom_denoiser = denoiser is not None
        if denoiser is None:
            denoiser = ConvDenoiser(dims=dims, channels=channels, layers=layers)
        self.denoiser = denoiser
        self.lam = nn.Parameter(torch.tensor(float(lam)))
        self.last_info: SolverInfo | None = None

    # -- the method --------------------------------------------------------------------------------------------
    def lam_value(self) -> torch.Tensor:
        """The positive λ actually used (differentiable)."""
        return self.lam.abs() + 1e-6

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`D_w(x) = x + N_w(x)`."""
        with region("cnn"):  # a no-op unless a benchmark is timing (solvers.timing)
            return x + self.denoiser(x)

    def data_consistency(self, z: torch.Tensor, atb: torch.Tensor, physics: LinearPhysics,
                         x0: torch.Tensor | None = None) -> tuple[torch.Tensor, SolverInfo]:
        r"""Solve :math:`(A^H A + \lambda I)x = A^H y + \lambda z` by CG (differentiable through the iterations)."""
        lam = self.lam_value()
        with region("cg"):
            return conjugate_gradient(lambda v: physics.normal(v).add_(lam * v), atb + lam * z, x0=x0,
                                      max_iter=self.cg_iter, tol=self.cg_tol)

    @scale_invariant
    def forward(self, y: torch.Tensor, physics: LinearPhysics) -> torch.Tensor:
        """Reconstruct ``x``; the k-space is normalised to the training scale and the result scaled back
        (:mod:`molrecon.normalization`), so the output is equivariant in the k-space scale."""
        physics.check_kspace(y, "MoDL input k-space")
        if not torch.isfinite(torch.view_as_real(y)).all():
            raise InputError("MoDL input k-space contains NaN or Inf values")
        atb = physics.A_adjoint(y)
        x = physics.zero_filled(y)  # Aᴴy for Cartesian data; density-compensated for non-Cartesian
        cg_iters = []
        info = None
        for _ in range(self.K):
            z = self.denoise(x)
            # Warm start at z: the solution is a λ-weighted blend of z and the data, so z is close to it.
            x, info = self.data_consistency(z, atb, physics, x0=z)
            cg_iters.append(info.iterations)
        assert info is not None
        b = y.shape[0]
        self.last_info = SolverInfo(
            iterations=torch.full((b,), self.K, dtype=torch.long, device=y.device),
            converged=torch.ones(b, dtype=torch.bool, device=y.device),
            residuals=info.residuals,
            extra={"cg_iterations": torch.stack(cg_iters).float().mean(0).detach(),
                   "cg_converged": info.converged.detach(), "lam": float(self.lam_value().detach())},
        )
        return x

    # -- trainer / factory protocol ----------------------------------------------------------------------------
    def extra_loss(self, x_hat: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MoDL has no regulariser beyond the data term: zero (on the right device), and λ for the logs."""
        return x_hat.new_zeros((), dtype=x_hat.real.dtype), {"lam": float(self.lam_value().detach())}

    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``molrecon.models.build_model(model.config())`` rebuilds this architecture."""
        if self._custom_denoiser:
            raise InputError("MoDL.config(): a model built with a custom denoiser cannot be described by a "
                             "config; build it with channels/layers instead")
        return {"method": self.method_name, "K": self.K, "dims": self.dims, "channels": self.channels,
                "layers": self.layers, "lam": self.lam_init, "cg_iter": self.cg_iter, "cg_tol": self.cg_tol}

    def extra_repr(self) -> str:
        return f"K={self.K}, dims={self.dims!r}, cg_iter={self.cg_iter}, lam={float(self.lam_value()):.4g}"
