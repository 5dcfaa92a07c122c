r"""Monotonicity constraints for MOL: Lipschitz estimators of ``H`` and the log-barrier penalty (MOL-LR).

MOL needs :math:`F = I - H` to be :math:`m`-monotone, which holds when :math:`\operatorname{Lip}(H) \le L < 1`
(then :math:`m = 1 - L`; see ``docs/theory.md``). MOL-SN enforces it by construction
(:class:`~molrecon.models.cnn.ConvDenoiser` with ``spectral_norm=True``). MOL-LR leaves the layers free and adds
a training penalty on an *estimate* of the local Lipschitz constant around the current reconstruction:

* :func:`adversarial_lipschitz` — the authors' estimator: start at :math:`v = u + \epsilon\,\xi` around the
  detached output :math:`u` (:math:`\xi` uniform in :math:`[0,1)` for real and imaginary parts), take
  ``steps`` gradient-ascent steps on :math:`\rho(v) = \|H(u) - H(v)\| / \|u - v\|`, rescaling :math:`v` to the
  norm of :math:`u` after each step as they do, and return :math:`\rho(v)` differentiable w.r.t. the weights
  of ``H`` (not w.r.t. ``u`` or ``v``);
* :func:`jacobian_spectral_norm` — a second estimator: power iteration on :math:`J_H(u)^T J_H(u)` with
  Jacobian–vector products, i.e. the local Lipschitz constant at :math:`u` in the limit of small
  perturbations (the adversarial estimate probes finite ones);
* :func:`lipschitz_barrier` — :math:`-\log(T - L)` for :math:`L < T - e`, continued linearly with matching value
  at :math:`L = T - e` above (the authors' ``contdifflog``, :math:`T = 0.98`, :math:`e = 10^{-3}`).

Both estimators are lower bounds of the true Lipschitz constant (they evaluate a ratio at particular points),
which is why MOL-LR's certificate is marked as an estimate.

Constraint strategies
---------------------
How MOL imposes ``Lip(H) < 1`` is a :class:`Constraint` object carrying its own parameters, registered by name
(:func:`register_constraint`, :data:`CONSTRAINT_STRATEGIES`): :class:`SpectralNormalization` (``"sn"``, certified
by the network's construction: spectral-normalised plain CNN or SLL layers), :class:`LipschitzPenalty`
(``"lr"``: the adversarial estimate, barrier and rescaling safeguard) and :class:`Unconstrained` (``"none"``,
the DEQ). A strategy's fields are the flat keys of a MOL config (``lr_weight``, ``lipschitz_target``, ...), so
stored configs keep working; a new constraint is one registered class here plus its name in
:data:`molrecon.names.CONSTRAINTS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..tensor_utils import batch_norms
from .cnn import ConvDenoiser
from .priors import ResidualDenoiser


def lipschitz_barrier(lip: torch.Tensor, threshold: float = 0.98, eps: float = 1e-3) -> torch.Tensor:
    r"""The authors' continuously differentiable log barrier.

    .. math:: b(L) = \begin{cases} -\log(T - L) & L < T - e \\ -\log e + (L - T + e)/e & \text{otherwise}\end{cases}

    Value and slope match at :math:`L = T - e`, so the penalty stays finite (and steep) when the estimate
    overshoots the threshold instead of returning NaN.
    """
    lip = torch.as_tensor(lip)
    inside = lip < (threshold - eps)
    safe = torch.where(inside, threshold - lip, torch.ones_like(lip))
    y1 = -torch.log(safe)
    y2 = -torch.log(torch.as_tensor(eps, dtype=lip.dtype, device=lip.device)) + (lip - threshold + eps) / eps
    return torch.where(inside, y1, y2)


def adversarial_lipschitz(h: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, steps: int = 10,
                          noise: float = 0.01, step_size: float = 1.0,
                          generator: torch.Generator | None = None, recompute: bool = False,
                          v0: torch.Tensor | None = None, return_point: bool = False):
    r"""The authors' adversarial local Lipschitz estimate of ``h`` around ``u`` (one value per batch element).

    Returns :math:`\|h(u) - h(v^\star)\| / \|u - v^\star\|` ``[B]`` with gradients flowing into the parameters
    of ``h`` only (``u`` and the adversarial point :math:`v^\star` are constants), ready for a penalty.

    ``recompute``: the two CNN graphs of the returned ratio are not kept for backward but recomputed there
    (activation checkpointing): the same value and gradient, one CNN forward more per evaluation, and the
    penalty no longer holds two CNN graphs until the step's backward. ``v0``: start the ascent from this point
    (e.g. the previous step's :math:`v^\star` of the same slice) instead of the noisy copy of ``u``.
    ``return_point``: also return :math:`v^\star` (detached), to warm-start the next estimate.
    """
    u = u.detach()
    u_norm = batch_norms(u).clamp_min(1e-12).reshape(-1, *([1] * (u.ndim - 1)))
    if v0 is not None:
        v = v0.detach().to(u.dtype)
    else:
        real = u.real.new_empty(u.shape)
        if generator is not None:
            xi = torch.complex(torch.rand(u.shape, generator=generator, dtype=real.dtype).to(u.device),
                               torch.rand(u.shape, generator=generator, dtype=real.dtype).to(u.device))
        else:
            xi = torch.complex(torch.rand_like(real), torch.rand_like(real))
        v = u + noise * xi
    with torch.enable_grad():
        hu = h(u).detach()
        for _ in range(steps):
            v = v.detach().requires_grad_(True)
            ratio = batch_norms(hu - h(v)) / batch_norms(u - v).clamp_min(1e-12)
            (g,) = torch.autograd.grad(ratio.sum(), v)
            v = v.detach() + step_size * g
            # the authors rescale v onto the sphere of radius ||u|| after each ascent step
            v = v / batch_norms(v).clamp_min(1e-12).reshape_as(u_norm) * u_norm
    v = v.detach()
    if recompute:
        diff = checkpoint(lambda a, b: h(a) - h(b), u, v, use_reentrant=False)
    else:
        diff = h(u) - h(v)
    lip = batch_norms(diff) / batch_norms(u - v).clamp_min(1e-12)
    return (lip, v) if return_point else lip


def _jvp_no_graph(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r""":math:`J_h(x)\,v` in forward mode, keeping no graph."""
    # the double-backward trick (d/dw <J^T w, v>) would hold a second graph of h while it runs, which set
    # MOL-LR's peak training memory (benchmarks/README.md, "Memory")
    with torch.no_grad(), forward_ad.dual_level():
        return forward_ad.unpack_dual(h(forward_ad.make_dual(x, v))).tangent


def _start_vectors(shape: tuple[int, ...], like: torch.Tensor, v0: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
    """``v0`` (detached, in ``like``'s dtype), else Gaussian vectors of ``shape`` (from ``generator`` if given)."""
    if v0 is not None:
        return v0.detach().to(like.dtype)
    if generator is not None:
        return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def _real_rows(block: torch.Tensor) -> torch.Tensor:
    r"""``[B, k, ...]`` as ``[B, k, n]`` real rows (complex entries as real and imaginary parts).

    A CNN acting on real and imaginary channels is only real-linear, so its Jacobian is a real matrix on
    :math:`\mathbb{R}^{2n}` and every inner product below is the real one, not the complex one.
    """
    real = torch.view_as_real(block) if block.is_complex() else block
    return real.reshape(real.shape[0], real.shape[1], -1)


def _from_real_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_real_rows`: rows ``[B, k, n]`` back to the shape and dtype of ``like``."""
    if not like.is_complex():
        return rows.reshape(like.shape)
    return torch.view_as_complex(rows.reshape(*like.shape, 2).contiguous())


def _orthonormal_rows(block: torch.Tensor) -> torch.Tensor:
    """``[B, k, ...]`` with each element's k vectors orthonormalised in the real inner product (QR)."""
    q, _ = torch.linalg.qr(_real_rows(block).transpose(1, 2))
    return _from_real_rows(q.transpose(1, 2), block)


def jacobian_top_subspace(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, k: int, n_iter: int = 3,
                          v0: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The top ``k`` singular values and right singular vectors of :math:`J_h(x)` by subspace iteration.

    ``n_iter`` steps of :math:`V \leftarrow \operatorname{orth}(J^T J V)` on ``k`` vectors per batch element at
    once (the ``k`` copies of ``x`` run as one batch of ``h``), then a Rayleigh–Ritz step: the eigenvectors of
    :math:`(JV)^T (JV)` rotate ``V`` onto the Ritz vectors. Returns ``(sigma [B, k], V [B, k, ...])``, both
    detached, in decreasing order. ``v0`` ``[B, k, ...]``: continue from these vectors.

    Why a block: the top of a CNN Jacobian's spectrum is crowded. One power-iteration vector converges at the rate
    :math:`\sigma_2/\sigma_1`, close to 1, and a barrier on that one direction lets its neighbours rise; ``k``
    vectors converge at :math:`\sigma_{k+1}/\sigma_1` and a barrier can hold all ``k``.
    """
    x = x.detach()
    b, shape = x.shape[0], x.shape[1:]
    v = _orthonormal_rows(_start_vectors((b, k, *shape), x, v0, generator))
    xs = x.repeat_interleave(k, dim=0)
    with torch.enable_grad():
        xr = xs.clone().requires_grad_(True)
        y = h(xr)
        for _ in range(n_iter):
            jv = _jvp_no_graph(h, xs, v.reshape(b * k, *shape))
            (jtjv,) = torch.autograd.grad(y, xr, jv, retain_graph=True)
            v = _orthonormal_rows(jtjv.detach().reshape(b, k, *shape))
    jv = _real_rows(_jvp_no_graph(h, xs, v.reshape(b * k, *shape)).reshape(b, k, *shape))
    evals, evecs = torch.linalg.eigh(jv @ jv.transpose(1, 2))
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    ritz = _from_real_rows(evecs.transpose(1, 2).to(jv.dtype) @ _real_rows(v), v)
    return evals.clamp_min(0).sqrt().detach(), ritz.detach()


def jacobian_spectral_norm(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_iter: int = 20,
                           generator: torch.Generator | None = None, return_vector: bool = False,
                           v0: torch.Tensor | None = None, tol: float | None = None):
    r"""Spectral norm of the Jacobian :math:`J_h(x)` per batch element by power iteration on :math:`J^T J`.

    Uses one forward-mode JVP (under ``no_grad``: it keeps no graph) and one VJP through the graph of
    :math:`h(x)`, built once, per step; returns ``[B]`` (detached). For piecewise-linear ``h`` (ReLU CNN) this
    is the norm of the local linear map at ``x``, a lower bound on ``Lip(h)``. ``v0``: start from this vector
    (e.g. the one a previous call returned with ``return_vector``) instead of a random one. ``tol``: stop before
    ``n_iter`` once no element's estimate rose by more than ``tol`` (relative) over the last 10 steps.

    The top of a CNN Jacobian's spectrum on a whole image is crowded, so the iteration creeps upwards: on the
    ``mol-lr-2d-4x`` shipped before the Jacobian barrier, at a test reconstruction, it reads 0.86 / 0.91 /
    0.985 / 1.0006 after 3 / 10 / 30 / 60 steps from a random start.
    """
    x = x.detach()
    v = _start_vectors(tuple(x.shape), x, v0, generator)
    v = v / batch_norms(v).reshape(-1, *([1] * (x.ndim - 1)))
    sigma = torch.zeros(x.shape[0], device=x.device)
    history: list[torch.Tensor] = []
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        y = h(xr)
        for _ in range(n_iter):
            if tol is not None and len(history) > 10 and bool(
                    (history[-1] - history[-11] <= tol * history[-1].abs()).all()):
                break
            jv = _jvp_no_graph(h, x, v)
            (jtjv,) = torch.autograd.grad(y, xr, jv, retain_graph=True)
            sigma = batch_norms(jv).detach()
            history.append(sigma)
            n = batch_norms(jtjv).clamp_min(1e-30).reshape(-1, *([1] * (x.ndim - 1)))
            v = (jtjv / n).detach()
    return (sigma.detach(), v) if return_vector else sigma.detach()


def jacobian_norm_along(h: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        v: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    r""":math:`\|J_h(x)\,v\| / \|v\|` per batch element, differentiable w.r.t. the parameters of ``h``.

    A forward-mode JVP at the detached ``x`` along the detached ``v``; its tangent carries the reverse-mode
    graph of the weights, so a penalty on it pushes down the Jacobian in that direction. With ``v`` the
    power-iteration vector of :func:`jacobian_spectral_norm` this is a differentiable estimate of the local
    Lipschitz constant. ``recompute``: the JVP's graph (the CNN's activations and their tangents) is not kept
    for backward but recomputed there: the same value and gradient, one JVP more.
    """
    x, v = x.detach(), v.detach().to(x.dtype)

    def norm_along(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad(), forward_ad.dual_level():
            jv = forward_ad.unpack_dual(h(forward_ad.make_dual(a, b))).tangent
        return batch_norms(jv) / batch_norms(b).clamp_min(1e-30)

    return checkpoint(norm_along, x, v, use_reentrant=False) if recompute else norm_along(x, v)


#: ``name -> Constraint class``; MOL builds its strategy from here (:func:`make_constraint`).
CONSTRAINT_STRATEGIES: dict[str, type[Constraint]] = {}


def register_constraint(name: str) -> Callable[[type], type]:
    """Class decorator adding a :class:`Constraint` to :data:`CONSTRAINT_STRATEGIES` under ``name``."""
    def deco(cls: type) -> type:
        cls.name = name
        CONSTRAINT_STRATEGIES[name] = cls
        return cls
    return deco


@dataclass
class Constraint:
    """How MOL keeps ``Lip(H) < 1``; the dataclass fields are the strategy's parameters (flat config keys)."""

    name: ClassVar[str] = ""
    #: the Lipschitz bound comes from the network's construction (a proof), not from an estimate
    certified: ClassVar[bool] = False
    #: :meth:`penalty` adds a training loss
    has_penalty: ClassVar[bool] = False

    def config(self) -> dict[str, Any]:
        """The fields, as the flat keys of a MOL config."""
        return dataclasses.asdict(self)

    def warm_keys(self) -> tuple[str, ...]:
        """Names of the per-slice vectors the penalty continues from (kept by the trainer's fixed-point cache)."""
        return ()

    def shared_warm_keys(self) -> tuple[str, ...]:
        """Those of :meth:`warm_keys` for which, on a slice's first visit, the vector last computed for any
        slice is a better start than none."""
        return ()

    def global_warm_keys(self) -> tuple[str, ...]:
        """Names of vectors that belong to no slice (one for the whole training, batch dimension 1), continued
        from step to step whatever the slice."""
        return ()

    def warm_shape(self, name: str, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one slice's ``name`` vector: an image, unless the strategy keeps several per slice."""
        return tuple(spatial_shape)

    def penalty(self, h: Callable[[torch.Tensor], torch.Tensor], x_hat: torch.Tensor,
                warm: dict[str, torch.Tensor | None] | None = None
                ) -> tuple[torch.Tensor | None, dict[str, float], dict[str, torch.Tensor]]:
        """``(loss or None, logs, points)`` added to the training loss around ``x_hat`` (none by default);
        ``warm`` holds the vectors named by :meth:`warm_keys` for this batch (``None`` where there is none yet),
        ``points`` their new values."""
        return None, {}, {}

    def enforce(self, denoiser: nn.Module | None, estimate: float | None) -> float:
        """A safeguard applied after an optimiser step; returns the weight scale it applied (1.0: none)."""
        return 1.0


@register_constraint("sn")
@dataclass
class SpectralNormalization(Constraint):
    """MOL-SN: ``Lip(H) ≤ lipschitz_target`` by construction (spectral-normalised plain CNN, or SLL layers)."""

    certified: ClassVar[bool] = True
    lipschitz_target: float = 0.95

    def __post_init__(self) -> None:
        if not (0 < self.lipschitz_target < 1):
            raise InputError(f"MOL-SN: lipschitz_target must be in (0, 1), got {self.lipschitz_target}")
        self.lipschitz_target = float(self.lipschitz_target)


@dataclass
class _Estimated(Constraint):
    """A constraint whose certificate is an estimate: the adversarial estimator's settings."""

    lr_steps: int = 10
    lr_noise: float = 0.01
    lr_step_size: float = 1.0

    def __post_init__(self) -> None:
        self.lr_steps, self.lr_noise, self.lr_step_size = int(self.lr_steps), float(self.lr_noise), float(
            self.lr_step_size)
        if self.lr_steps < 0:
            raise InputError(f"MOL: lr_steps must be >= 0, got {self.lr_steps}")

    def estimate_kwargs(self) -> dict[str, Any]:
        return {"steps": self.lr_steps, "noise": self.lr_noise, "step_size": self.lr_step_size}


@register_constraint("none")
@dataclass
class Unconstrained(_Estimated):
    """The DEQ baseline: nothing keeps ``Lip(H) < 1``; its certificate reports an estimate."""


@register_constraint("lr")
@dataclass
class LipschitzPenalty(_Estimated):
    r"""MOL-LR: ``lr_weight · barrier(L_est)`` with the authors' adversarial estimate (``lr_threshold``,
    ``lr_eps``; ``lr_steps`` ascent steps, or ``lr_warm_steps`` from the slice's last point; ``lr_steps = 0``
    turns this term off), and the rescaling safeguard at ``lr_clip`` (``None``: off).

    ``lr_jacobian_steps``: also penalise the Jacobian's spectral norm at ``x_hat``, the estimate the certificate
    takes its maximum with. That many power-iteration steps on :math:`J^T J` per training step, continued from
    the slice's vector of its last visit (``"lip_u"``; on a first visit, from the last vector of any slice),
    then a differentiable :math:`\|J u\|` (:func:`jacobian_norm_along`) under its own barrier at
    ``lr_jacobian_threshold`` (default ``lr_threshold``). Why: the adversarial ascent explores only where its
    noisy start leads, and training learns to contract there; on the model trained without this term it reads
    ~0.90 (its barrier) where the converged power iteration finds 0.97–1.02 at the 16 test reconstructions, above 1
    at 3 of them (benchmarks/README.md, "Jacobian penalty"; the shipped recipe has this term at 0.95).
    ``lr_jacobian_block``: penalise the top ``k`` directions of a subspace iteration instead of one.

    ``lr_zero_jacobian_steps``: a third barrier (same threshold), on the Jacobian's spectral norm at
    :math:`x = 0`, by a power iteration continued from step to step whatever the slice (``"lip_z"``, one vector
    for the whole training, kept by ``train.fixed_point_cache``). Why: a model trained with the amortised
    adversarial estimate and a Jacobian term at the reconstruction read ``L`` = 1.08 at every test slice, along
    directions that live in the empty background, where the Jacobian is the one at ``x = 0`` (1.086 there):
    a band of near-equal directions, one per position, that no k-vector iteration at the reconstruction holds.
    """

    has_penalty: ClassVar[bool] = True
    lr_weight: float = 1e-6
    lr_threshold: float = 0.98
    lr_eps: float = 1e-3
    lr_clip: float | None = 0.97
    lr_warm_steps: int | None = None
    lr_jacobian_steps: int | None = None
    lr_jacobian_threshold: float | None = None
    lr_jacobian_block: int | None = None
    lr_zero_jacobian_steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("lr_warm_steps", "lr_jacobian_steps", "lr_jacobian_block", "lr_zero_jacobian_steps"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise InputError(f"MOL: {key} must be >= 1 or None, got {value}")
            setattr(self, key, None if value is None else int(value))
        if self.lr_jacobian_threshold is not None:
            self.lr_jacobian_threshold = float(self.lr_jacobian_threshold)
        if self.lr_steps == 0 and self.lr_jacobian_steps is None and self.lr_zero_jacobian_steps is None:
            raise InputError("MOL-LR: lr_steps = 0 turns the adversarial term off; it needs lr_jacobian_steps (or "
                             "lr_zero_jacobian_steps), or nothing would constrain Lip(H)")
        if self.lr_jacobian_block is not None and self.lr_jacobian_steps is None:
            raise InputError("MOL-LR: lr_jacobian_block sets how many Jacobian directions the Jacobian term "
                             "penalises; it needs lr_jacobian_steps")
        self.lr_weight, self.lr_threshold, self.lr_eps = float(self.lr_weight), float(self.lr_threshold), float(
            self.lr_eps)
        self.lr_clip = None if self.lr_clip is None else float(self.lr_clip)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        for key in ("lr_warm_steps", "lr_jacobian_steps", "lr_jacobian_threshold", "lr_jacobian_block",
                    "lr_zero_jacobian_steps"):
            if cfg[key] is None:  # only when set: configs stored before these existed stay equal
                cfg.pop(key)
        return cfg

    def warm_keys(self) -> tuple[str, ...]:
        return (("lip_v",) if self.lr_warm_steps is not None else ()) + self.shared_warm_keys()

    def shared_warm_keys(self) -> tuple[str, ...]:
        # the top singular vectors of the CNN's Jacobian at different images have much in common: on the model
        # shipped before this term, 5 steps from another test image's vector read 0.944 where 5 from a random start
        # read 0.884
        return ("lip_u",) if self.lr_jacobian_steps is not None else ()

    def global_warm_keys(self) -> tuple[str, ...]:
        return ("lip_z",) if self.lr_zero_jacobian_steps is not None else ()

    def warm_shape(self, name: str, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        if name == "lip_u" and self.lr_jacobian_block is not None:
            return (self.lr_jacobian_block, *spatial_shape)
        return tuple(spatial_shape)

    def penalty(self, h: Callable[[torch.Tensor], torch.Tensor], x_hat: torch.Tensor,
                warm: dict[str, torch.Tensor | None] | None = None
                ) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        single = self.global_warm_keys()
        warm = {k: v for k, v in (warm or {}).items() if v is not None and tuple(v.shape) == (
            1 if k in single else x_hat.shape[0], *self.warm_shape(k, x_hat.shape[1:]))}
        x_hat = x_hat.detach()
        v0 = warm.get("lip_v") if self.lr_warm_steps is not None else None
        steps = self.lr_steps if v0 is None else self.lr_warm_steps
        pen = x_hat.real.new_zeros(())
        logs: dict[str, float] = {}
        points: dict[str, torch.Tensor] = {}
        if steps > 0:
            # recompute: the ratio's two CNN graphs would otherwise be held until backward, doubling what MOL keeps
            lip, point = adversarial_lipschitz(h, x_hat, steps=steps, noise=self.lr_noise,
                                               step_size=self.lr_step_size, recompute=True, v0=v0,
                                               return_point=True)
            pen = pen + self.lr_weight * lipschitz_barrier(lip, self.lr_threshold, self.lr_eps).mean()
            logs["lipschitz"] = float(lip.detach().max())
            if self.lr_warm_steps is not None:
                points["lip_v"] = point
        threshold = self.lr_threshold if self.lr_jacobian_threshold is None else self.lr_jacobian_threshold
        if self.lr_jacobian_steps is not None:
            if self.lr_jacobian_block is None:
                _, u = jacobian_spectral_norm(h, x_hat, n_iter=self.lr_jacobian_steps, return_vector=True,
                                              v0=warm.get("lip_u"))
                # recompute: the JVP's graph would otherwise be held until backward, twice what the rest of MOL
                # keeps
                jac = jacobian_norm_along(h, x_hat, u, recompute=True)
                pen = pen + self.lr_weight * lipschitz_barrier(jac, threshold, self.lr_eps).mean()
            else:
                k, b = self.lr_jacobian_block, x_hat.shape[0]
                _, u = jacobian_top_subspace(h, x_hat, k, n_iter=self.lr_jacobian_steps, v0=warm.get("lip_u"))
                jac = jacobian_norm_along(h, x_hat.repeat_interleave(k, dim=0), u.flatten(0, 1),
                                          recompute=True).reshape(b, k)
                # each direction under its own barrier: the ones well below it add little
                pen = pen + self.lr_weight * lipschitz_barrier(jac, threshold, self.lr_eps).sum(1).mean()
            logs["lipschitz_jacobian"] = float(jac.detach().max())
            if "lipschitz" in logs:
                logs["lipschitz_adversarial"] = logs["lipschitz"]
            logs["lipschitz"] = max(logs.get("lipschitz", 0.0), logs["lipschitz_jacobian"])
            points["lip_u"] = u
        if self.lr_zero_jacobian_steps is not None:
            # at x = 0 the Jacobian is the one of every flat, empty region (the background outside the object),
            # the same for every slice: one vector, continued from step to step, tracks its top direction
            zero = torch.zeros_like(x_hat[:1])
            _, z = jacobian_spectral_norm(h, zero, n_iter=self.lr_zero_jacobian_steps, return_vector=True,
                                          v0=warm.get("lip_z"))
            jac_zero = jacobian_norm_along(h, zero, z, recompute=True)
            pen = pen + self.lr_weight * lipschitz_barrier(jac_zero, threshold, self.lr_eps).mean()
            logs["lipschitz_zero"] = float(jac_zero.detach().max())
            logs["lipschitz"] = max(logs.get("lipschitz", 0.0), logs["lipschitz_zero"])
            points["lip_z"] = z
        logs["lipschitz_penalty"] = float(pen.detach())
        return pen, logs, points

    @torch.no_grad()
    def enforce(self, denoiser: nn.Module | None, estimate: float | None) -> float:
        r"""If the training estimate of ``Lip(H)`` exceeds ``lr_clip``, scale the conv weights back: every layer
        by :math:`(\text{lr\_clip}/\hat L)^{1/\text{layers}}` (plain CNN), or the residual's ``N`` so that its
        share of the bound drops (:meth:`ResidualDenoiser.rescale_to`).

        Why it exists: the authors' barrier (at 0.98, weight 1e-6) alone lets the estimate drift above 1 (their
        logs show 1.75 and a blow-up; so did ours at step ~50), after which F is no longer monotone and the
        forward stops converging. For a ReLU network scaling all weights by ``s`` scales the product bound on
        ``Lip(H)`` by ``s^layers``; the local estimate follows closely. Why the shipped recipe
        (``configs/mol_lr_2d.yaml``) turns it off: every spike of the estimate made it shrink ``N`` by up to 80 %
        in one step, which moved the fixed point and cost 1.5–2 dB of validation PSNR; a barrier at 0.90 with
        weight 1e-5 keeps the estimate below 1 on its own (benchmarks/README.md, "MOL training recipe").
        Still an estimate-driven constraint: MOL-SN remains the certified variant.
        """
        if (self.lr_clip is None or estimate is None or not math.isfinite(estimate) or estimate <= self.lr_clip
                or not isinstance(denoiser, ConvDenoiser)):
            return 1.0
        if isinstance(denoiser, ResidualDenoiser):
            return denoiser.rescale_to(estimate, self.lr_clip)
        scale = (self.lr_clip / estimate) ** (1.0 / len(denoiser.convs))
        for conv in denoiser.convs:
            conv.weight.mul_(scale)
        return float(scale)


def make_constraint(name: str, options: dict[str, Any]) -> Constraint:
    """The registered strategy ``name`` with the ``options`` that are its fields; unknown keys are refused.

    Keys of the *other* strategies are accepted and ignored: configs written before constraints were classes
    carry all of them (e.g. a DEQ config with ``lipschitz_target``).
    """
    if name not in CONSTRAINT_STRATEGIES:
        raise InputError(f"MOL: constraint must be one of {tuple(CONSTRAINT_STRATEGIES)}, got {name!r}")
    known = {f.name for cls in CONSTRAINT_STRATEGIES.values() for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"MOL: unknown constraint option(s) {unknown} (known: {', '.join(sorted(known))})")
    cls = CONSTRAINT_STRATEGIES[name]
    mine = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in mine})


__all__ = ["lipschitz_barrier", "adversarial_lipschitz", "jacobian_spectral_norm", "jacobian_top_subspace",
           "jacobian_norm_along", "Constraint",
           "SpectralNormalization", "LipschitzPenalty", "Unconstrained", "CONSTRAINT_STRATEGIES",
           "register_constraint", "make_constraint"]
