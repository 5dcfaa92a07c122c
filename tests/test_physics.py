import numpy as np
import pytest
import torch

from molrecon.errors import InputError
from molrecon.physics import (
    EquispacedMask,
    MultiCoilMRI,
    PoissonDiscMask,
    RandomMask,
    VariableDensity2DMask,
    achieved_acceleration,
    add_noise,
    estimate_coil_maps,
    fft_centered,
    ifft_centered,
    simulate_coil_maps,
)

CASES = [("2d", (24, 20)), ("2d", (15, 20)), ("3d", (6, 12, 10)), ("3d", (6, 11, 10)),
         ("2d+t", (5, 12, 10))]


def make_physics(dims, spatial, coils=4, batch=2):
    maps = simulate_coil_maps(spatial, coils, dims=dims)[None].expand(batch, -1, *spatial).clone()
    mask = (PoissonDiscMask(3, 4) if dims == "3d" else RandomMask(0.1, 3))(spatial, seed=1, dims=dims)
    return MultiCoilMRI(maps, mask, dims=dims)


def cdot(a, b):
    return (a.conj() * b).sum()


@pytest.mark.parametrize("dims,spatial", CASES)
def test_adjoint_identity(dims, spatial):
    P = make_physics(dims, spatial)
    x = torch.randn(2, *spatial, dtype=torch.complex64)
    y = torch.randn(2, 4, *spatial, dtype=torch.complex64)
    lhs, rhs = cdot(P.A(x), y), cdot(x, P.A_adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


@pytest.mark.parametrize("dims,spatial", CASES)
def test_normal_equals_adjoint_of_forward(dims, spatial):
    P = make_physics(dims, spatial)
    x = torch.randn(2, *spatial, dtype=torch.complex64)
    torch.testing.assert_close(P.normal(x), P.A_adjoint(P.A(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial", [(24, 20), (15, 21)])
def test_normal_transforms_only_the_axes_on_which_the_mask_varies(spatial):
    maps = simulate_coil_maps(spatial, 4)[None]
    x = torch.randn(2, *spatial, dtype=torch.complex64)
    lines = RandomMask(0.1, 3)(spatial, seed=1)
    cases = [(lines, (-1,)),  # phase-encode lines: the readout FFT pair cancels
             (lines.expand(spatial).clone(), (-1,)),  # the same mask stored as a full 2D grid
             (VariableDensity2DMask(4)(spatial, seed=1), (-2, -1)),  # varies along both axes
             (torch.ones(spatial), ())]  # fully sampled: A^H A = S^H S
    for mask, dims in cases:
        P = MultiCoilMRI(maps, mask)
        assert P.normal_fft_dims() == dims
        torch.testing.assert_close(P.normal(x), P.A_adjoint(P.A(x)), rtol=1e-5, atol=1e-6)


def test_fft_is_centred_orthonormal_and_matches_numpy_convention():
    x = torch.randn(8, 6, dtype=torch.complex64)
    k = fft_centered(x, (-2, -1))
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy()), norm="ortho"))
    np.testing.assert_allclose(k.numpy(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ifft_centered(k, (-2, -1)), x, rtol=1e-5, atol=1e-5)
    assert abs(k.norm() - x.norm()) / x.norm() < 1e-5
    # A constant image puts all its energy in the centre pixel (the DC term sits at N//2).
    dc = fft_centered(torch.ones(8, 6, dtype=torch.complex64), (-2, -1))
    assert dc.abs().argmax().item() == 4 * 6 + 3


@pytest.mark.parametrize("shape", [(7, 9), (10, 14), (12, 8), (6, 7)])
def test_centred_fft_matches_shift_definition_for_even_and_odd_sizes(shape):
    # even sizes use the phase-modulation form, odd ones the shifts: both must equal fastMRI's definition
    x = torch.randn(3, *shape, dtype=torch.complex64)
    ax = (1, 2)
    ref = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x.numpy(), axes=ax), axes=ax, norm="ortho"), axes=ax)
    np.testing.assert_allclose(fft_centered(x, (-2, -1)).numpy(), ref, rtol=1e-5, atol=1e-5)
    iref = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(x.numpy(), axes=ax), axes=ax, norm="ortho"), axes=ax)
    np.testing.assert_allclose(ifft_centered(x, (-2, -1)).numpy(), iref, rtol=1e-5, atol=1e-5)


def test_dynamic_fft_acts_on_last_two_axes_only():
    P = make_physics("2d+t", (5, 12, 10), batch=1)
    x = torch.zeros(1, 5, 12, 10, dtype=torch.complex64)
    x[0, 2] = 1.0  # energy in one frame must stay in that frame
    y = P.A(x)
    assert y[:, :, [0, 1, 3, 4]].abs().max() == 0
    assert y[:, :, 2].abs().max() > 0


def test_operator_norm_at_most_one_with_normalised_maps():
    P = make_physics("2d", (24, 20), batch=1)
    v = torch.randn(1, 24, 20, dtype=torch.complex64)
    for _ in range(50):
        v = P.normal(v)
        v = v / v.norm()
    assert (P.normal(v).norm() / v.norm()).item() <= 1 + 1e-4


def test_coil_maps_normalised_inside_support_and_zero_outside():
    support = torch.zeros(32, 32, dtype=torch.bool)
    support[8:24, 6:26] = True
    maps = simulate_coil_maps((32, 32), 8, support=support)
    rss2 = maps.abs().pow(2).sum(0)
    torch.testing.assert_close(rss2[support], torch.ones(int(support.sum())), rtol=1e-5, atol=1e-5)
    assert rss2[~support].abs().max() == 0
    # Smooth: neighbouring pixels of one coil differ little.
    inner = maps[0, 8:24, 6:26]
    assert (inner[1:] - inner[:-1]).abs().max() < 0.1


@pytest.mark.parametrize("accel,cf", [(4, 0.08), (8, 0.04)])
def test_random_mask_hits_acceleration_on_average(accel, cf):
    accs = [achieved_acceleration(RandomMask(cf, accel)((256, 368), seed=s), (256, 368)) for s in range(40)]
    assert abs(np.mean(accs) - accel) / accel < 0.05
    m = RandomMask(cf, accel)((256, 368), seed=3)
    num_low = round(368 * cf)
    pad = (368 - num_low + 1) // 2
    assert m[0, pad:pad + num_low].all()


def test_equispaced_mask_hits_acceleration_and_is_seeded():
    m1 = EquispacedMask(0.08, 4)((64, 320), seed=5)
    m2 = EquispacedMask(0.08, 4)((64, 320), seed=5)
    assert torch.equal(m1, m2)
    assert abs(achieved_acceleration(m1, (64, 320)) - 4) < 0.25


def test_dynamic_masks_differ_per_frame():
    m = RandomMask(0.08, 4)((8, 32, 64), seed=0, dims="2d+t")
    assert m.shape == (8, 1, 64)
    assert any(not torch.equal(m[0], m[t]) for t in range(1, 8))
    assert abs(achieved_acceleration(m, (8, 32, 64)) - 4) < 0.8


@pytest.mark.parametrize("mask_cls", [PoissonDiscMask, VariableDensity2DMask])
def test_3d_masks_hit_acceleration(mask_cls):
    m = mask_cls(acceleration=4)((16, 64, 64), seed=2)
    assert m.shape == (1, 64, 64)
    assert abs(achieved_acceleration(m, (16, 64, 64)) - 4) / 4 < 0.15
    assert m[0, 30:34, 30:34].all()  # fully sampled centre


def test_mask_rejects_wrong_rank():
    with pytest.raises(InputError, match="column mask"):
        RandomMask()((4, 8, 8))


def test_noise_sigma_and_snr():
    y = torch.ones(1, 2, 64, 64, dtype=torch.complex64)
    noisy, sigma = add_noise(y, sigma=0.1, seed=0)
    assert abs((noisy - y).abs().pow(2).mean().sqrt().item() - 0.1) < 0.005
    noisy, sigma = add_noise(y, snr_db=20, seed=0)
    assert abs(sigma - 0.1) < 1e-6
    again, _ = add_noise(y, snr_db=20, seed=0)
    assert torch.equal(noisy, again)
    mask = torch.zeros(1, 64)
    mask[0, ::2] = 1
    noisy, _ = add_noise(y, mask, sigma=0.1, seed=0)
    assert torch.equal(noisy[..., 1::2], y[..., 1::2])


def test_espirit_recovers_simulated_maps_up_to_phase():
    import sigpy

    spatial = (64, 64)
    img = torch.from_numpy(sigpy.shepp_logan(spatial).astype(np.complex64))
    support = img.abs() > 0
    maps = simulate_coil_maps(spatial, 6, support=support)
    kspace = fft_centered(maps * img, (-2, -1))[None]
    est = estimate_coil_maps(kspace, calib_width=24)
    assert est.shape == kspace.shape
    inner = support & (torch.from_numpy(np.abs(sigpy.shepp_logan(spatial))) > 0.1)
    # ESPIRiT maps are defined up to one phase per pixel: compare the projections S S^H.
    true = maps[:, inner]
    got = est[0][:, inner]
    proj = (got.conj() * true).sum(0).abs()
    assert proj.mean() > 0.97
    rss = est[0].abs().pow(2).sum(0)[inner]
    assert (rss - 1).abs().mean() < 0.05


def test_physics_bad_inputs():
    maps = simulate_coil_maps((16, 16), 4)[None]
    with pytest.raises(InputError, match="complex"):
        MultiCoilMRI(maps.real, torch.ones(1, 16))
    with pytest.raises(InputError, match="empty"):
        MultiCoilMRI(maps, torch.zeros(1, 16))
    with pytest.raises(InputError, match="broadcast"):
        MultiCoilMRI(maps, torch.ones(1, 15))
    bad = maps.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        MultiCoilMRI(bad, torch.ones(1, 16))
    P = MultiCoilMRI(maps, torch.ones(1, 16))
    with pytest.raises(InputError, match="coils"):
        P.check_kspace(torch.zeros(1, 3, 16, 16, dtype=torch.complex64))
    with pytest.raises(InputError, match="complex"):
        P.check_kspace(torch.zeros(1, 4, 16, 16))


def _held_storages(obj) -> int:
    """Bytes of the distinct tensor storages an object holds in its attributes (tuples and lists included)."""
    seen, todo = {}, list(vars(obj).values())
    while todo:
        v = todo.pop()
        if isinstance(v, torch.Tensor):
            seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        elif isinstance(v, (tuple, list)):
            todo.extend(v)
    return sum(seen.values())


@pytest.mark.parametrize("spatial", [(32, 24), (15, 21)])
def test_normal_keeps_one_conjugate_copy_of_the_maps_and_no_signed_copy(spatial):
    """``A^H A`` runs in every CG step and may keep the maps' conjugate (one coil stack) for it, but no second,
    sign-modulated copy: every operator of a MOL training step held that stack to the end of the step."""
    maps = simulate_coil_maps(spatial, 6)[None]
    P = MultiCoilMRI(maps, RandomMask(0.1, 3)(spatial, seed=1))
    stack = maps.numel() * maps.element_size()
    before = _held_storages(P)
    x = torch.randn(2, *spatial, dtype=torch.complex64)
    out = P.normal(x)
    assert _held_storages(P) - before <= stack + 4 * x[0].numel()  # the conjugate, and the image's signs
    torch.testing.assert_close(out, P.A_adjoint(P.A(x)), rtol=1e-5, atol=1e-6)
