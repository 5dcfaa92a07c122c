"""Every forward operator against the LinearPhysics contract: adjointness, normal = AᴴA, a certified norm bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molrecon.physics import (
    LinearPhysics,
    MultiCoilMRI,
    NonCartesianMRI,
    PoissonDiscMask,
    RandomMask,
    golden_angle_dynamic,
    radial_trajectory,
    simulate_coil_maps,
    spiral_trajectory,
    stack_of_stars,
)


def _cartesian_2d() -> MultiCoilMRI:
    return MultiCoilMRI(simulate_coil_maps((20, 18), 4)[None], RandomMask(0.08, 4)((20, 18), seed=1))


def _cartesian_3d() -> MultiCoilMRI:
    mask = PoissonDiscMask(4)((10, 12), seed=0)
    return MultiCoilMRI(simulate_coil_maps((8, 10, 12), 3)[None], mask[None], dims="3d")


def _cartesian_2dt() -> MultiCoilMRI:
    masks = torch.stack([RandomMask(0.08, 4)((12, 14), seed=t) for t in range(5)])  # one mask per frame
    maps = simulate_coil_maps((12, 14), 3)[None, :, None].expand(1, 3, 5, 12, 14).contiguous()
    return MultiCoilMRI(maps, masks, dims="2d+t")


def _radial_2d() -> NonCartesianMRI:
    return NonCartesianMRI(simulate_coil_maps((20, 18), 4)[None], radial_trajectory(12, 40, image_size=18))


def _spiral_2d() -> NonCartesianMRI:
    return NonCartesianMRI(simulate_coil_maps((16, 16), 3)[None], spiral_trajectory(4, 120, 16, undersampling=2))


def _radial_2dt() -> NonCartesianMRI:
    maps = simulate_coil_maps((4, 12, 14), 3, dims="2d+t")[None]
    return NonCartesianMRI(maps, golden_angle_dynamic(4, 5, 24, image_size=12), dims="2d+t")


def _stack_of_stars_3d() -> NonCartesianMRI:
    return NonCartesianMRI(simulate_coil_maps((6, 12, 12), 3)[None], stack_of_stars(6, 8, 24, image_size=12))


#: every operator of the package: a new one is added here (and in its own file under physics/)
OPERATORS = {"cartesian-2d": _cartesian_2d, "cartesian-3d": _cartesian_3d, "cartesian-2d+t": _cartesian_2dt,
             "radial-2d": _radial_2d, "spiral-2d": _spiral_2d, "radial-2d+t": _radial_2dt,
             "stack-of-stars-3d": _stack_of_stars_3d}


def _pair(op: LinearPhysics, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *op.spatial_shape), generator=g, dtype=torch.complex64)
    y = op.A(x)  # correlated with Ax, so that <Ax, y> is of the size of the norms and an error shows
    return x, y + 0.3 * torch.randn(y.shape, generator=g, dtype=torch.complex64)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_contract(name):
    op = OPERATORS[name]()
    assert isinstance(op, LinearPhysics)
    x, y = _pair(op)
    op.check_image(x)
    op.check_kspace(op.A(x))
    assert op.adjointness_error(x, y) < 1e-5
    # a NUFFT's Toeplitz normal equals the composition up to the NUFFT error (measured ~1e-5), not rounding
    composed = op.A_adjoint(op.A(x))
    normal = op.normal(x)
    assert float((normal - composed).norm() / composed.norm()) < 1e-4
    # the CG builds x + μAᴴAx in normal's output in place: it must own its storage
    owners = {t.untyped_storage().data_ptr() for t in (x, composed)}
    assert normal.untyped_storage().data_ptr() not in owners
    est = op.power_norm(n_iter=60)
    assert 0.3 < est <= op.norm_bound() * (1 + 1e-5)
    sub = op.subset([1])
    assert torch.allclose(sub.A(x[1:]), op.A(x)[1:], atol=1e-6)
    weights = op.sampling_weights()
    assert weights.ndim == y.ndim and torch.broadcast_shapes(weights.shape, y.shape) == y.shape
    assert not weights.is_complex() and bool((weights != 0).any())


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_sigpy_linop_is_the_same_operator(name):
    """The sigpy Linop of each batch element is A (up to sigpy's own NUFFT accuracy for non-Cartesian)."""
    op = OPERATORS[name]()
    x, _ = _pair(op)
    tol = 1e-5 if isinstance(op, MultiCoilMRI) else 5e-3
    for b in range(2):
        linop = op.sigpy_linop(b)
        assert tuple(linop.ishape) == op.spatial_shape
        ref = op.A(x)[b].numpy()
        got = linop(x[b].numpy())
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < tol


def test_a_wrong_adjoint_is_caught():
    """The adjointness check can fail: an operator whose adjoint is off by a 1 % phase."""
    op = _cartesian_2d()

    class Broken(MultiCoilMRI):
        def A_adjoint(self, y):
            return super().A_adjoint(y) * (1 + 0.01j)

    bad = Broken(op.maps, op.mask)
    x, y = _pair(op)
    assert bad.adjointness_error(x, y) > 1e-3


def test_norm_bound_scales_with_the_mask_weight():
    op = _cartesian_2d()
    heavy = MultiCoilMRI(op.maps, 2 * op.mask)
    assert heavy.norm_bound() == pytest.approx(2 * op.norm_bound())
