r"""Multi-coil Cartesian MRI forward model for 2D, 3D and 2D+time data.

The measurement model is

.. math::
    b = A x + n,\qquad A x = M\,\mathcal{F}\,(S_c\,x)_{c=1..C},\qquad
    A^H b = \sum_c \bar S_c\,\mathcal{F}^H(M b_c),\qquad A^H A x = \sum_c \bar S_c\,\mathcal{F}^H M \mathcal{F}(S_c x),

with :math:`\mathcal{F}` the centred orthonormal FFT (:mod:`molrecon.physics.fft`), :math:`M` a 0/1 sampling
mask (so :math:`M^H M = M`) and :math:`S_c` coil sensitivities normalised so that :math:`\sum_c |S_c|^2 = 1`
inside the object. Then :math:`\|A\| \le 1`, which is why the step sizes and weights of MOL carry over
between datasets.

Shapes: image ``x`` is ``[B, *spatial]`` complex64, k-space ``y`` is ``[B, C, *spatial]``, maps are
``[B or 1, C, *spatial]`` and the mask broadcasts against k-space. ``*spatial`` is ``(H, W)`` for 2D,
``(D, H, W)`` for 3D (FFT over all three axes) or ``(T, H, W)`` for 2D+time (FFT over the last two axes only,
one mask per frame, static maps).

Example
-------
>>> import torch
>>> from molrecon.physics import MultiCoilMRI, simulate_coil_maps, RandomMask
>>> maps = simulate_coil_maps((64, 64), num_coils=4)[None]
>>> mask = RandomMask(center_fraction=0.08, acceleration=4)((64, 64), seed=0)
>>> physics = MultiCoilMRI(maps, mask)
>>> x = torch.randn(1, 64, 64, dtype=torch.complex64)
>>> physics.A(x).shape
torch.Size([1, 4, 64, 64])
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..names import DIMS
from .fft import fft_centered, ifft_centered, input_signs
from .linear import LinearPhysics


def infer_dims(spatial_ndim: int, dims: str | None = None) -> str:
    """Return ``"2d"``, ``"3d"`` or ``"2d+t"`` for a spatial rank, checking an explicit choice."""
    if dims is None:
        if spatial_ndim == 2:
            return "2d"
        if spatial_ndim == 3:
            return "3d"
        raise InputError(f"expected 2 or 3 spatial axes, got {spatial_ndim}")
    if dims not in DIMS:
        raise InputError(f"dims must be one of {DIMS}, got {dims!r}")
    want = 2 if dims == "2d" else 3
    if spatial_ndim != want:
        raise InputError(f"dims={dims!r} needs {want} spatial axes, got {spatial_ndim}")
    return dims


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`InputError` naming ``what`` if ``t`` holds NaN or Inf."""
    if not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "Inf"
        raise InputError(f"{what} contains {bad} values")


class MultiCoilOperator(LinearPhysics):
    """What every multi-coil operator derives from its coil maps ``self.maps`` ``[B or 1, C, *spatial]``: the image
    grid, the number of coils and the device (Cartesian :class:`MultiCoilMRI`, NUFFT ``NonCartesianMRI``)."""

    maps: torch.Tensor

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.maps.shape[2:])

    @property
    def num_coils(self) -> int:
        return int(self.maps.shape[1])

    @property
    def device(self) -> torch.device:
        return self.maps.device

    def check_image(self, x: torch.Tensor, what: str = "image") -> None:
        """One line naming the problem when ``x`` is not a complex ``[B, *spatial]`` batch for these coil maps."""
        if not isinstance(x, torch.Tensor) or not x.is_complex():
            raise InputError(f"{what} must be a complex tensor, got {getattr(x, 'dtype', type(x))}")
        if tuple(x.shape[1:]) != self.spatial_shape:
            expected = ", ".join(map(str, self.spatial_shape))
            raise InputError(f"{what} has shape {tuple(x.shape)}, expected [B, {expected}] to match the coil maps")
        if self.maps.shape[0] not in (1, x.shape[0]):
            raise InputError(f"{what} batch {x.shape[0]} does not match coil-map batch {self.maps.shape[0]}")


class MultiCoilMRI(MultiCoilOperator):
    """Cartesian multi-coil MRI operator ``A = M · F · S`` (see the module docstring for the math); a
    :class:`~molrecon.physics.linear.LinearPhysics`.

    Parameters
    ----------
    maps:
        Coil sensitivities ``[B or 1, C, *spatial]``, complex.
    mask:
        Sampling mask broadcastable to ``[B, C, *spatial]`` (0/1, real or bool).
    dims:
        ``"2d"``, ``"3d"`` or ``"2d+t"``; inferred from the rank of ``maps`` when ``None``
        (a 3-axis spatial shape means 3D unless ``dims="2d+t"``).
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor, dims: str | None = None) -> None:
        if not isinstance(maps, torch.Tensor) or not isinstance(mask, torch.Tensor):
            raise InputError("maps and mask must be torch tensors")
        if not maps.is_complex():
            raise InputError(f"coil maps must be complex, got dtype {maps.dtype}")
        if maps.ndim not in (4, 5):
            raise InputError(f"coil maps must be [B, C, *spatial] with 2 or 3 spatial axes, got shape "
                             f"{tuple(maps.shape)}")
        check_finite(maps, "coil maps")
        self.dims = infer_dims(maps.ndim - 2, dims)
        self.maps = maps.to(torch.complex64)
        if mask.is_complex():
            raise InputError("mask must be real (0/1) or bool, got a complex tensor")
        mask = mask.to(torch.float32)
        check_finite(mask, "mask")
        if mask.ndim > maps.ndim:
            raise InputError(f"mask of shape {tuple(mask.shape)} has more axes than k-space "
                             f"[B, C, *spatial] = {maps.ndim}")
        try:
            torch.broadcast_shapes(mask.shape, maps.shape[2:] if mask.ndim <= maps.ndim - 2 else maps.shape)
        except RuntimeError:
            raise InputError(f"mask shape {tuple(mask.shape)} does not broadcast to the k-space shape "
                             f"[B, C, {', '.join(map(str, maps.shape[2:]))}]") from None
        if mask.sum() == 0:
            raise InputError("mask is empty: no k-space sample is acquired")
        self.mask = mask
        self.fft_dims = (-2, -1) if self.dims in ("2d", "2d+t") else (-3, -2, -1)
        # (the maps' conjugate, the FFT axes, the image's centring signs or None for centred FFTs): see normal
        self._normal_plan: tuple[torch.Tensor, tuple[int, ...], torch.Tensor | None] | None = None

    # -- shapes ---------------------------------------------------------------------------------------------
    def check_kspace(self, y: torch.Tensor, what: str = "k-space") -> None:
        if not y.is_complex():
            raise InputError(f"{what} must be complex, got dtype {y.dtype}")
        if y.ndim != self.maps.ndim:
            raise InputError(f"{what} has shape {tuple(y.shape)}, expected [B, C, *spatial] with "
                             f"{self.maps.ndim - 2} spatial axes")
        if y.shape[1] != self.num_coils:
            raise InputError(f"{what} has {y.shape[1]} coils but the coil maps have {self.num_coils}")
        if tuple(y.shape[2:]) != self.spatial_shape:
            raise InputError(f"{what} spatial shape {tuple(y.shape[2:])} does not match the coil maps "
                             f"{self.spatial_shape}")
        if self.maps.shape[0] not in (1, y.shape[0]):
            raise InputError(f"{what} batch {y.shape[0]} does not match coil-map batch {self.maps.shape[0]}")

    # -- operators ------------------------------------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model: image ``[B, *spatial]`` → masked multi-coil k-space ``[B, C, *spatial]``."""
        return self.mask * fft_centered(self.maps * x.unsqueeze(1), self.fft_dims)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint: k-space ``[B, C, *spatial]`` → coil-combined image ``[B, *spatial]``."""
        return (self.maps.conj() * ifft_centered(self.mask * y, self.fft_dims)).sum(dim=1)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        r"""Normal operator ``A^H A`` (the mask is 0/1, so it is applied once).

        Two exact shortcuts, because the conjugate gradient applies this operator in every step:

        * along an FFT axis on which the mask does not vary (the readout of Cartesian line masks, of 3D
          Poisson-disc masks and of 2D+time masks), :math:`\mathcal{F}_a` commutes with :math:`M` and
          :math:`\mathcal{F}_a^H \mathcal{F}_a = I`, so the FFT pair along ``a`` cancels and is not computed
          (:meth:`normal_fft_dims`): half the FFT work of a 2D line mask;
        * for even sizes the centring signs cancel between the FFT and its inverse
          (``F_c^H M F_c = s F^H M F s``), so the image carries ``s`` and the plain FFTs run between.
        """
        if self._normal_plan is None:
            dims = self.normal_fft_dims()
            signs = input_signs(self.maps, dims) if dims else None
            # the signs go on the image, not on a copy of the maps: a coil stack less kept by every operator
            # (resolved once: a lazy conj would be materialised again in every call)
            self._normal_plan = (self.maps.conj().resolve_conj(), dims, None if signs is None else signs[:, 0])
        maps_conj, dims, signs = self._normal_plan
        coil_images = self.maps * (x if signs is None else signs * x).unsqueeze(1)
        # the mask multiplies in place: the coil stack it acts on is a fresh tensor that nothing else holds (and
        # autograd needs neither an FFT's output nor the product's input), so no second stack is allocated
        if not dims:
            k = coil_images.mul_(self.mask)
        elif signs is None:
            k = ifft_centered(fft_centered(coil_images, dims).mul_(self.mask), dims)
        else:
            k = torch.fft.ifftn(torch.fft.fftn(coil_images, dim=dims, norm="ortho").mul_(self.mask), dim=dims,
                                norm="ortho")
        # in place, for the same reason: neither the inverse FFT nor the sum keeps its output for backward. With
        # glibc every temporary of 128 KiB or more (its mmap threshold: one image at 128²) can be mapped, faulted in
        # and unmapped again, and the CG applies this operator in every step
        out = k.mul_(maps_conj).sum(dim=1)
        return out if signs is None else out.mul_(signs)

    def normal_fft_dims(self) -> tuple[int, ...]:
        """The FFT axes along which the mask varies: :meth:`normal` transforms only these (see there)."""
        weights = self.sampling_weights()
        varying = []
        for d in self.fft_dims:
            if weights.shape[d] > 1 and not torch.equal(weights, weights.narrow(d, 0, 1).expand_as(weights)):
                varying.append(d)
        return tuple(varying)

    def norm_bound(self) -> float:
        """Certified ``‖A‖ ≤ max|M| · ‖F‖ · ‖S‖ = max|M| · max_pixels sqrt(Σ_c |S_c|²)`` (``F`` orthonormal)."""
        return float(self.mask.abs().max()) * float(self.maps.abs().pow(2).sum(dim=1).sqrt().max())

    def sampling_weights(self) -> torch.Tensor:
        """The mask with the rank of k-space ``[B, C, *spatial]`` (leading axes of size 1 added), broadcastable."""
        return self.mask.reshape((1,) * (self.maps.ndim - self.mask.ndim) + tuple(self.mask.shape))

    def sigpy_linop(self, b: int = 0):
        """sigpy's ``Multiply(mask) · FFT(centred, orthonormal) · Multiply(maps[b])``, the same ``A`` as :meth:`A`
        for batch element ``b`` (image ``spatial_shape`` → k-space ``[C, *spatial]``)."""
        import sigpy as sp

        maps = self.maps[min(b, self.maps.shape[0] - 1)].detach().cpu().numpy()
        mask = self.sampling_weights()
        mask = mask[min(b, mask.shape[0] - 1)].detach().cpu().numpy()
        S = sp.linop.Multiply(self.spatial_shape, maps)
        Fo = sp.linop.FFT(S.oshape, axes=self.fft_dims, center=True)
        return sp.linop.Multiply(Fo.oshape, mask) * Fo * S

    # -- utilities ------------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> MultiCoilMRI:
        return MultiCoilMRI(self.maps.to(device), self.mask.to(device), self.dims)

    def subset(self, index: slice | list[int] | torch.Tensor) -> MultiCoilMRI:
        """The operator for a subset of batch elements (maps and mask with batch 1 are shared)."""
        maps = self.maps if self.maps.shape[0] == 1 else self.maps[index]
        mask = self.mask
        if mask.ndim == self.maps.ndim and mask.shape[0] > 1:
            mask = mask[index]
        return MultiCoilMRI(maps, mask, self.dims)

    def __repr__(self) -> str:
        return (f"MultiCoilMRI(dims={self.dims!r}, coils={self.num_coils}, spatial={self.spatial_shape}, "
                f"sampled={float(self.mask.mean()):.3f})")
