r"""MOL: Monotone Operator Learning (Pramanik, Zimmerman & Jacob, IEEE TCI 2023) as a deep-equilibrium model.

The reconstruction is the solution of the monotone inclusion

.. math:: F(x) + \lambda A^H (A x - b) = 0,\qquad F = I - H,

with :math:`H` a CNN (:class:`~molrecon.models.cnn.ConvDenoiser`). When :math:`\operatorname{Lip}(H) \le L < 1`,
:math:`F` is :math:`m = 1 - L` monotone and the solution is unique and robust to perturbations of :math:`b`.
It is found by iterating the MOL block

.. math:: z = (1-\alpha)\,x + \alpha\,H(x),\qquad x^+ = (I + \alpha\lambda A^H A)^{-1}(z + \alpha\lambda A^H b),

whose fixed points are exactly the solutions above for every :math:`\alpha > 0`. The block is a contraction with
factor :math:`c = |1-\alpha| + \alpha L` for :math:`0 < \alpha < 2/(1+L)`; the default :math:`\alpha = 1`
minimises :math:`c` (:math:`c = L`) — the authors' :math:`\alpha = 0.01` gives :math:`c = 1 - 0.01\,m`, hence
their ~150 iterations. See ``docs/theory.md`` for the derivations.

Forward: from the CG-SENSE start, plain or Anderson iterations under ``no_grad`` with per-sample stopping; the DC
step is ``cg_iter`` CG iterations warm-started at :math:`x` (fixed points are unchanged: at a fixed point the
warm start already solves the system), or fewer with ``cg_forcing`` (an inexact-Newton forcing term: the CG
stops once its residual is that fraction of the one the warm start leaves, so late iterations, whose start is
nearly the block's answer, cost few steps; the fixed points are again unchanged). A last *exact* block (CG to
``cg_tol``) at the best iterate :math:`x_k` gives the output and the a-posteriori bound
:math:`\|x_{out} - x^\star\| \le c/(1-c)\,\|x_{out} - x_k\|` (``docs/theory.md`` §4); the solver
keeps :math:`H(x_k)`, so this block costs no CNN evaluation.

Backward: implicit (:mod:`molrecon.solvers.implicit`) — one recorded exact block, an adjoint fixed-point solve
with vector–Jacobian products, and an implicit CG backward of the DC solve. Memory does not depend on the
number of forward iterations. With gradients the recorded block *is* the last exact block (it is not also run
without gradients), and the bound of a training step omits the CG residual, so it is never certified.

Example
-------
>>> import torch
>>> from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
>>> physics = MultiCoilMRI(simulate_coil_maps((32, 32), num_coils=4)[None], RandomMask(0.08, 4)((32, 32), seed=0))
>>> y = physics.A(torch.ones(1, 32, 32, dtype=torch.complex64))
>>> model = MOL(constraint="sn", dims="2d", channels=8, layers=3).eval()
>>> x, info = model.solve(y, physics)
>>> x.shape, bool(info.all_converged)
(torch.Size([1, 32, 32]), True)
>>> model.certificate(physics)["contraction"] < 1
True

The certificate (the theorems' constants and each solve's a-posteriori bound) is
:class:`~molrecon.models.certificate.CertificateMixin`, the training penalty
:class:`~molrecon.models.penalty.PenaltyMixin`; the numerics live in :mod:`molrecon.solvers`, the
constraints in :mod:`molrecon.models.constraints` and the networks in :mod:`molrecon.models.priors`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConvergenceError, InputError
from ..names import CONSTRAINT_METHOD as CONSTRAINTS
from ..normalization import model_normalization, scale_invariant
from ..physics.linear import LinearPhysics
from ..solvers.backward import BACKWARD_OPTIONS, attach_backward, check_backward_options
from ..solvers.cg import conjugate_gradient, shifted_normal
from ..solvers.fixed_point import fixed_point_solve
from ..solvers.implicit import dc_solve
from ..solvers.info import SolverInfo
from ..solvers.timing import region
from ..tensor_utils import batch_norms, finite_per_sample
from .certificate import WEIGHTED_PRIORS, CertificateMixin
from .constraints import Constraint, make_constraint
from .mol_settings import check_mol_arguments, check_solve_inputs, resolve_settings
from .penalty import PenaltyMixin
from .priors import build_prior


def _frozen(weights: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """The effective CNN weights detached: the no-grad solves and bounds must not record a graph."""
    return None if weights is None else [w.detach() for w in weights]


class MOL(CertificateMixin, PenaltyMixin, nn.Module):
    """Monotone Operator Learning reconstruction (see the module docstring for the math).

    Parameters
    ----------
    denoiser: the CNN ``H`` (complex → complex); ``None`` builds the paper's :class:`ConvDenoiser` for ``dims``
        (now if ``dims`` is given, else at the first call from ``physics.dims``).
    constraint: how ``Lip(H) < 1`` is imposed: a :class:`~molrecon.models.constraints.Constraint`, or its
        registered name — ``"sn"`` (MOL-SN, certified), ``"lr"`` (MOL-LR, Lipschitz penalty), ``"none"`` (DEQ)
        — built from ``constraint_options``, the strategy's own fields: ``lipschitz_target`` (SN);
        ``lr_weight``, ``lr_threshold``, ``lr_eps``, ``lr_steps``, ``lr_noise``, ``lr_step_size`` (MOL-LR
        penalty; authors: 1e-6, 0.98, 1e-3, 10 ascent steps, 0.01, 1.0), ``lr_clip`` (the rescaling safeguard,
        :meth:`enforce_lipschitz`; ``None`` disables it), ``lr_warm_steps`` (amortised estimate from the slice's
        last adversarial point, ``train.fixed_point_cache``), ``lr_jacobian_steps`` and ``lr_jacobian_threshold``
        (also penalise the Jacobian power-iteration estimate, warm-started per slice), ``lr_jacobian_block``
        (penalise the top k Jacobian directions found by subspace iteration instead of one),
        ``lr_zero_jacobian_steps`` (also penalise the Jacobian at x = 0, the empty background's). Keys of the other
        strategies are ignored (stored configs carry all of them).
    max_iter, tol: forward fixed-point iterations and relative-change tolerance.
    alpha: step of the block (default 1: the smallest contraction factor; any ``0 < α < 2/(1+L)`` contracts).
    lam: data-consistency weight λ (learnable when ``learn_lam``; stored as ``log_lam``).
    solver: ``"anderson"`` or ``"plain"`` (forward and adjoint).
    dims, channels, layers, kernel_size: the CNN built when ``denoiser`` is ``None``.
    cg_iter: CG iterations of the DC step per forward iteration. cg_forcing: stop that CG earlier, once its
        residual is this fraction of its warm start's (``None`` or 0: always ``cg_iter`` steps, or ``cg_tol``;
        a per-call 0 turns off the forcing a model ships with).
    strict: raise :class:`ConvergenceError` instead of warning when the forward does not converge.
    cg_tol, dc_exact_iter: tolerance/cap of the exact DC solves (output step, recorded step, backward).
    anderson_m: Anderson memory. min_iter: minimum forward iterations.
    backward_max_iter, backward_tol: adjoint solve (defaults: ``max_iter``, ``tol/10``). backward_cg_iter: CG
        steps of each DC backward inside the adjoint solve, warm-started (``None``: to ``cg_tol``; the adjoint's
        fixed point is the same either way, :mod:`molrecon.solvers.implicit`).
    backward: the backward mode (:mod:`molrecon.solvers.backward`): ``"implicit"`` (exact; default), ``"jfb"``
        (Jacobian-free) or ``"phantom"`` (``backward_steps`` damped unrolled steps of damping
        ``backward_damping`` from the fixed point). Changes only the gradient, never the forward solve.
    init_lam, init_cg_iter: CG-SENSE start (the authors': λ = 100, 50 iterations).
    architecture: the parametrisation of ``H`` (:mod:`molrecon.models.priors`): ``"plain"`` (the paper's CNN;
        spectral-normalised under MOL-SN), ``"residual"`` (``H = s(x + N(x))``, MOL-LR / DEQ), ``"sll"``
        (certified SDP-based Lipschitz layers, MOL-SN) or ``"orthogonal"`` (certified orthogonal convolutions
        with MaxMin, MOL-SN). residual_scale: ``s``; residual_init_gain: scale of the residual's last layer at
        initialisation (0: ``H = s·I``). state_channels: state width of the certified networks.
    """

    def __init__(self, denoiser: nn.Module | None = None, constraint: str | Constraint = "sn", max_iter: int = 100,
                 tol: float = 1e-4, alpha: float = 1.0, lam: float = 100.0, solver: str = "anderson",
                 dims: str | None = None, channels: int = 64, layers: int = 5,
                 cg_iter: int = 5, cg_forcing: float | None = None, strict: bool = False, learn_lam: bool = True,
                 kernel_size: int = 3,
                 cg_tol: float = 1e-6, dc_exact_iter: int = 100, anderson_m: int = 5, min_iter: int = 2,
                 backward_max_iter: int | None = None, backward_tol: float | None = None,
                 backward_cg_iter: int | None = None, init_lam: float = 100.0, init_cg_iter: int = 50,
                 architecture: str = "plain",
                 residual_scale: float = 0.9, state_channels: int = 16, residual_init_gain: float = 0.0,
                 backward: str = "implicit", backward_steps: int = 5, backward_damping: float = 0.5,
                 **constraint_options: Any) -> None:
        super().__init__()
        if isinstance(constraint, Constraint):
            if constraint_options:
                raise InputError(f"MOL: give constraint options inside the {type(constraint).__name__} object, "
                                 f"not as {sorted(constraint_options)}")
            strategy = constraint
        else:
            strategy = make_constraint(constraint, constraint_options)
        constraint = strategy.name
        check_mol_arguments(constraint=constraint, solver=solver, dims=dims, alpha=alpha, lam=lam,
                            max_iter=max_iter, cg_iter=cg_iter, cg_forcing=cg_forcing,
                            backward_cg_iter=backward_cg_iter, architecture=architecture, backward=backward,
                            backward_steps=backward_steps, backward_damping=backward_damping,
                            residual_scale=residual_scale)
        if constraint != "sn" and architecture != "orthogonal" and getattr(strategy, "lipschitz_target", None):
            # only an orthogonal H has a scale under MOL-LR; configs stored before it had one carry the key anyway
            strategy = dataclasses.replace(strategy, lipschitz_target=None)
        if architecture == "orthogonal" and getattr(strategy, "lr_clip", None) is not None:
            raise InputError("MOL-LR: the rescaling safeguard (lr_clip) cannot shrink an orthogonal H, whose kernels "
                             "stay orthogonal; set lr_clip to null and let the penalty hold the estimate")
        self.constraint_strategy = strategy
        self.constraint, self.max_iter, self.tol, self.alpha = constraint, int(max_iter), float(tol), float(alpha)
        self.solver, self.dims, self.channels, self.layers = solver, dims, int(channels), int(layers)
        self.kernel_size = int(kernel_size)
        self.cg_iter, self.strict, self.learn_lam = int(cg_iter), bool(strict), bool(learn_lam)
        self.cg_forcing = float(cg_forcing) if cg_forcing else None  # 0: no forcing term
        self.cg_tol, self.dc_exact_iter, self.anderson_m = float(cg_tol), int(dc_exact_iter), int(anderson_m)
        self.min_iter = int(min_iter)
        self.backward_max_iter = int(backward_max_iter) if backward_max_iter is not None else None
        self.backward_tol = float(backward_tol) if backward_tol is not None else None
        self.backward_cg_iter = int(backward_cg_iter) if backward_cg_iter is not None else None
        self.backward = backward
        self.backward_steps, self.backward_damping = int(backward_steps), float(backward_damping)
        self.init_lam, self.init_cg_iter = float(init_lam), int(init_cg_iter)
        self.architecture, self.residual_scale = architecture, float(residual_scale)
        self.state_channels, self.residual_init_gain = int(state_channels), float(residual_init_gain)
        self.last_lip_point: torch.Tensor | None = None
        self.last_lip_points: dict[str, torch.Tensor] = {}
        self.log_lam = nn.Parameter(torch.tensor(math.log(lam), dtype=torch.float32), requires_grad=learn_lam)
        self._custom_denoiser = denoiser is not None
        self.denoiser: nn.Module | None = denoiser
        if denoiser is None and dims is not None:
            self._build(dims)
        self.last_info: SolverInfo | None = None
        self.last_backward_info: SolverInfo | None = None
        self._lip_estimate: float | None = None
        self._bound_lip_cache: dict = {}
        self._last_x: torch.Tensor | None = None

    # -- construction ---------------------------------------------------------------------------------------
    @property
    def lipschitz_target(self) -> float | None:
        """The scale ``L`` of a certified-form ``H`` (MOL-SN's bound; MOL-LR's orthogonal ``H``), else ``None``."""
        return getattr(self.constraint_strategy, "lipschitz_target", None)

    def _build(self, dims: str) -> None:
        self.denoiser = build_prior(self.architecture, self.constraint, dims, self.channels, self.layers,
                                    self.kernel_size, self.lipschitz_target, self.residual_scale,
                                    self.state_channels, self.residual_init_gain).to(self.log_lam.device)
        self.dims = dims

    def _ensure_denoiser(self, physics: LinearPhysics) -> nn.Module:
        if self.denoiser is None:
            self._build(physics.dims)
        den_dims = getattr(self.denoiser, "dims", None)
        if den_dims is not None and den_dims != physics.dims:
            raise InputError(f"MOL: the CNN was built for dims={den_dims!r} but the data is {physics.dims!r}")
        return self.denoiser

    @property
    def method_name(self) -> str:
        return CONSTRAINTS[self.constraint]

    @property
    def lam(self) -> torch.Tensor:
        """λ = exp(log_lam) (always positive)."""
        return self.log_lam.exp()

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) that rebuild this model; weights come from the state dict."""
        den = self.denoiser
        cfg = {"constraint": self.constraint, "max_iter": self.max_iter, "tol": self.tol, "alpha": self.alpha,
               "lam": float(self.lam.detach()), "solver": self.solver, "dims": self.dims,
               "channels": self.channels, "layers": self.layers,
               "cg_iter": self.cg_iter, "cg_forcing": self.cg_forcing, "strict": self.strict,
               "learn_lam": self.learn_lam,
               "kernel_size": self.kernel_size, "cg_tol": self.cg_tol, "dc_exact_iter": self.dc_exact_iter,
               "anderson_m": self.anderson_m, "min_iter": self.min_iter,
               "backward_max_iter": self.backward_max_iter, "backward_tol": self.backward_tol,
               "backward_cg_iter": self.backward_cg_iter,
               "backward": self.backward, "backward_steps": self.backward_steps,
               "backward_damping": self.backward_damping,
               "init_lam": self.init_lam, "init_cg_iter": self.init_cg_iter,
               "architecture": self.architecture, "residual_scale": self.residual_scale,
               "state_channels": self.state_channels, "residual_init_gain": self.residual_init_gain,
               **self.constraint_strategy.config()}
        if isinstance(den, WEIGHTED_PRIORS):
            cfg.update(dims=den.dims, channels=den.channels, layers=den.layers, kernel_size=den.kernel_size)
        elif den is not None:
            raise InputError(f"MOL.config: a custom denoiser ({type(den).__name__}) cannot be described by a "
                             f"config; use ConvDenoiser")
        return cfg

    # -- checks ---------------------------------------------------------------------------------------------
    def _check_inputs(self, y: torch.Tensor, physics: LinearPhysics, x0: torch.Tensor | None = None) -> None:
        check_solve_inputs(self, y, physics, x0)

    # -- the block ------------------------------------------------------------------------------------------
    def _h(self, x: torch.Tensor, weights) -> torch.Tensor:
        with region("cnn"):  # timing regions (solvers.timing) are no-ops unless a benchmark is timing
            if isinstance(self.denoiser, WEIGHTED_PRIORS):
                return self.denoiser.apply(x, weights)
            return self.denoiser(x)

    def _weights(self, spatial):
        with region("cnn-weights", absorb=True):
            if isinstance(self.denoiser, WEIGHTED_PRIORS):
                return self.denoiser.effective_weights(spatial)
            return None

    def _block(self, x: torch.Tensor, weights, aty: torch.Tensor, physics: LinearPhysics, mu: torch.Tensor,
               exact: bool, where: str = "", cg_iter: int | None = None,
               cg_forcing: float | None = None) -> torch.Tensor:
        """One MOL block ``x⁺ = (I + μN)^{-1}((1−α)x + αH(x) + μA^H b)`` with ``μ = αλ``."""
        return self._data_step(x, self._checked_h(x, weights, where), aty, physics, mu, exact, cg_iter, cg_forcing)

    def _checked_h(self, x: torch.Tensor, weights, where: str) -> torch.Tensor:
        hx = self._h(x, weights)
        if not bool(finite_per_sample(hx).all()):
            raise InputError(f"MOL: the CNN output H(x) contains NaN/Inf {where} (check the weights and the "
                             f"scale of the input)")
        return hx

    def _block_rhs(self, x: torch.Tensor, hx: torch.Tensor, aty: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """``(1−α)x + αH(x) + μA^H b``, the right-hand side of the block's data-consistency solve."""
        return hx + mu * aty if self.alpha == 1.0 else (1 - self.alpha) * x + self.alpha * hx + mu * aty

    def _data_step(self, x: torch.Tensor, hx: torch.Tensor, aty: torch.Tensor, physics: LinearPhysics,
                   mu: torch.Tensor, exact: bool, cg_iter: int | None = None,
                   cg_forcing: float | None = None) -> torch.Tensor:
        """The rest of the block once ``H(x)`` is known: the data-consistency solve (the inexact one: ``cg_iter``
        warm-started CG steps, fewer with ``cg_forcing``)."""
        rhs = self._block_rhs(x, hx, aty, mu)
        if exact:
            return dc_solve(rhs, mu, physics.normal, x0=x, max_iter=self.dc_exact_iter, tol=self.cg_tol)
        mu_d = mu.detach()
        with region("cg"):
            out, _ = conjugate_gradient(shifted_normal(physics.normal, mu_d), rhs, x0=x,
                                        max_iter=self.cg_iter if cg_iter is None else cg_iter, tol=self.cg_tol,
                                        forcing=cg_forcing)
        return out

    def fixed_point_map(self, y: torch.Tensor, physics: LinearPhysics,
                        cg_iter: int | None = None,
                        cg_forcing: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map ``T(x) = (I + μN)^{-1}((1−α)x + αH(x) + μA^H y)`` that the forward solver iterates.

        The data-consistency step is solved as in the solver (``cg_iter`` CG steps and ``cg_forcing``, the
        model's by default);
        the CNN weights and ``μ = αλ`` are frozen (detached). The map is kept apart from the solvers, as
        torchdeq keeps ``func``: any iteration (plain, Anderson, a study of the iteration itself) can run it.
        Like :meth:`solve`, it works at the model's training scale: ``T(x) = T_{cy}(c x) / c`` with ``c`` the
        normalisation factor of ``y`` (:mod:`molrecon.normalization`), so it is the map the solver iterates,
        in the units of ``y``.
        """
        s = self._settings({"cg_iter": cg_iter, "cg_forcing": cg_forcing})
        self._check_inputs(y, physics)
        self._ensure_denoiser(physics)
        with torch.no_grad():
            weights = self._weights(tuple(physics.spatial_shape))
            w_d = _frozen(weights)
            mu = (self.alpha * self.lam).detach()
            c = model_normalization(self, physics).factors(y.detach(), physics)
            c = c.reshape(-1, *([1] * (y.ndim - 1)))
            aty = physics.A_adjoint(y.detach() * c)
            c = c.reshape(c.shape[0], *([1] * (aty.ndim - 1)))

        def T(x: torch.Tensor) -> torch.Tensor:
            return self._block(x * c, w_d, aty, physics, mu, exact=False, cg_iter=s["cg_iter"],
                               cg_forcing=s["cg_forcing"]) / c

        return T

    def _settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The solver settings of one call (:func:`~molrecon.models.mol_settings.resolve_settings`)."""
        return resolve_settings(self, overrides)

    def initial_image(self, y: torch.Tensor, physics: LinearPhysics) -> torch.Tensor:
        """CG-SENSE start: ``argmin λ0‖Ax − b‖² + ‖x‖²`` (λ0 = ``init_lam``, ``init_cg_iter`` CG iterations)."""
        lam0 = self.init_lam
        with torch.no_grad(), region("init", absorb=True):
            x, _ = conjugate_gradient(shifted_normal(physics.normal, lam0), lam0 * physics.A_adjoint(y),
                                      max_iter=self.init_cg_iter, tol=1e-6)
        return x

    # -- solving --------------------------------------------------------------------------------------------
    def _run(self, y: torch.Tensor, physics: LinearPhysics, x0: torch.Tensor | None, weights,
             s: dict[str, Any], exact_output: bool = True) -> tuple[torch.Tensor, SolverInfo]:
        """Fixed-point solve under no_grad with per-sample stopping, then one exact block + error bound; ``s``
        holds the solver settings of this call (:meth:`_settings`). Without ``exact_output`` the last iterate
        is returned and no bound is computed: a differentiable caller records the exact block itself."""
        B = y.shape[0]
        with torch.no_grad():
            w_d = _frozen(weights)
            mu = (self.alpha * self.lam).detach()
            aty = physics.A_adjoint(y.detach())
            if x0 is None:
                x0 = self.initial_image(y.detach(), physics)
            counter = {"k": 0}

            def T(xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
                counter["k"] += 1
                if idx.numel() == B:
                    ph, a = physics, aty
                else:
                    ph, a = physics.subset(idx), aty[idx]
                hx = self._checked_h(xs, w_d, f"at iteration {counter['k']}")
                out = self._data_step(xs, hx, a, ph, mu, exact=False, cg_iter=s["cg_iter"],
                                      cg_forcing=s["cg_forcing"])
                # for the exact last block, H(x) goes back with the block: the solver keeps it at the best iterate
                return (out, hx) if exact_output else out

            x_last, info = fixed_point_solve(T, x0.detach(), solver=s["solver"], max_iter=s["max_iter"],
                                             tol=s["tol"], min_iter=s["min_iter"], m=self.anderson_m)
            if not exact_output:
                self._warn_unconverged(info, s)
                return x_last, info
            # one exact block at the best iterate x_k, whose H(x_k) the solver kept: the output, and the
            # a-posteriori bound ‖x_out − x*‖ ≤ c/(1−c)‖x_out − x_k‖ (CG to cg_tol, started at the inexact
            # block's x_last; its residual r enters the bound as ‖r‖/(1−c) since ‖(I + μN)^{-1}‖ ≤ 1)
            x_k, hx = info.extra.pop("best_input"), info.extra.pop("best_aux")
            if not bool(torch.isfinite(info.extra["best_residual"]).all()):  # no finite T(x) for some element
                x_k, hx = x_last, self._checked_h(x_last, w_d, "in the final step")
            rhs = self._block_rhs(x_k, hx, aty, mu)
            with region("final-dc", absorb=True):
                x_out, cg_info = conjugate_gradient(shifted_normal(physics.normal, mu), rhs, x0=x_last,
                                                    max_iter=self.dc_exact_iter, tol=self.cg_tol)
            cg_err = cg_info.final_residual.to(x_out.real.dtype) * batch_norms(rhs)
        self._add_bound(info, x_out, x_k, w_d, cg_err, x0 is None)
        self._warn_unconverged(info, s)
        self._finish(x_out, info)
        return x_out, info

    def _warn_unconverged(self, info: SolverInfo, s: dict[str, Any]) -> None:
        if info.all_converged:
            return
        bad = (~info.converged).nonzero().flatten().tolist()
        res = float(info.extra["best_residual"][~info.converged].max())
        msg = (f"MOL ({self.method_name}) forward did not converge for sample(s) {bad}: relative change "
               f"{res:.2e} > tol {s['tol']:.1e} after {s['max_iter']} iterations")
        if s["strict"]:
            raise ConvergenceError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _finish(self, x_out: torch.Tensor, info: SolverInfo) -> None:
        if not torch.isfinite(x_out).all():
            raise InputError(f"MOL ({self.method_name}): the reconstruction contains NaN/Inf (diverged)")
        self._last_x = x_out.detach()
        self.last_info = info

    @scale_invariant
    def solve(self, y: torch.Tensor, physics: LinearPhysics, x0: torch.Tensor | None = None,
              **overrides: Any) -> tuple[torch.Tensor, SolverInfo]:
        """Reconstruct without gradients; return ``(x, info)``. ``info.extra["error_bound"]`` is the per-sample
        a-posteriori bound on ``‖x − x*‖`` (certified for MOL-SN in eval mode). The k-space is normalised to the
        model's training scale and the result scaled back (:mod:`molrecon.normalization`).

        ``overrides`` (keys of :data:`SOLVE_OVERRIDES`; ``None`` keeps the model's value) change the solver for
        this call only; the model is not modified.
        """
        s = self._settings(overrides)
        self._check_inputs(y, physics, x0)
        self._ensure_denoiser(physics)
        with torch.no_grad():
            weights = self._weights(tuple(physics.spatial_shape))
            return self._run(y, physics, x0, weights, s)

    @scale_invariant
    def forward(self, y: torch.Tensor, physics: LinearPhysics, x0: torch.Tensor | None = None,
                backward: str | None = None, **overrides: Any) -> torch.Tensor:
        """Reconstruct ``x`` (complex ``[B, *spatial]``), differentiable by the ``backward`` mode (``None``: the
        model's own, default implicit differentiation; an attack on a model trained with ``jfb`` asks for
        ``"implicit"``), equivariant in the k-space scale (:mod:`molrecon.normalization`);
        ``overrides`` as in :meth:`solve` (the backward tolerance follows an overridden ``tol``)."""
        s = self._settings(overrides)
        if backward is None:
            backward = self.backward
        else:
            check_backward_options(backward, {}, where="MOL")
        self._check_inputs(y, physics, x0)
        self._ensure_denoiser(physics)
        weights = self._weights(tuple(physics.spatial_shape))  # once: the same H for every iteration
        need_grad = torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in self.parameters()))
        # with gradients, the recorded exact block below is the output: the no-grad one of _run would be a copy
        x_star, info = self._run(y, physics, x0, weights, s, exact_output=not need_grad)
        if not need_grad:
            return x_star
        mu = self.alpha * self.lam
        aty = physics.A_adjoint(y)

        def step(x: torch.Tensor) -> torch.Tensor:
            return self._block(x, weights, aty, physics, mu, exact=True, where="in the recorded step")

        def record(binfo: SolverInfo) -> None:
            self.last_backward_info = binfo

        self.last_backward_info = None
        # every mode's settings; each mode takes the ones it declares
        options = {"solver": s["solver"], "max_iter": self.backward_max_iter or s["max_iter"],
                   "tol": self.backward_tol if self.backward_tol is not None else s["tol"] / 10,
                   "m": self.anderson_m, "on_info": record, "inner_cg_iter": self.backward_cg_iter,
                   "steps": self.backward_steps, "damping": self.backward_damping}
        mine = BACKWARD_OPTIONS[backward]
        x_out = attach_backward(backward, step, x_star, **{k: v for k, v in options.items() if k in mine})
        w_d = _frozen(weights)
        self._add_bound(info, x_out, x_star, w_d, None, x0 is None)
        self._finish(x_out, info)
        return x_out

    def prior(self, x: torch.Tensor, inference: bool = True) -> torch.Tensor:
        """``H(x)``: the network the certificate speaks of, at inference settings (eval-mode weights: certified
        conv norms under spectral normalisation), so that a certificate can be checked independently (it is
        differentiable in ``x``: a Jacobian power iteration on it needs nothing from MOL's internals).
        ``inference=False`` evaluates ``H`` in the model's current mode instead (training: power-iteration
        normalisers with gradients), as denoiser pre-training needs.

        ``x`` is a complex image batch ``[B, *spatial]``; the output has the same shape.

        Example
        -------
        >>> model = MOL(constraint="sn", architecture="sll", dims="2d", channels=8, layers=2)
        >>> model.prior(torch.zeros(1, 16, 16, dtype=torch.complex64)).shape
        torch.Size([1, 16, 16])
        """
        if self.denoiser is None:
            if self.dims is None:
                raise InputError("MOL.prior: the network is not built yet (pass dims= or reconstruct once)")
            self._build(self.dims)
        check = getattr(self.denoiser, "check_input", None)
        if check is not None:
            check(x)
        if not inference:
            return self._h(x, self._weights(tuple(x.shape[1:])))
        was_training = self.training
        self.eval()
        try:
            return self._h(x, self._weights(tuple(x.shape[1:])))
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return (f"method={self.method_name!r}, solver={self.solver!r}, alpha={self.alpha}, "
                f"max_iter={self.max_iter}, tol={self.tol}")


__all__ = ["MOL"]
