"""Tests for the orthogonal convolutions (models/orthogonal.py) and the certified orthogonal MOL-SN network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from molrecon.models import MOL
from molrecon.models.lipschitz import jacobian_spectral_norm
from molrecon.models.orthogonal import (
    compose_kernels,
    conv_norm_bound,
    max_min,
    orthogonal_block,
    orthogonal_kernel,
    orthogonal_kernels,
)
from molrecon.models.priors import OrthogonalDenoiser
from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps

torch.set_num_threads(1)


def _dense(kernel: torch.Tensor, spatial: tuple[int, ...], circular: bool) -> torch.Tensor:
    """The convolution with ``kernel`` on ``spatial`` as a dense ``[c_out·N, c_in·N]`` matrix (float64)."""
    k = kernel.detach().double()
    nd, c_in = k.ndim - 2, k.shape[1]
    conv = F.conv2d if nd == 2 else F.conv3d
    n = c_in * int(torch.tensor(spatial).prod())
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c_in, *spatial)
    pad = k.shape[-1] // 2
    if circular:
        out = conv(F.pad(eye, (pad, pad) * nd, mode="circular"), k)
    else:
        out = conv(eye, k, padding=pad)
    return out.reshape(n, -1).T


def _kernel(nd: int, out_channels: int, in_channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = max(out_channels, in_channels)
    return orthogonal_kernel(torch.randn(c, c, generator=g), torch.randn(2 * nd, c, c // 2, generator=g),
                             nd, 3, out_channels, in_channels)


@pytest.mark.parametrize("nd,spatial", [(2, (6, 5)), (3, (4, 5, 3))])
@pytest.mark.parametrize("out_channels,in_channels", [(6, 6), (6, 2), (2, 6)])
def test_orthogonal_kernel_is_an_isometry_or_a_co_isometry(nd, spatial, out_channels, in_channels):
    """Circularly, every singular value of the convolution is 1 (square), or its Gram on the smaller side is the
    identity; zero-padded, no singular value exceeds 1."""
    k = _kernel(nd, out_channels, in_channels)
    assert k.shape == (out_channels, in_channels, *(3,) * nd)
    m = _dense(k, spatial, circular=True)
    gram = m.T @ m if out_channels >= in_channels else m @ m.T
    torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=2e-5, rtol=0)
    assert float(torch.linalg.matrix_norm(_dense(k, spatial, circular=False), ord=2)) <= 1 + 2e-5


def test_composed_kernel_is_the_composition_of_the_convolutions():
    g = torch.Generator().manual_seed(1)
    outer, inner = torch.randn(3, 4, 2, 3, generator=g), torch.randn(4, 2, 3, 2, generator=g)
    x = torch.randn(1, 2, 9, 8, generator=g)
    composed = compose_kernels(outer, inner)
    assert composed.shape == (3, 2, 4, 4)
    torch.testing.assert_close(F.conv2d(x, composed), F.conv2d(F.conv2d(x, inner), outer), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,spatial", [((5, 3, 3, 3), (7, 6)), ((2, 6, 3, 3), (5, 5)),
                                           ((3, 2, 3, 3, 3), (4, 3, 5))])
def test_norm_bound_dominates_any_kernel_on_every_grid(shape, spatial):
    """A proof for arbitrary (non-orthogonal) kernels: at least the exact norm, zero-padded and circular."""
    k = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    bound = conv_norm_bound(k)
    for circular in (False, True):
        exact = float(torch.linalg.matrix_norm(_dense(k, spatial, circular), ord=2))
        assert exact <= bound * (1 + 1e-12)
    assert bound < 3 * exact  # and not vacuous
    assert conv_norm_bound(_kernel(len(shape) - 2, 6, 2)) == pytest.approx(1.0, abs=1e-5)


def test_max_min_sorts_channel_pairs_and_keeps_booleans_for_its_derivatives():
    """Pairs (i, i + C/2) become (max, min); gradients of every order and forward-mode tangents are those of
    ``torch.maximum``/``minimum``; backward keeps one boolean per pair, not the float input."""
    from torch.autograd import forward_ad

    from molrecon.bench.saved import SavedTensorMeter

    z = torch.tensor([[1.0, -2.0, 3.0, 0.5]]).reshape(1, 4, 1, 1)
    assert max_min(z).flatten().tolist() == [3.0, 0.5, 1.0, -2.0]

    def reference(u):
        a, b = u.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)

    z = torch.randn(2, 6, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(max_min, (z,)) and torch.autograd.gradgradcheck(max_min, (z,))
    t = torch.randn_like(z)
    with forward_ad.dual_level():
        tangents = [forward_ad.unpack_dual(f(forward_ad.make_dual(z.detach(), t))).tangent
                    for f in (max_min, reference)]
    torch.testing.assert_close(*tangents)
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    with SavedTensorMeter() as meter:
        out = max_min(2.0 * x)
    assert meter.live_bytes == 4 * 16 * 16  # 4 pairs per position, one byte each
    del out


@pytest.mark.parametrize("nd", [2, 3])
def test_orthogonal_block_is_its_formula_and_keeps_no_hidden_floats(nd):
    """The block's value and every gradient are those of the plain composition; inside an adjoint solve it
    returns the state's gradient only; for backward it keeps its input and one boolean per pair, not the
    MaxMin output."""
    from molrecon.bench.saved import SavedTensorMeter
    from molrecon.solvers.implicit import gradients_of_the_state_only

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
            for shape in [(2, 4) + (5,) * nd, (8, 4) + (3,) * nd, (8,), (4, 8) + (3,) * nd, (4,)]]
    conv = F.conv2d if nd == 2 else F.conv3d
    z, q1, b1, q2, b2 = args
    reference = conv(max_min(conv(z, q1, b1, padding=1)), q2, b2, padding=1)
    out = orthogonal_block(*args, 1)
    torch.testing.assert_close(out, reference)
    assert torch.autograd.gradcheck(lambda *a: orthogonal_block(*a, 1), tuple(args))
    v = torch.randn(out.shape, generator=g, dtype=torch.float64)
    wanted = torch.autograd.grad(reference, args, v)
    for got, want in zip(torch.autograd.grad(out, args, v), wanted):
        torch.testing.assert_close(got, want)
    with gradients_of_the_state_only():
        orthogonal_block(*args, 1).backward(v)
    torch.testing.assert_close(z.grad, wanted[0])
    assert all(t.grad is None for t in args[1:])
    x = torch.randn((1, 16) + (8,) * nd, requires_grad=True)
    weights = [torch.randn(shape, requires_grad=True) for shape in [(32, 16) + (3,) * nd, (32,), (16, 32) + (3,) * nd,
                                                                   (16,)]]
    with SavedTensorMeter() as meter:
        out = orthogonal_block(2.0 * x, *weights, 1)
    kernels = sum(4 * w.numel() for w in weights[:3])  # Q1, b1, Q2 (saved parameters count too)
    assert meter.live_bytes == 4 * 16 * 8 ** nd + 16 * 8 ** nd + kernels  # the input, one byte per pair
    del out


@pytest.mark.parametrize("nd", [2, 3])
def test_block_jacobian_is_the_blocks_derivative_and_keeps_its_input_tangent_only(nd):
    """``orthogonal_block_jacobian`` at the block's pair order is the forward-mode derivative of the block; its
    value and gradients are those of the plain composition ``Q_2 S Q_1 t``; for backward it keeps the tangent and
    one boolean per pair, not the swapped hidden tangent."""
    from torch.autograd import forward_ad

    from molrecon.bench.saved import SavedTensorMeter
    from molrecon.models.orthogonal import orthogonal_block_jacobian, swap_pairs

    g = torch.Generator().manual_seed(0)
    shapes = [(2, 4) + (5,) * nd, (8, 4) + (3,) * nd, (8,), (4, 8) + (3,) * nd, (4,), (2, 4) + (5,) * nd]
    z, q1, b1, q2, b2, t = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes)
    conv = F.conv2d if nd == 2 else F.conv3d
    u = conv(z, q1, b1, padding=1)
    order = u[:, :4] >= u[:, 4:]
    with forward_ad.dual_level():
        derivative = forward_ad.unpack_dual(orthogonal_block(forward_ad.make_dual(z, t), q1, b1, q2, b2, 1)).tangent
    torch.testing.assert_close(orthogonal_block_jacobian(order, t, q1, q2, 1), derivative)
    args = [a.clone().requires_grad_(True) for a in (t, q1, q2)]
    out = orthogonal_block_jacobian(order, *args, 1)
    assert torch.autograd.gradcheck(lambda *a: orthogonal_block_jacobian(order, *a, 1), tuple(args))
    v = torch.randn(out.shape, generator=g, dtype=torch.float64)
    reference = conv(swap_pairs(order, conv(args[0], args[1], padding=1)), args[2], padding=1)
    for got, want in zip(torch.autograd.grad(out, args, v), torch.autograd.grad(reference, args, v)):
        torch.testing.assert_close(got, want)
    x = torch.randn((1, 16) + (8,) * nd, requires_grad=True)
    kernels = [torch.randn(shape, requires_grad=True) for shape in [(32, 16) + (3,) * nd, (16, 32) + (3,) * nd]]
    pairs = torch.rand((1, 16) + (8,) * nd) > 0.5
    with SavedTensorMeter() as meter:
        out = orthogonal_block_jacobian(pairs, 2.0 * x, *kernels, 1)
    saved_kernels = 4 * kernels[0].numel() + 4 * kernels[1].numel()
    assert meter.live_bytes == 4 * 16 * 8 ** nd + 16 * 8 ** nd + saved_kernels  # the tangent, one byte per pair
    del out


@pytest.mark.parametrize("dims,shape", [("2d", (2, 16, 16)), ("3d", (1, 8, 8, 8)), ("2d+t", (1, 4, 12, 12))])
def test_orthogonal_denoiser_jacobian_norm_below_certificate(dims, shape):
    torch.manual_seed(0)
    h = OrthogonalDenoiser(dims=dims, channels=8, layers=3, state_channels=4, lipschitz_target=0.9)
    cert = h.certified_lipschitz(shape[1:])
    assert 0.9 <= cert < 0.9 * (1 + 1e-4)
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(shape, generator=g, dtype=torch.complex64)
    jac = jacobian_spectral_norm(h, x, n_iter=40, generator=torch.Generator().manual_seed(1))
    assert 0.3 * cert < float(jac.max()) <= cert * (1 + 1e-4)
    x2 = x + 0.1 * torch.randn(shape, generator=g, dtype=torch.complex64)
    assert float((h(x) - h(x2)).abs().norm()) <= cert * float((x - x2).abs().norm()) * (1 + 1e-5)


@pytest.mark.parametrize("dims,shape,layers", [("2d", (2, 12, 10), 3), ("3d", (1, 6, 7, 5), 2), ("2d", (1, 8, 8), 1)])
def test_orthogonal_denoiser_is_its_formula_with_e_and_p_folded_into_the_end_kernels(dims, shape, layers):
    """``H = L·P∘G_n∘…∘G_1∘E`` written out with the state's zero channels and the full orthogonal kernels is the
    network's map, whose first kernel reads only the image's two channels and whose last computes only two."""
    torch.manual_seed(0)
    h = OrthogonalDenoiser(dims=dims, channels=8, layers=layers, state_channels=6, lipschitz_target=0.9)
    nd = h.nd
    conv = F.conv2d if nd == 2 else F.conv3d
    full = orthogonal_kernels(torch.stack(list(h.rotations)), torch.stack(list(h.frames)), nd, 3,
                              [(8, 6), (6, 8)] * layers)
    folded = h.effective_weights(shape[1:])
    assert folded[0].shape[1] == 2 and folded[-1].shape[0] == 2
    x = torch.randn(shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    z = torch.movedim(torch.view_as_real(x), -1, 1)
    z = F.pad(z, (0, 0) * nd + (0, 4))  # E: the state's zero channels
    for i in range(layers):
        z = conv(max_min(conv(z, full[2 * i], h.biases[2 * i], padding=1)), full[2 * i + 1], h.biases[2 * i + 1],
                 padding=1)
    expected = 0.9 * torch.complex(z[:, 0], z[:, 1])  # P: the first two channels
    with torch.no_grad():
        torch.testing.assert_close(h(x), expected, rtol=1e-5, atol=1e-6)


def test_orthogonal_certificate_is_computed_from_the_kernels():
    """The certificate reads the kernels: a kernel pushed off orthogonality raises it."""
    torch.manual_seed(0)
    h = OrthogonalDenoiser(dims="2d", channels=4, layers=2, state_channels=4, lipschitz_target=0.9)
    weights = h.effective_weights((8, 8))
    assert h.certified_lipschitz((8, 8), weights) < 0.9 * (1 + 1e-4)
    weights[1] = 1.5 * weights[1]
    assert h.certified_lipschitz((8, 8), weights) == pytest.approx(0.9 * 1.5, rel=1e-4)
    # without weights, from the parameters' own kernels: a training step changes it
    first = h.certified_lipschitz((8, 8))
    assert first == h.certified_lipschitz((8, 8), h.effective_weights((8, 8)))
    with torch.no_grad():
        h.rotations[0].add_(0.3 * torch.randn_like(h.rotations[0]))
    assert h.certified_lipschitz((8, 8)) == h.certified_lipschitz((8, 8), h.effective_weights((8, 8))) != first


def test_mol_sn_orthogonal_certificate_and_bound():
    maps = simulate_coil_maps((16, 16), 3)[None]
    physics = MultiCoilMRI(maps, RandomMask(0.08, 3.0)((16, 16), seed=0))
    y = physics.A(torch.randn((1, 16, 16), dtype=torch.complex64, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    model = MOL(constraint="sn", architecture="orthogonal", dims="2d", channels=6, layers=2, state_channels=4,
                lipschitz_target=0.9, lam=10.0).eval()
    _, info = model.solve(y, physics)
    cert = model.certificate(physics)
    assert cert["certified"] and 0.9 <= cert["L"] < 0.9 * (1 + 1e-4)
    assert "orthogonal" in cert["estimator"]
    assert info.extra["bound_certified"]


@pytest.mark.parametrize("batch", [1, 2])
def test_orthogonal_denoiser_on_channels_last_is_the_same_map(batch, monkeypatch):
    """On CPU the 2D network runs channels-last (oneDNN's fast path): the same output, input and kernel gradients
    and forward-mode tangents as on the default layout."""
    from torch.autograd import forward_ad

    import molrecon.models.priors as priors

    torch.manual_seed(0)
    h = OrthogonalDenoiser(dims="2d", channels=8, layers=3, state_channels=4, lipschitz_target=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((batch, 12, 10), generator=g, dtype=torch.complex64)
    v = torch.randn((batch, 12, 10), generator=g, dtype=torch.complex64)

    def run():
        xr = x.clone().requires_grad_(True)
        weights = [w.detach().requires_grad_() for w in h.effective_weights((12, 10))]
        out = h.apply(xr, weights)
        torch.view_as_real(out).pow(2).sum().backward()
        with torch.no_grad(), forward_ad.dual_level():
            tangent = forward_ad.unpack_dual(h.apply(forward_ad.make_dual(x, v), weights)).tangent
        return [out.detach(), xr.grad, tangent, *(w.grad for w in weights)]

    fast = run()
    monkeypatch.setattr(priors, "CHANNELS_LAST_2D_CPU", False)
    for a, b in zip(fast, run(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_adversarial_ascent_skips_the_kernel_gradients_of_the_orthogonal_blocks(monkeypatch):
    """The adversarial Lipschitz ascent differentiates w.r.t. its point only: the orthogonal blocks' backward takes
    no kernel gradient (nor the recomputation it needs) during the ascent, and the returned ratio still carries
    the kernels' gradients for the penalty."""
    import molrecon.models.orthogonal as orthogonal
    from molrecon.models.lipschitz import adversarial_lipschitz

    masks = []
    plain = orthogonal._conv_backward

    def spy(grad, inputs, weight, padding, mask):
        masks.append(mask)
        return plain(grad, inputs, weight, padding, mask)

    monkeypatch.setattr(orthogonal, "_conv_backward", spy)
    torch.manual_seed(0)
    h = OrthogonalDenoiser(dims="2d", channels=8, layers=2, state_channels=4, lipschitz_target=1.05)
    weights = h.effective_weights((12, 12))
    x = torch.randn(1, 12, 12, dtype=torch.complex64)
    lip = adversarial_lipschitz(lambda t: h.apply(t, weights), x, steps=3, generator=torch.Generator().manual_seed(1))
    assert masks and not any(mask[1] or mask[2] for mask in masks)  # input gradients only
    masks.clear()
    lip.sum().backward()
    assert any(mask[1] for mask in masks)
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in h.rotations)
