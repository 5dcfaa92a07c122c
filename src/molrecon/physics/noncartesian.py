r"""Multi-coil non-Cartesian MRI: ``A = F_NU · S``, a NUFFT after the coil maps, for 2D, 3D and 2D+time.

.. math::
    (A x)_{c,k} = \frac{1}{\sqrt{N}} \sum_{n} S_c[n]\,x[n]\, e^{-2\pi i\, k\cdot n / N},\qquad
    A^H y = \sum_c \bar S_c \odot \frac{1}{\sqrt N}\sum_k y_{c,k}\, e^{+2\pi i\, k\cdot n / N},

with ``n`` the centred pixel index (``-N/2 … N/2-1`` per axis), ``k`` the trajectory in pixels (edge at ``±N/2``,
sigpy's and BART's convention) and ``N`` the number of pixels of the encoded axes. On a full Cartesian trajectory
this is the centred orthonormal DFT of ``docs/conventions.md``, i.e. :class:`~molrecon.physics.MultiCoilMRI` with
an all-ones mask (k-space flattened). The forward model carries NO density compensation; data consistency uses
``AᴴA``. The dcf (:mod:`molrecon.physics.dcf`) only enters :meth:`NonCartesianMRI.gridding`.

Shapes: image ``[B, *spatial]``, maps ``[B or 1, C, *spatial]``; trajectory ``[K, ndim]`` and k-space
``[B, C, K]`` for 2D (``ndim = 2``) and 3D (``ndim = 3``, e.g. stack-of-stars); for 2D+time one trajectory per
frame, ``[T, K, 2]``, image ``[B, T, H, W]`` and k-space ``[B, C, T, K]`` (the NUFFT acts on ``(H, W)``).

NUFFT: torchkbnufft (Kaiser–Bessel interpolation, pure PyTorch, so autograd and CUDA work as for any tensor op),
``numpoints=6`` on a 2× grid. Measured against the exact NUDFT (32², 32 golden-angle spokes × 64; one thread of a
shared 2-core VM; ``benchmarks/nufft_libraries.py``, figures in ``docs/noncartesian.md``): relative error 7.2e-4
(forward) and 6.8e-4 (adjoint) for torchkbnufft in float32, 1.6e-6 for finufft at eps 1e-6. On 128², 8 coils,
16384 samples finufft runs A in 17 ms against torchkbnufft's 56 ms, but it is a C library outside autograd
and the torch device model; torchkbnufft was chosen because CG and MOL only apply ``AᴴA``, which is the 8 ms
Toeplitz product below whichever library computes the kernel, and gradients and ``.to("cuda")`` come for free.

Normal operator by Toeplitz embedding: ``AᴴA = Σ_c S̄_c T S_c`` with ``T`` the Toeplitz Gram of the single-coil
NUFFT. ``T`` is the ``N``-point principal block of a circulant ``C`` on the 2× grid, diagonalised by the FFT:
``T x = P F⁻¹ (λ ⊙ F E x)`` (``E`` zero-extension, ``P`` crop, ``λ`` the kernel, computed once with the adjoint
NUFFT by torchkbnufft's ``calc_toeplitz_kernel``). CG then runs FFTs on the 2× grid and no interpolation.

Certified norm: ``‖A‖² = λmax(Σ_c S̄_c T S_c) ≤ λmax(T) · max_n Σ_c|S_c[n]|²`` (``‖S‖² = max Σ_c|S_c|²`` for the
stacked diagonal maps), and ``λmax(T) ≤ λmax(C) = max λ`` because ``T`` is a principal submatrix of the Hermitian
``C`` (Cauchy interlacing), whose eigenvalues are exactly the kernel values. For 2D+time the operator is block
diagonal over frames, so the maximum runs over frames too. The kernel is itself a NUFFT result, so the bound
is multiplied by ``1 + NUFFT_MARGIN`` (1e-2, over ten times the measured NUFFT error); see ``docs/theory.md``.
The bound is 1.6–1.7× the power-iteration estimate on the test trajectories (the circulant's extra eigenvalues).

Example
-------
>>> import torch
>>> from molrecon.physics import NonCartesianMRI, simulate_coil_maps
>>> from molrecon.physics.trajectories import radial_trajectory
>>> A = NonCartesianMRI(simulate_coil_maps((32, 32), 4)[None], radial_trajectory(16, 64, image_size=32))
>>> x = torch.randn(1, 32, 32, dtype=torch.complex64)
>>> A.A(x).shape
torch.Size([1, 4, 1024])
>>> A.power_norm() <= A.norm_bound()
True
"""

from __future__ import annotations

import copy
import math

import torch

from ..errors import InputError
from .mri import MultiCoilOperator, check_finite, infer_dims
from .nufft_backend import quiet, torchkbnufft

#: relative allowance on ‖A‖ for the NUFFT error of the Toeplitz kernel (measured NUFFT errors are ≤ 7.2e-4)
NUFFT_MARGIN = 1e-2


def _as_real_tensor(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{what} must be a torch tensor")
    if t.is_complex():
        raise InputError(f"{what} must be real, got dtype {t.dtype}")
    check_finite(t, what)
    return t.to(torch.float32)


class NonCartesianMRI(MultiCoilOperator):
    """Multi-coil NUFFT operator ``A = F_NU · S`` (see the module docstring for the math, shapes and proofs); a
    :class:`~molrecon.physics.linear.LinearPhysics`.

    Parameters
    ----------
    maps:
        Coil sensitivities ``[B or 1, C, *spatial]``, complex, Σ_c|S_c|² = 1 inside the object.
    trajectory:
        ``[..., K, ndim]`` in pixels, within ``±N/2``; leading axes are flattened into ``K`` (2D, 3D); for 2D+time
        ``[T, ..., 2]``, one trajectory per frame. Shared by the whole batch.
    dcf:
        Optional density compensation of the shape ``trajectory.shape[:-1]`` (flattened like it), used by
        :meth:`gridding` only; computed by Pipe–Menon when first needed if ``None``.
    dims:
        ``"2d"``, ``"3d"`` or ``"2d+t"``; inferred from the rank of ``maps`` (3 spatial axes mean 3D) if ``None``.
    oversampling, numpoints:
        NUFFT grid oversampling and Kaiser–Bessel width (torchkbnufft).
    """

    def __init__(self, maps: torch.Tensor, trajectory: torch.Tensor, dcf: torch.Tensor | None = None,
                 dims: str | None = None, oversampling: float = 2.0, numpoints: int = 6) -> None:
        if not isinstance(maps, torch.Tensor) or not maps.is_complex():
            raise InputError(f"coil maps must be a complex tensor, got {getattr(maps, 'dtype', type(maps))}")
        if maps.ndim not in (4, 5):
            raise InputError(f"coil maps must be [B, C, *spatial] with 2 or 3 spatial axes, got shape "
                             f"{tuple(maps.shape)}")
        check_finite(maps, "coil maps")
        self.dims = infer_dims(maps.ndim - 2, dims)
        self.maps = maps.to(torch.complex64)
        self.nufft_shape = tuple(self.maps.shape[-2:] if self.dims == "2d+t" else self.maps.shape[2:])
        self.trajectory = self._checked_trajectory(trajectory)
        self.dcf = None if dcf is None else self._checked_dcf(dcf)
        if not oversampling >= 1 or numpoints < 2:
            raise InputError(f"NUFFT oversampling must be >= 1 and numpoints >= 2, got {oversampling}, {numpoints}")
        self.oversampling, self.numpoints = float(oversampling), int(numpoints)
        tkbn = torchkbnufft()

        grid = tuple(int(math.ceil(oversampling * n)) for n in self.nufft_shape)
        dev = self.maps.device
        self._nufft = tkbn.KbNufft(im_size=self.nufft_shape, grid_size=grid, numpoints=numpoints).to(dev)
        self._nufft_adj = tkbn.KbNufftAdjoint(im_size=self.nufft_shape, grid_size=grid, numpoints=numpoints).to(dev)
        self.omega = self._omega(self.trajectory)
        self._scale = 1.0 / math.sqrt(math.prod(self.nufft_shape))
        self._kernel: torch.Tensor | None = None

    # -- validation -----------------------------------------------------------------------------------------
    def _checked_trajectory(self, trajectory) -> torch.Tensor:
        traj = _as_real_tensor(trajectory, "trajectory")
        ndim = len(self.nufft_shape)
        if traj.ndim < 2 or traj.shape[-1] != ndim:
            raise InputError(f"trajectory has shape {tuple(traj.shape)}, expected [..., K, {ndim}] for "
                             f"{self.dims} images of shape {self.spatial_shape}")
        if self.dims == "2d+t":
            frames = self.maps.shape[2]
            if traj.ndim < 3 or traj.shape[0] != frames:
                raise InputError(f"2D+time trajectory has shape {tuple(traj.shape)}, expected [T={frames}, K, 2] "
                                 f"(one trajectory per frame)")
            traj = traj.reshape(frames, -1, ndim)
        else:
            traj = traj.reshape(-1, ndim)
        if traj.shape[-2] == 0:
            raise InputError("trajectory has no samples")
        edge = torch.tensor(self.nufft_shape, dtype=torch.float32, device=traj.device) / 2
        over = (traj.abs() > edge * (1 + 1e-5)).any(dim=-2)
        if over.any():
            axis = int(over.reshape(-1, ndim).any(0).nonzero()[0])
            raise InputError(f"trajectory axis {axis} reaches {float(traj[..., axis].abs().max()):.4g}, outside the "
                             f"k-space edge ±{float(edge[axis]):g} (coordinates are in pixels, edge at ±N/2)")
        return traj.contiguous()

    def _checked_dcf(self, dcf) -> torch.Tensor:
        w = _as_real_tensor(dcf, "dcf").to(self.trajectory.device)
        if w.numel() != self.trajectory[..., 0].numel():
            raise InputError(f"dcf has {w.numel()} values, the trajectory {self.trajectory[..., 0].numel()} samples")
        if (w < 0).any():
            raise InputError("dcf has negative values")
        return w.reshape(self.trajectory.shape[:-1])

    def _omega(self, traj: torch.Tensor) -> torch.Tensor:
        """The trajectory in radians per pixel, ``[ndim, K]`` (``[T, ndim, K]``), as torchkbnufft takes it."""
        n = torch.tensor(self.nufft_shape, dtype=torch.float32, device=traj.device)
        return (traj * (2 * math.pi) / n).transpose(-1, -2).contiguous()

    # -- shapes ---------------------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples ``K`` per coil (per frame for 2D+time)."""
        return int(self.trajectory.shape[-2])

    @property
    def kspace_shape(self) -> tuple[int, ...]:
        """``(C, K)`` or ``(C, T, K)``: k-space without the batch axis."""
        if self.dims == "2d+t":
            return (self.num_coils, self.maps.shape[2], self.num_samples)
        return (self.num_coils, self.num_samples)

    def check_kspace(self, y: torch.Tensor, what: str = "k-space") -> None:
        if not isinstance(y, torch.Tensor) or not y.is_complex():
            raise InputError(f"{what} must be a complex tensor, got {getattr(y, 'dtype', type(y))}")
        want = ", ".join(map(str, self.kspace_shape))
        if y.ndim != len(self.kspace_shape) + 1:
            raise InputError(f"{what} has shape {tuple(y.shape)}, expected [B, {want}]")
        if y.shape[1] != self.num_coils:
            raise InputError(f"{what} has {y.shape[1]} coils but the coil maps have {self.num_coils}")
        if tuple(y.shape[1:]) != self.kspace_shape:
            raise InputError(f"{what} has shape {tuple(y.shape)}, expected [B, {want}] to match the trajectory")
        if self.maps.shape[0] not in (1, y.shape[0]):
            raise InputError(f"{what} batch {y.shape[0]} does not match coil-map batch {self.maps.shape[0]}")
        check_finite(y, what)

    # -- operators ------------------------------------------------------------------------------------------
    def _frames_first(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, *]`` → ``[T, B·C, *]``: torchkbnufft's batch axis carries one trajectory per frame."""
        b, c, f = t.shape[:3]
        return t.permute(2, 0, 1, *range(3, t.ndim)).reshape(f, b * c, *t.shape[3:])

    def _frames_back(self, t: torch.Tensor, b: int, c: int) -> torch.Tensor:
        f = t.shape[0]
        return t.reshape(f, b, c, *t.shape[2:]).permute(1, 2, 0, *range(3, t.ndim + 1))

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, *spatial]`` → k-space ``[B, C, K]`` (``[B, C, T, K]`` for 2D+time)."""
        coil = (self.maps * x.unsqueeze(1)).to(torch.complex64)
        with quiet():
            if self.dims != "2d+t":
                return self._nufft(coil, self.omega) * self._scale
            b, c = coil.shape[:2]
            return self._frames_back(self._nufft(self._frames_first(coil), self.omega), b, c) * self._scale

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """k-space ``[B, C, K]`` (``[B, C, T, K]``) → coil-combined image ``[B, *spatial]``."""
        y = y.to(torch.complex64)
        with quiet():
            if self.dims != "2d+t":
                coil = self._nufft_adj(y, self.omega)
            else:
                b, c = y.shape[:2]
                coil = self._frames_back(self._nufft_adj(self._frames_first(y), self.omega), b, c)
        return (self.maps.conj() * coil).sum(dim=1) * self._scale

    @property
    def toeplitz_kernel(self) -> torch.Tensor:
        """``λ`` on the 2× grid (``[T, 2H, 2W]`` for 2D+time): ``T x = P F⁻¹(λ ⊙ F E x)`` with orthonormal FFTs."""
        if self._kernel is None:
            tkbn = torchkbnufft()

            with torch.no_grad(), quiet():
                kernel = tkbn.calc_toeplitz_kernel(self.omega, self.nufft_shape, numpoints=self.numpoints,
                                                   grid_size=self._nufft.grid_size.tolist())
            # torchkbnufft's kernel (norm=None) is the unnormalised FFT of the circulant's first column over
            # prod(2N); with orthonormal FFTs around it and A = F_NU / sqrt(N) the multiplier is 2^ndim times it
            self._kernel = (kernel * 2 ** len(self.nufft_shape)).to(torch.complex64)
        return self._kernel

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᴴA x`` by Toeplitz embedding (FFTs on the 2× grid only; module docstring)."""
        kernel = self.toeplitz_kernel
        axes = tuple(range(-len(self.nufft_shape), 0))
        coil = self.maps * x.unsqueeze(1)
        big = torch.fft.fftn(coil, s=tuple(2 * n for n in self.nufft_shape), dim=axes, norm="ortho")
        back = torch.fft.ifftn(big * kernel, dim=axes, norm="ortho")
        crop = back[(..., *(slice(0, n) for n in self.nufft_shape))]
        return (self.maps.conj() * crop).sum(dim=1)

    def norm_bound(self) -> float:
        """Certified ``‖A‖ ≤ sqrt(max λ · max_n Σ_c|S_c|²) · (1 + NUFFT_MARGIN)`` (proof in the module docstring)."""
        lam = float(self.toeplitz_kernel.real.max())
        rss2 = float(self.maps.abs().pow(2).sum(dim=1).max())
        return math.sqrt(max(lam, 0.0) * rss2) * (1 + NUFFT_MARGIN)

    def sampling_weights(self) -> torch.Tensor:
        """Ones ``[1, 1, K]`` (``[1, 1, T, K]``): every stored sample is measured."""
        return torch.ones((1, 1, *self.kspace_shape[1:]), device=self.device)

    # -- gridding -------------------------------------------------------------------------------------------
    def density(self) -> torch.Tensor:
        """The density compensation ``w`` (``trajectory.shape[:-1]``): the given one, or Pipe–Menon (cached)."""
        if self.dcf is None:
            from .dcf import pipe_menon_dcf

            self.dcf = pipe_menon_dcf(self.trajectory, self.nufft_shape).to(self.trajectory.device)
        return self.dcf

    def gridding(self, y: torch.Tensor) -> torch.Tensor:
        """Density-compensated adjoint ``Aᴴ(w ⊙ y)``: the zero-filled image of non-Cartesian data, with ``w`` in
        area units (:mod:`molrecon.physics.dcf`), so it has the scale of the image; also a CG starting point."""
        return self.A_adjoint(y * self.density().to(y.device))

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """:meth:`gridding`: without the density compensation ``Aᴴy`` is brighter by the local sampling density
        (~15–20× at the centre for 32 radial spokes on 128²), far from the image's scale."""
        return self.gridding(y)

    # -- utilities ------------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> NonCartesianMRI:
        new = copy.copy(self)
        for name in ("maps", "trajectory", "omega", "dcf", "_kernel"):
            value = getattr(self, name)
            setattr(new, name, None if value is None else value.to(device))
        new._nufft = copy.deepcopy(self._nufft).to(device)
        new._nufft_adj = copy.deepcopy(self._nufft_adj).to(device)
        return new

    def subset(self, index: slice | list[int] | torch.Tensor) -> NonCartesianMRI:
        """The operator of a subset of the batch (the trajectory, dcf and Toeplitz kernel are shared)."""
        new = copy.copy(self)
        if self.maps.shape[0] > 1:
            new.maps = self.maps[index]
        return new

    def sigpy_linop(self, b: int = 0):
        """sigpy's ``NUFFT · Multiply(maps[b])`` with the scaling of :meth:`A` (sigpy's NUFFT is orthonormal in
        the same centred convention); for 2D+time a frame-diagonal stack writing ``[C, T, K]``."""
        import sigpy as sp

        maps = self.maps[min(b, self.maps.shape[0] - 1)].detach().cpu().numpy()
        traj = self.trajectory.detach().cpu().numpy()
        if self.dims != "2d+t":
            S = sp.linop.Multiply(self.spatial_shape, maps)
            return sp.linop.NUFFT(S.oshape, traj, oversamp=self.oversampling, width=self.numpoints) * S
        frames, (h, w) = self.maps.shape[2], self.nufft_shape
        blocks = []
        for t in range(frames):
            S = sp.linop.Multiply((h, w), maps[:, t])
            F = sp.linop.NUFFT(S.oshape, traj[t], oversamp=self.oversampling, width=self.numpoints)
            R_in = sp.linop.Reshape((h, w), (1, h, w))
            R_out = sp.linop.Reshape((self.num_coils, 1, self.num_samples), F.oshape)
            blocks.append(R_out * F * S * R_in)
        return sp.linop.Diag(blocks, oaxis=1, iaxis=0)

    @classmethod
    def from_kspace(cls, kspace: torch.Tensor, trajectory: torch.Tensor, shape: tuple[int, ...],
                    dims: str | None = None, dcf: torch.Tensor | None = None, calib: int = 24,
                    **espirit) -> NonCartesianMRI:
        """The operator with ESPIRiT maps estimated from the gridded centre of ``kspace``
        (:func:`~molrecon.physics.noncartesian_maps.estimate_maps_noncartesian`)."""
        from .noncartesian_maps import estimate_maps_noncartesian

        maps = estimate_maps_noncartesian(kspace, trajectory, shape, dims=dims, dcf=dcf, calib=calib, **espirit)
        return cls(maps, trajectory, dcf=dcf, dims=dims)

    def __repr__(self) -> str:
        return (f"NonCartesianMRI(dims={self.dims!r}, coils={self.num_coils}, spatial={self.spatial_shape}, "
                f"samples={self.num_samples})")


__all__ = ["NonCartesianMRI", "NUFFT_MARGIN"]
