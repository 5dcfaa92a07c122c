r"""Classical reconstructions: zero-filled, CG-SENSE and compressed sensing (L1-wavelet, total variation).

- Zero-filled: :math:`x = A^H y` (coil-combined with the maps).
- CG-SENSE: :math:`x = \arg\min_x \|Ax - y\|^2 + \lambda\|x\|^2`, i.e. :math:`(A^H A + \lambda I)x = A^H y`,
  solved by batched conjugate gradient.
- Compressed sensing: :math:`\arg\min_x \tfrac12\|Ax - y\|^2 + \lambda\|\Psi x\|_1` with :math:`\Psi` a
  Daubechies-4 wavelet transform (``cs-wavelet``) or finite differences (``cs-tv``, anisotropic TV). These
  wrap sigpy's ``L1WaveletRecon`` / ``TotalVariationRecon`` (FISTA and primal-dual), which share our FFT
  convention (centred, orthonormal). For 2D+time, whose FFT acts on the last two axes only, the same sigpy
  least-squares app is built from sigpy's linear operators with that FFT; the wavelet and TV then act on
  space and time (spatio-temporal sparsity, the usual dynamic-CS prior).

Any other operator of the protocol (:class:`~molrecon.physics.LinearPhysics`, e.g. the NUFFT
:class:`~molrecon.physics.NonCartesianMRI`) runs through the operator alone, never its ``mask`` or ``maps``:
zero-filled is its ``zero_filled`` (for the NUFFT the density-compensated gridding, at the image scale);
CG-SENSE uses ``normal`` and ``A_adjoint``; CS builds sigpy's ``LinearLeastSquares`` on ``sigpy_linop`` with the
step sizes from the certified ``norm_bound`` (no power iteration). CG-SENSE's ``lam`` is the weight of the
problem for the unit-norm operator ``A/‖A‖`` (``‖A‖`` = ``norm_bound()``; a Cartesian operator has ``‖A‖ = 1``):
it solves ``(AᴴA + lam‖A‖² I) x = Aᴴy``; the L1 problems run on the data brought to the built-in image scale
(:func:`_data_scale`, from ``zero_filled``) and their weight is ``lam`` itself. Its defaults come from its own
table (:func:`default_lam`, :data:`DEFAULT_LAM_BY_OPERATOR`); see ``docs/noncartesian.md``.

Example
-------
>>> import torch
>>> from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
>>> from molrecon.recon import cg_sense, reconstruct
>>> physics = MultiCoilMRI(simulate_coil_maps((32, 32), num_coils=4)[None], RandomMask(0.08, 4)((32, 32), seed=0))
>>> target = torch.zeros(1, 32, 32, dtype=torch.complex64)
>>> target[:, 8:24, 8:24] = 1
>>> y = physics.A(target)
>>> x = cg_sense(y, physics, lam=1e-2)
>>> zf = reconstruct("zero-filled", y, physics)
>>> bool((x - target).norm() < (zf - target).norm())
True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .errors import InputError
from .names import CLASSICAL_METHODS, MethodSpec, register_method, unregister_method
from .normalization import default_normalization
from .physics import LinearPhysics, MultiCoilMRI, NonCartesianMRI, check_finite
from .solvers import SolverInfo, conjugate_gradient

# Defaults tuned on the built-in *validation* slices (target magnitude max 1, 30 dB k-space SNR, 4x; mean PSNR
# over 6 slices): sense 1e-4..1e-2 -> 27.3..25.2 dB, cs-wavelet 1e-4/3e-4/1e-3 -> 28.4/28.9/28.5 dB,
# cs-tv (300 iterations) 3e-3/1e-2/2e-2 -> 26.5/28.2/28.5 dB.
DEFAULT_LAM = {"sense": 3e-4, "cs-wavelet": 3e-4, "cs-tv": 2e-2}
# Non-Cartesian: sense for the unit-norm operator A/||A||, the L1 weights at the normalised data scale (module
# docstring); tuned on the built-in radial *validation* slices (4 items, 32 of the 64 golden-angle spokes, true
# maps; mean PSNR): sense 3e-4/1e-3/3e-3/1e-2 -> 28.0/28.6/27.2/23.4 dB, cs-wavelet 3e-3/1e-2/3e-2/6e-2/1e-1 ->
# 29.5/31.3/32.1/30.9/29.4 dB, cs-tv (300 iterations) 3e-3/1e-2/3e-2/6e-2/1e-1 -> 29.2/30.5/31.9/31.7/30.9 dB.
DEFAULT_LAM_NONCARTESIAN = {"sense": 1e-3, "cs-wavelet": 3e-2, "cs-tv": 3e-2}
#: the default weights of each operator class (looked up along the class hierarchy; :func:`default_lam`)
DEFAULT_LAM_BY_OPERATOR: dict[type, dict[str, float]] = {MultiCoilMRI: DEFAULT_LAM,
                                                         NonCartesianMRI: DEFAULT_LAM_NONCARTESIAN}


def default_lam(method: str, physics: LinearPhysics | None = None) -> float | None:
    """The default ``lam`` of ``method`` on ``physics``' operator class (the Cartesian table when ``physics`` is
    ``None`` or its class has no entry for ``method``); ``None`` for a method without a weight."""
    for cls in type(physics).__mro__ if physics is not None else ():
        table = DEFAULT_LAM_BY_OPERATOR.get(cls)
        if table is not None and method in table:
            return table[method]
    return DEFAULT_LAM.get(method)


def _is_cartesian(physics: LinearPhysics) -> bool:
    return isinstance(physics, MultiCoilMRI)


def _weight(lam: float, physics: LinearPhysics) -> float:
    """CG-SENSE's weight: ``lam`` itself on a Cartesian operator, ``lam · norm_bound()²`` otherwise (the
    problem of ``A/‖A‖``, module docstring)."""
    return lam if _is_cartesian(physics) else lam * physics.norm_bound() ** 2


def _check(y: torch.Tensor, physics: LinearPhysics, lam: float | None = None, max_iter: int | None = None) -> None:
    physics.check_kspace(y)
    check_finite(y, "k-space")
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam)
                            or lam < 0):
        raise InputError(f"lam must be a finite number >= 0, got {lam}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise InputError(f"max_iter must be an integer >= 1, got {max_iter}")


def _data_scale(y: torch.Tensor, physics: LinearPhysics) -> torch.Tensor:
    """``c`` per batch element that brings ``y`` to the built-in scale (``[B, 1, ...]`` like ``y``).

    The classical solvers run on ``c y`` and return ``x / c``: their λ is thereby relative to the data (tuned
    at the built-in scale, it means the same at any scale, e.g. fastMRI's ~1e-6), and float32 never under- or
    overflows in the CG/FISTA norms at extreme scales (see :mod:`molrecon.normalization`).
    """
    c = default_normalization(physics.dims).factors(y, physics)
    return c.reshape(-1, *([1] * (y.ndim - 1)))


def zero_filled(y: torch.Tensor, physics: LinearPhysics) -> torch.Tensor:
    """The operator's zero-filled image (:meth:`~molrecon.physics.LinearPhysics.zero_filled`): the coil-combined
    ``A^H y`` for Cartesian data, the density-compensated ``A^H(w y)`` for non-Cartesian data (the image's scale)."""
    _check(y, physics)
    return physics.zero_filled(y)


def cg_sense(y: torch.Tensor, physics: LinearPhysics, lam: float | None = None, max_iter: int = 50,
             tol: float = 1e-6, x0: torch.Tensor | None = None,
             return_info: bool = False) -> torch.Tensor | tuple[torch.Tensor, SolverInfo]:
    """CG-SENSE: solve ``(A^H A + lam I) x = A^H y`` per batch element (stops per element at ``tol``); ``lam``
    defaults to :func:`default_lam` and is relative to ``‖A‖²`` on a non-Cartesian operator (:func:`_weight`).

    The problem is solved at the built-in scale and scaled back (:func:`_data_scale`); it is linear in ``y``,
    so this changes nothing but the float32 range at extreme scales."""
    lam = default_lam("sense", physics) if lam is None else lam
    _check(y, physics, lam, max_iter)
    weight = _weight(lam, physics)
    c = _data_scale(y, physics)
    ci = c.reshape(c.shape[0], *([1] * (y.ndim - 2)))
    x, info = conjugate_gradient(lambda v: physics.normal(v).add_(weight * v), physics.A_adjoint(y * c),
                                 x0=None if x0 is None else x0 * ci, max_iter=max_iter, tol=tol)
    x = x / ci
    return (x, info) if return_info else x


def _sigpy_dynamic_problem(y: np.ndarray, maps: np.ndarray, mask: np.ndarray):
    """The sigpy operator ``A = M F S`` of one 2D+t batch element (``y`` ``[C, T, H, W]``): the FFT runs over
    ``(H, W)`` only (2D and 3D use sigpy's own reconstruction apps)."""
    import sigpy as sp

    img_shape = maps.shape[1:]
    weights = np.broadcast_to(mask, y.shape).astype(np.float32)
    S = sp.linop.Multiply(img_shape, maps)
    F = sp.linop.FFT(S.oshape, axes=(-2, -1), center=True)
    M = sp.linop.Multiply(F.oshape, weights)
    return M * F * S


def _per_element(y: torch.Tensor, physics: MultiCoilMRI,
                 solve: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> torch.Tensor:
    maps = physics.maps.detach().cpu().numpy()
    mask = physics.mask.detach().cpu().numpy()
    out = []
    for b, yb in enumerate(y.detach().cpu().numpy()):
        mb = mask[b] if mask.ndim == y.ndim and mask.shape[0] > 1 else (mask[0] if mask.ndim == y.ndim else mask)
        out.append(solve(yb, maps[b if maps.shape[0] > 1 else 0], mb))
    return torch.from_numpy(np.stack(out).astype(np.complex64)).to(y.device)


def _per_element_linop(y: torch.Tensor, physics: LinearPhysics, solve: Callable) -> torch.Tensor:
    """``solve(A_b, y_b)`` per batch element with ``A_b = physics.sigpy_linop(b)``: the operator-only path."""
    out = [solve(physics.sigpy_linop(b), yb) for b, yb in enumerate(y.detach().cpu().numpy())]
    return torch.from_numpy(np.stack(out).astype(np.complex64)).to(y.device)


def _cs_on_operator(y: torch.Tensor, physics: LinearPhysics, lam: float, max_iter: int, prior: str,
                    wave_name: str = "db4") -> torch.Tensor:
    """CS on any operator through its sigpy linop: FISTA (wavelet) or primal-dual (TV), with step sizes from the
    certified ``norm_bound`` (``‖A‖² ≤ L``; ``‖∇‖² ≤ 4·ndim`` for the finite differences), at the built-in
    scale (:func:`_data_scale`)."""
    import sigpy as sp

    # the L1 weight at the data scale of _data_scale is lam itself (module docstring)
    weight, bound2 = lam, physics.norm_bound() ** 2

    def solve(A, yb: np.ndarray) -> np.ndarray:
        if prior == "wavelet":
            W = sp.linop.Wavelet(A.ishape, wave_name=wave_name)
            proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, weight), W)
            return sp.app.LinearLeastSquares(A, yb, proxg=proxg, alpha=1 / bound2, max_iter=max_iter,
                                             show_pbar=False).run()
        G = sp.linop.FiniteDifference(A.ishape)
        proxg = sp.prox.L1Reg(G.oshape, weight)
        return sp.app.LinearLeastSquares(A, yb, proxg=proxg, G=G, sigma=1.0, tau=1 / (bound2 + 4 * len(A.ishape)),
                                         max_iter=max_iter, show_pbar=False).run()

    c = _data_scale(y, physics)
    return _per_element_linop(y * c, physics, solve) / c.reshape(c.shape[0], *([1] * (y.ndim - 2)))


def cs_wavelet(y: torch.Tensor, physics: LinearPhysics, lam: float | None = None,
               max_iter: int = 100, wave_name: str = "db4") -> torch.Tensor:
    """L1-wavelet compressed sensing (sigpy ``L1WaveletRecon``; FISTA); ``lam`` is relative to the data (it is
    the weight at the built-in scale, :func:`_data_scale`, for the unit-norm operator ``A/‖A‖``)."""
    import sigpy as sp
    import sigpy.mri.app

    lam = default_lam("cs-wavelet", physics) if lam is None else lam
    _check(y, physics, lam, max_iter)
    if not _is_cartesian(physics):
        return _cs_on_operator(y, physics, lam, max_iter, "wavelet", wave_name)

    def solve(yb: np.ndarray, maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if physics.dims in ("2d", "3d"):
            weights = np.broadcast_to(mask, yb.shape).astype(np.float32)
            return sigpy.mri.app.L1WaveletRecon(yb, maps, lam, weights=weights, wave_name=wave_name,
                                                max_iter=max_iter, show_pbar=False).run()
        A = _sigpy_dynamic_problem(yb, maps, mask)
        W = sp.linop.Wavelet(A.ishape, wave_name=wave_name)
        proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, lam), W)
        return sp.app.LinearLeastSquares(A, yb, proxg=proxg, max_iter=max_iter, show_pbar=False).run()

    c = _data_scale(y, physics)
    return _per_element(y * c, physics, solve) / c.reshape(c.shape[0], *([1] * (y.ndim - 2)))


def cs_tv(y: torch.Tensor, physics: LinearPhysics, lam: float | None = None,
          max_iter: int = 300) -> torch.Tensor:
    """Total-variation compressed sensing (sigpy ``TotalVariationRecon``; primal-dual hybrid gradient); ``lam``
    is relative to the data (:func:`_data_scale`; for the unit-norm operator ``A/‖A‖``)."""
    import sigpy as sp
    import sigpy.mri.app

    lam = default_lam("cs-tv", physics) if lam is None else lam
    _check(y, physics, lam, max_iter)
    if not _is_cartesian(physics):
        return _cs_on_operator(y, physics, lam, max_iter, "tv")

    def solve(yb: np.ndarray, maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if physics.dims in ("2d", "3d"):
            weights = np.broadcast_to(mask, yb.shape).astype(np.float32)
            return sigpy.mri.app.TotalVariationRecon(yb, maps, lam, weights=weights, max_iter=max_iter,
                                                     show_pbar=False).run()
        A = _sigpy_dynamic_problem(yb, maps, mask)
        G = sp.linop.FiniteDifference(A.ishape)
        proxg = sp.prox.L1Reg(G.oshape, lam)
        return sp.app.LinearLeastSquares(A, yb, proxg=proxg, G=G, max_iter=max_iter, show_pbar=False).run()

    c = _data_scale(y, physics)
    return _per_element(y * c, physics, solve) / c.reshape(c.shape[0], *([1] * (y.ndim - 2)))


#: How to run each classical method: ``fn(y, physics, **kwargs) -> x`` (:func:`register_classical`).
CLASSICAL_RUNNERS: dict[str, Callable[..., torch.Tensor]] = {
    "zero-filled": zero_filled, "sense": cg_sense, "cs-wavelet": cs_wavelet, "cs-tv": cs_tv}


def register_classical(name: str, fn: Callable[..., torch.Tensor], label: str | None = None,
                       color: str = "k", marker: str = "x", lam: float | None = None) -> None:
    """Add a classical method in one call: its name to the vocabulary (:func:`molrecon.names.register_method`),
    ``fn(y, physics, **kwargs) -> x`` as its runner and ``lam``, when given, as its default weight.

    Every path that runs methods by name (``molrecon recon``, ``molrecon evaluate``, the benchmarks) then
    finds it; :func:`unregister_classical` removes it again.

    >>> from molrecon.names import CLASSICAL_METHODS
    >>> register_classical("half-zf", lambda y, physics, lam=0.5: lam * physics.A_adjoint(y), lam=0.5)
    >>> "half-zf" in CLASSICAL_METHODS, DEFAULT_LAM["half-zf"]
    (True, 0.5)
    >>> unregister_classical("half-zf")
    >>> "half-zf" in CLASSICAL_METHODS
    False
    """
    if name in CLASSICAL_RUNNERS:
        raise InputError(f"classical method {name!r} is already registered")
    register_method(MethodSpec(name, label or name, "classical", color, marker))
    CLASSICAL_RUNNERS[name] = fn
    if lam is not None:
        DEFAULT_LAM[name] = float(lam)


def unregister_classical(name: str) -> None:
    """Remove a method added by :func:`register_classical`."""
    unregister_method(name)
    CLASSICAL_RUNNERS.pop(name, None)
    DEFAULT_LAM.pop(name, None)


def reconstruct(method: str, y: torch.Tensor, physics: LinearPhysics, **kwargs) -> torch.Tensor:
    """Run a classical method by its conventional name (``zero-filled``, ``sense``, ``cs-wavelet``, ``cs-tv``,
    or one added by :func:`register_classical`)."""
    fn = CLASSICAL_RUNNERS.get(method)
    if fn is None:
        raise InputError(f"unknown classical method {method!r}; choose from {', '.join(CLASSICAL_METHODS)}")
    return fn(y, physics, **kwargs)
