import numpy as np
import pytest
import sigpy
import torch

from molrecon.metrics import psnr
from molrecon.physics import MultiCoilMRI, PoissonDiscMask, RandomMask, add_noise, simulate_coil_maps
from molrecon.recon import cg_sense, cs_tv, cs_wavelet, reconstruct, zero_filled


def phantom(n=64):
    return torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))


def test_cg_sense_fully_sampled_noiseless_returns_image():
    img = phantom()
    P = MultiCoilMRI(simulate_coil_maps((64, 64), 6)[None], torch.ones(1, 64))
    x = cg_sense(P.A(img[None]), P, lam=0.0, max_iter=50, tol=1e-8)
    torch.testing.assert_close(x[0], img, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dims,spatial", [("3d", (8, 32, 32)), ("2d+t", (4, 32, 32))])
def test_cg_sense_fully_sampled_3d_and_dynamic(dims, spatial):
    img = torch.randn(1, *spatial, dtype=torch.complex64)
    maps = simulate_coil_maps(spatial, 4, dims=dims)[None]
    P = MultiCoilMRI(maps, torch.ones(1, spatial[-1]), dims=dims)
    torch.testing.assert_close(cg_sense(P.A(img), P, lam=0.0, tol=1e-8), img, rtol=1e-4, atol=1e-4)


def test_cs_beats_sense_and_zero_filled_on_sparse_phantom():
    img = phantom(96)
    P = MultiCoilMRI(simulate_coil_maps((96, 96), 8)[None], RandomMask(0.08, 4)((96, 96), seed=0))
    y, _ = add_noise(P.A(img[None]), P.mask, snr_db=40, seed=0)
    p_zf = psnr(zero_filled(y, P)[0], img)
    p_sense = psnr(cg_sense(y, P, lam=1e-3)[0], img)
    p_wav = psnr(cs_wavelet(y, P, lam=1e-3, max_iter=100)[0], img)
    p_tv = psnr(cs_tv(y, P, lam=1e-2, max_iter=300)[0], img)
    assert p_sense > p_zf
    assert p_wav > p_sense + 1.0
    assert p_tv > p_sense + 3.0


def test_cs_fully_sampled_small_lambda_is_near_exact():
    img = phantom(32)
    P = MultiCoilMRI(simulate_coil_maps((32, 32), 4)[None], torch.ones(1, 32))
    x = cs_wavelet(P.A(img[None]), P, lam=1e-6, max_iter=50)
    assert psnr(x[0], img) > 50


@pytest.mark.parametrize("method", ["cs-wavelet", "cs-tv"])
def test_cs_runs_on_3d_and_dynamic(method):
    for dims, spatial, mask in [("3d", (8, 16, 16), PoissonDiscMask(2, 4)((8, 16, 16), seed=0)),
                                ("2d+t", (4, 16, 16), RandomMask(0.2, 2)((4, 16, 16), seed=0, dims="2d+t"))]:
        img = torch.randn(1, *spatial, dtype=torch.complex64)
        P = MultiCoilMRI(simulate_coil_maps(spatial, 2, dims=dims)[None], mask, dims=dims)
        y = P.A(img)
        x = reconstruct(method, y, P, lam=1e-4, max_iter=30)
        assert x.shape == img.shape and torch.isfinite(x).all()
        # Data consistency improves on the zero-filled start.
        assert (P.A(x) - y).norm() < (P.A(zero_filled(y, P)) - y).norm()
