r"""The operator protocol: what every consumer of a forward model relies on, and nothing more.

In the manner of deepinv's ``LinearPhysics`` and sigpy's ``Linop``, a :class:`LinearPhysics` is a linear map
``A`` from complex images ``[B, *spatial]`` to measurements, with

* :meth:`A`, :meth:`A_adjoint` and :meth:`normal` (``AᴴA``; the default composes the two, an operator may do
  better, e.g. Toeplitz embedding for a NUFFT), and :meth:`zero_filled` (the zero-filled image at the image's
  scale, ``Aᴴy`` by default; density-compensated for a NUFFT);
* :meth:`norm_bound`, a *certified* upper bound on ``‖A‖`` (MOL's robustness constant uses it, so an estimate
  is not enough), and :meth:`power_norm`, a power-iteration estimate to test it against;
* :meth:`check_image` / :meth:`check_kspace` (one-line errors on bad shapes), :meth:`subset` (a batch subset,
  for per-sample stopping) and :meth:`to` (device);
* :meth:`sampling_weights` (which k-space entries are measured: what noise and perturbations are applied to,
  instead of reading a Cartesian ``mask``) and :meth:`sigpy_linop` (the same ``A`` of one batch element as a
  sigpy ``Linop``, for the compressed-sensing methods);
* ``dims`` and :attr:`spatial_shape`.

A new operator is one subclass implementing the abstract methods, plus its entry in the operator list of
``tests/test_operators.py``, which checks adjointness, ``normal = AᴴA`` and ``norm_bound ≥ power_norm``.

Example
-------
>>> import torch
>>> from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
>>> A = MultiCoilMRI(simulate_coil_maps((16, 16), num_coils=3)[None], RandomMask(0.08, 4)((16, 16), seed=0))
>>> isinstance(A, LinearPhysics), A.power_norm() <= A.norm_bound() * (1 + 1e-6)
(True, True)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..tensor_utils import batch_norms


class LinearPhysics(ABC):
    """A linear forward model ``A`` (see the module docstring for the contract)."""

    dims: str

    @property
    @abstractmethod
    def spatial_shape(self) -> tuple[int, ...]:
        """The image grid ``*spatial``."""

    @abstractmethod
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, *spatial]`` → measurements."""

    @abstractmethod
    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Measurements → image ``[B, *spatial]``."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᴴA x``, a new tensor: the solvers build ``x + μAᴴA x`` in it in place."""
        return self.A_adjoint(self.A(x))

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """The zero-filled image of ``y`` at the intensity scale of the image: ``Aᴴy`` for an operator whose
        samples each carry unit weight (Cartesian); a non-Cartesian operator compensates the sampling density
        first. Used as a starting image and by the k-space normalisation (:mod:`molrecon.normalization`)."""
        return self.A_adjoint(y)

    @abstractmethod
    def norm_bound(self) -> float:
        """A certified upper bound on the operator norm ``‖A‖``."""

    @abstractmethod
    def check_image(self, x: torch.Tensor, what: str = "image") -> None:
        """Refuse an image of the wrong type or shape (``InputError`` naming ``what``)."""

    @abstractmethod
    def check_kspace(self, y: torch.Tensor, what: str = "k-space") -> None:
        """Refuse measurements of the wrong type or shape (``InputError`` naming ``what``)."""

    @abstractmethod
    def subset(self, index: slice | list[int] | torch.Tensor) -> LinearPhysics:
        """The operator of a subset of the batch."""

    @abstractmethod
    def to(self, device: torch.device | str) -> LinearPhysics:
        """The same operator on ``device``."""

    @abstractmethod
    def sampling_weights(self) -> torch.Tensor:
        """A real tensor broadcastable to the k-space ``[B, C, ...]``, nonzero exactly on the measured entries
        (the Cartesian mask; ones for a non-Cartesian operator, whose k-space holds only measured samples)."""

    @abstractmethod
    def sigpy_linop(self, b: int = 0):
        """The sigpy ``Linop`` of batch element ``b``: image ``spatial_shape`` → k-space without the batch axis,
        with exactly the scaling of :meth:`A` (numpy, CPU)."""

    @torch.no_grad()
    def power_norm(self, n_iter: int = 50, seed: int = 0, batch: int = 1) -> float:
        """Power-iteration estimate of ``‖A‖`` (a lower estimate; :meth:`norm_bound` must not be below it)."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, *self.spatial_shape), generator=g, dtype=torch.complex64)
        sigma = torch.zeros(())
        for _ in range(n_iter):
            x = x / batch_norms(x).reshape(-1, *([1] * len(self.spatial_shape))).clamp_min(1e-30)
            ax = self.normal(x)
            sigma = batch_norms(ax).max().sqrt()
            x = ax
        return float(sigma)

    @torch.no_grad()
    def adjointness_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """``|⟨Ax, y⟩ − ⟨x, Aᴴy⟩| / (‖Ax‖‖y‖)``: zero up to rounding for a correct adjoint."""
        lhs = torch.vdot(self.A(x).flatten(), y.flatten())
        rhs = torch.vdot(x.flatten(), self.A_adjoint(y).flatten())
        scale = float(self.A(x).abs().pow(2).sum().sqrt() * y.abs().pow(2).sum().sqrt())
        return float((lhs - rhs).abs()) / max(scale, 1e-30)


__all__ = ["LinearPhysics"]
