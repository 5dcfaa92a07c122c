r"""Monotonicity constraints for MOL: how ``Lip(H) < 1`` is imposed (a registry of strategies).

MOL needs :math:`F = I - H` to be :math:`m`-monotone, which holds when :math:`\operatorname{Lip}(H) \le L < 1`
(then :math:`m = 1 - L`; see ``docs/theory.md``). MOL-SN enforces it by construction
(:class:`~molrecon.models.cnn.ConvDenoiser` with ``spectral_norm=True``, or SLL layers). MOL-LR leaves the layers
free and adds a training penalty on *estimates* of the local Lipschitz constant around the current
reconstruction (the estimators and the barrier are in :mod:`molrecon.models.lipschitz`).

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

from ..errors import InputError
from .cnn import ConvDenoiser
from .lipschitz import (
    Linearize,
    adversarial_lipschitz,
    jacobian_norm_along,
    jacobian_spectral_norm,
    jacobian_top_subspace,
    lipschitz_barrier,
)
from .priors import ResidualDenoiser

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
                warm: dict[str, torch.Tensor | None] | None = None, linearize: Linearize | None = None
                ) -> tuple[torch.Tensor | None, dict[str, float], dict[str, torch.Tensor]]:
        """``(loss or None, logs, points)`` added to the training loss around ``x_hat`` (none by default);
        ``warm`` holds the vectors named by :meth:`warm_keys` for this batch (``None`` where there is none yet),
        ``points`` their new values. ``linearize``: ``h``'s Jacobian at a point as an operator, where ``h`` has
        one (:func:`~molrecon.models.lipschitz.jacobian_spectral_norm`)."""
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

    ``lipschitz_target``: the scale ``L`` of an ``orthogonal`` ``H`` (:class:`~molrecon.models.priors.
    OrthogonalDenoiser`), which is also its proven bound; under MOL-LR it may exceed 1, since the penalty, not the
    construction, keeps the estimate below 1 where ``H`` acts. Other architectures ignore it (configs stored
    before it existed may carry the key). At 1.05 the network trained 0.67 dB above the residual MOL-LR and
    0.33 dB above the same network certified at 0.995 (benchmarks/README.md, "An orthogonal H under the penalty").
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
    lipschitz_target: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lipschitz_target is not None:
            if not self.lipschitz_target > 0:
                raise InputError(f"MOL-LR: lipschitz_target must be > 0, got {self.lipschitz_target}")
            self.lipschitz_target = float(self.lipschitz_target)
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
                    "lr_zero_jacobian_steps", "lipschitz_target"):
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
                warm: dict[str, torch.Tensor | None] | None = None, linearize: Linearize | None = None
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
                                              v0=warm.get("lip_u"), linearize=linearize)
                # recompute: the JVP's graph would otherwise be held until backward, twice what the rest of MOL
                # keeps
                jac = jacobian_norm_along(h, x_hat, u, recompute=True, linearize=linearize)
                pen = pen + self.lr_weight * lipschitz_barrier(jac, threshold, self.lr_eps).mean()
            else:
                k, b = self.lr_jacobian_block, x_hat.shape[0]
                _, u = jacobian_top_subspace(h, x_hat, k, n_iter=self.lr_jacobian_steps, v0=warm.get("lip_u"),
                                             linearize=linearize)
                jac = jacobian_norm_along(h, x_hat.repeat_interleave(k, dim=0), u.flatten(0, 1),
                                          recompute=True, linearize=linearize).reshape(b, k)
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
                                          v0=warm.get("lip_z"), linearize=linearize)
            jac_zero = jacobian_norm_along(h, zero, z, recompute=True, linearize=linearize)
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


__all__ = ["Constraint", "SpectralNormalization", "LipschitzPenalty", "Unconstrained", "CONSTRAINT_STRATEGIES",
           "register_constraint", "make_constraint"]
