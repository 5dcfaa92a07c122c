"""Tests for MOL's constraint strategies (models/constraints.py) and the Lipschitz estimators they use
(models/lipschitz.py): registry, parameters, old configs."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from molrecon.errors import InputError
from molrecon.models import MOL, build_model
from molrecon.models.constraints import (
    CONSTRAINT_STRATEGIES,
    LipschitzPenalty,
    SpectralNormalization,
    Unconstrained,
    make_constraint,
)
from molrecon.models.lipschitz import (
    adversarial_lipschitz,
    jacobian_norm_along,
    jacobian_spectral_norm,
    jacobian_symmetric_extremes,
    jacobian_top_subspace,
    lipschitz_barrier,
)
from molrecon.names import CONSTRAINTS


def test_every_constraint_name_has_a_strategy():
    assert set(CONSTRAINT_STRATEGIES) == set(CONSTRAINTS)
    assert CONSTRAINT_STRATEGIES["sn"].certified and not CONSTRAINT_STRATEGIES["lr"].certified
    assert CONSTRAINT_STRATEGIES["lr"].has_penalty and not CONSTRAINT_STRATEGIES["none"].has_penalty


def test_strategy_carries_its_parameters_and_mol_its_config():
    model = MOL(constraint="lr", dims="2d", channels=4, layers=2, lr_clip=0.9, lr_steps=3)
    assert isinstance(model.constraint_strategy, LipschitzPenalty)
    assert model.constraint_strategy.lr_clip == 0.9 and model.constraint_strategy.lr_steps == 3
    cfg = model.config()
    assert cfg["lr_clip"] == 0.9 and "lipschitz_target" not in cfg and "lr_warm_steps" not in cfg
    assert build_model({"method": "mol-lr", **cfg}).constraint_strategy == model.constraint_strategy
    sn = MOL(constraint=SpectralNormalization(lipschitz_target=0.8), dims="2d", channels=4, layers=2)
    assert sn.constraint == "sn" and sn.lipschitz_target == 0.8 and sn.constraint_strategy.certified
    assert sn.denoiser.lipschitz_target == 0.8


def test_configs_with_every_strategys_keys_still_load():
    """Configs written before constraints were classes hold all the keys: the foreign ones are ignored."""
    old = {"method": "deq", "dims": "2d", "channels": 4, "layers": 2, "lipschitz_target": 0.95, "lr_weight": 1e-6,
           "lr_threshold": 0.98, "lr_eps": 1e-3, "lr_steps": 4, "lr_noise": 0.01, "lr_step_size": 1.0,
           "lr_clip": 0.97}
    model = build_model(old)
    assert model.constraint_strategy == Unconstrained(lr_steps=4)
    with pytest.raises(InputError, match="unknown constraint option"):
        MOL(constraint="lr", lr_wieght=1.0)
    with pytest.raises(InputError, match="constraint must be one of"):
        make_constraint("orthogonal", {})
    with pytest.raises(InputError, match="inside the"):
        MOL(constraint=LipschitzPenalty(), lr_clip=0.5)
    with pytest.raises(InputError, match="lipschitz_target"):
        MOL(constraint="sn", lipschitz_target=1.5)


def test_penalty_and_safeguard_come_from_the_strategy():
    torch.manual_seed(0)
    lr = MOL(constraint="lr", dims="2d", channels=4, layers=2, lr_steps=2, lr_clip=0.5)
    x = torch.randn(1, 12, 12, dtype=torch.complex64)
    loss, logs = lr.extra_loss(x)
    assert loss.requires_grad and logs["lipschitz"] > 0 and logs["lipschitz_penalty"] > 0
    before = lr.denoiser.convs[0].weight.clone()
    scale = lr.enforce_lipschitz(1.0)
    assert scale == pytest.approx(0.5 ** 0.5) and torch.allclose(lr.denoiser.convs[0].weight, before * scale)
    sn = MOL(constraint="sn", dims="2d", channels=4, layers=2)
    assert sn.extra_loss(x) == (sn.log_lam.new_zeros(()), {}) and sn.enforce_lipschitz(5.0) == 1.0


def test_a_checkpoint_with_every_strategys_keys_resumes(tmp_path):
    """Checkpoints written before constraints were classes store all the constraint keys; they still resume."""
    from molrecon.train import train
    from molrecon.weights.checkpoint import load_checkpoint, save_checkpoint

    cfg = {"name": "old", "out_dir": str(tmp_path / "run"),
           "model": {"method": "mol-lr", "dims": "2d", "channels": 4, "layers": 2, "max_iter": 10, "lr_steps": 2},
           "data": {"source": "synthetic", "shape": [16, 16], "num_coils": 2, "num_train": 2, "num_val": 1},
           "train": {"max_steps": 1, "checkpoint_every": 1, "tensorboard": False, "progress": False}}
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    state["model_config"] = {**state["model_config"], "lipschitz_target": 0.95}  # the old layout
    save_checkpoint(last, state)
    cfg["train"]["max_steps"] = 2
    assert train(cfg, resume=True)["step"] == 2


def test_jacobian_norm_along_is_the_directional_derivative_and_carries_the_weight_gradient():
    torch.manual_seed(0)
    model = MOL(constraint="lr", dims="2d", channels=4, layers=3, architecture="residual",
                residual_init_gain=1.0)
    w = model._weights((12, 12))
    h = lambda v: model._h(v, w)  # noqa: E731
    x = torch.randn(1, 12, 12, dtype=torch.complex64)
    v = torch.randn(1, 12, 12, dtype=torch.complex64)
    got = jacobian_norm_along(h, x, v)
    eps = 1e-3
    with torch.no_grad():
        fd = (h(x + eps * v) - h(x - eps * v)).abs().pow(2).sum().sqrt() / (2 * eps * v.abs().pow(2).sum().sqrt())
    assert float(got.detach()) == pytest.approx(float(fd), rel=2e-3)
    # a linear h = a * v: ||J v|| / ||v|| = |a| with d/da = sign(a)
    a = torch.tensor(-0.6, requires_grad=True)
    lin = jacobian_norm_along(lambda z: a * z, x, v)
    lin.sum().backward()
    assert float(lin.detach()) == pytest.approx(0.6, rel=1e-5) and float(a.grad) == pytest.approx(-1.0, rel=1e-5)


def _penalty_and_h(model: MOL, x: torch.Tensor):
    """The model's penalty at ``x`` (seed 0 for its random starts), its H, and the seed reset for a reference."""
    torch.manual_seed(0)
    loss, logs = model.extra_loss(x)
    w = model._weights(tuple(x.shape[1:]))
    torch.manual_seed(0)  # the same random starts as inside the penalty
    return loss, logs, lambda v: model._h(v, w)


def test_jacobian_penalty_adds_a_barrier_on_the_power_iteration_estimate_and_continues_it():
    opts = dict(dims="2d", channels=4, layers=3, architecture="residual", residual_init_gain=1.0, lr_steps=2,
                lr_weight=1e-3, lr_threshold=0.9, lr_jacobian_threshold=0.8)
    model = MOL(constraint="lr", lr_jacobian_steps=3, **opts)
    assert model.config()["lr_jacobian_steps"] == 3 and "lr_jacobian_steps" not in MOL(constraint="lr").config()
    assert model.constraint_strategy.warm_keys() == ("lip_u",)
    x = torch.randn(1, 12, 12, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    loss, logs, h = _penalty_and_h(model, x)
    adv = adversarial_lipschitz(h, x, steps=2)
    _, u = jacobian_spectral_norm(h, x, n_iter=3, return_vector=True)
    jac = jacobian_norm_along(h, x, u)
    ref = 1e-3 * (lipschitz_barrier(adv, 0.9) + lipschitz_barrier(jac, 0.8)).mean().detach()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    assert logs["lipschitz_jacobian"] == pytest.approx(float(jac.detach()), rel=1e-5)
    assert logs["lipschitz"] == max(logs["lipschitz_adversarial"], logs["lipschitz_jacobian"])
    # the model runs the power iteration on its CNN's masked-convolution Jacobian: the same vector to rounding
    torch.testing.assert_close(model.last_lip_points["lip_u"], u, rtol=1e-5, atol=1e-6)
    # continued from its vector the power iteration only climbs (Rayleigh quotients of J^T J do not decrease)
    _, again = model.extra_loss(x, warm={"lip_u": u})
    assert again["lipschitz_jacobian"] >= logs["lipschitz_jacobian"] * (1 - 1e-6)
    without = MOL(constraint="lr", **opts)
    without.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    base, base_logs = without.extra_loss(x)
    assert "lipschitz_jacobian" not in base_logs and float(base.detach()) < float(loss.detach())
    with pytest.raises(InputError, match="lr_jacobian_steps"):
        MOL(constraint="lr", lr_jacobian_steps=0)


def test_lr_steps_zero_trains_the_jacobian_term_alone_and_the_certificate_still_ascends(monkeypatch):
    opts = dict(dims="2d", channels=4, layers=3, architecture="residual", residual_init_gain=1.0, lr_weight=1e-3,
                lr_threshold=0.9, lr_jacobian_threshold=0.8)
    model = MOL(constraint="lr", lr_steps=0, lr_jacobian_steps=3, **opts)
    x = torch.randn(1, 12, 12, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    loss, logs, h = _penalty_and_h(model, x)
    _, u = jacobian_spectral_norm(h, x, n_iter=3, return_vector=True)
    jac = jacobian_norm_along(h, x, u)
    assert float(loss.detach()) == pytest.approx(float(1e-3 * lipschitz_barrier(jac.detach(), 0.8).mean()), rel=1e-5)
    assert "lipschitz_adversarial" not in logs and logs["lipschitz"] == logs["lipschitz_jacobian"]
    loss.backward()  # the Jacobian term alone carries a gradient into the weights
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.denoiser.parameters())
    with pytest.raises(InputError, match="lr_jacobian_steps"):
        MOL(constraint="lr", lr_steps=0)
    with pytest.raises(InputError, match="lr_steps"):
        MOL(constraint="lr", lr_steps=-1)
    # the certificate's adversarial ascent takes at least the authors' 10 steps, whatever the training used
    import molrecon.models.certificate as certificate_module

    seen = []
    real = certificate_module.adversarial_lipschitz
    monkeypatch.setattr(certificate_module, "adversarial_lipschitz",
                        lambda *a, **k: seen.append(k["steps"]) or real(*a, **k))
    physics = _physics_12()
    for steps in (0, 2, 25):
        extra = {"lr_jacobian_steps": 1} if steps == 0 else {}
        MOL(constraint="lr", lr_steps=steps, **extra, **opts).certificate(physics, x=x, power_iterations=5)
    assert seen == [certificate_module.CERTIFICATE_ASCENT_STEPS, certificate_module.CERTIFICATE_ASCENT_STEPS, 25]


def _real_matrix(h, shape) -> torch.Tensor:
    """The Jacobian of a real-linear ``h`` on complex images as a real (2n x 2n) matrix, column by column."""
    n = 2 * int(torch.tensor(shape).prod())
    cols = []
    for i in range(n):
        e = torch.zeros(n)
        e[i] = 1
        cols.append(torch.view_as_real(h(torch.view_as_complex(e.reshape(*shape, 2))[None])[0]).reshape(-1))
    return torch.stack(cols, 1).detach()


def test_subspace_iteration_finds_the_top_singular_values_of_a_real_linear_map():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))

    def h(x: torch.Tensor) -> torch.Tensor:  # real-linear, not complex-linear: mixes real and imaginary parts
        out = conv(torch.stack([x.real, x.imag], 1))
        return torch.complex(out[:, 0], out[:, 1])

    exact = torch.linalg.svdvals(_real_matrix(h, (6, 6)))
    x = torch.randn(2, 6, 6, dtype=torch.complex64)
    sigma, v = jacobian_top_subspace(h, x, 3, n_iter=300, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (2, 3) and v.shape == (2, 3, 6, 6)
    assert torch.allclose(sigma, exact[:3].expand(2, 3), rtol=1e-3)
    rows = torch.view_as_real(v).reshape(2, 3, -1)
    assert torch.allclose(rows @ rows.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
    # each returned vector is its singular direction: ||J v_i|| = sigma_i
    along = jacobian_norm_along(h, x.repeat_interleave(3, 0), v.flatten(0, 1)).reshape(2, 3)
    assert torch.allclose(along, sigma, rtol=1e-4)
    # with the top singular value crowded, one vector after a few steps reads lower than the block's top
    few_one = jacobian_spectral_norm(h, x, n_iter=4, generator=torch.Generator().manual_seed(1))
    few_block, _ = jacobian_top_subspace(h, x, 4, n_iter=4, generator=torch.Generator().manual_seed(1))
    assert bool((few_block[:, 0] >= few_one - 1e-6).all())


def test_lanczos_finds_the_extreme_eigenvalues_of_the_symmetric_part_of_a_real_linear_map():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))

    def h(x: torch.Tensor) -> torch.Tensor:  # real-linear and not symmetric: S differs from J
        out = conv(torch.stack([x.real, x.imag], 1))
        return torch.complex(out[:, 0], out[:, 1])

    jac = _real_matrix(h, (6, 6)).double()
    exact = torch.linalg.eigvalsh(0.5 * (jac + jac.T))
    x = torch.randn(2, 6, 6, dtype=torch.complex64)
    # 40 steps on a 72-dimensional map: the extremes converge long before the Krylov space fills the space
    top, bottom = jacobian_symmetric_extremes(h, x, steps=40, generator=torch.Generator().manual_seed(0))
    assert top.shape == bottom.shape == (2,)
    assert torch.allclose(top.double(), exact[-1].expand(2), rtol=1e-4)
    assert torch.allclose(bottom.double(), exact[0].expand(2), rtol=1e-4)
    # the symmetric part's spectrum lies inside [-||J||, ||J||] and here is strictly narrower than it
    assert float(exact[-1]) < float(torch.linalg.matrix_norm(jac, 2)) - 1e-3


def test_block_jacobian_penalty_puts_each_direction_under_the_barrier_and_is_cached_per_slice():
    opts = dict(dims="2d", channels=4, layers=3, architecture="residual", residual_init_gain=1.0, lr_steps=0,
                lr_weight=1e-3, lr_jacobian_threshold=0.8, lr_jacobian_steps=2)
    model = MOL(constraint="lr", lr_jacobian_block=3, **opts)
    strategy = model.constraint_strategy
    assert model.config()["lr_jacobian_block"] == 3 and "lr_jacobian_block" not in MOL(constraint="lr").config()
    assert strategy.warm_shape("lip_u", (12, 12)) == (3, 12, 12) and strategy.warm_shape("lip_v", (12, 12)) == (12, 12)
    x = torch.randn(2, 12, 12, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    loss, logs, h = _penalty_and_h(model, x)
    _, u = jacobian_top_subspace(h, x, 3, n_iter=2)
    jac = jacobian_norm_along(h, x.repeat_interleave(3, 0), u.flatten(0, 1)).reshape(2, 3)
    ref = 1e-3 * lipschitz_barrier(jac, 0.8).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert logs["lipschitz_jacobian"] == pytest.approx(float(jac.detach().max()), rel=1e-5)
    assert model.last_lip_points["lip_u"].shape == (2, 3, 12, 12)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.denoiser.parameters())
    # continued from its vectors; a vector of the wrong shape (one direction) is ignored, not broadcast
    _, again = model.extra_loss(x, warm={"lip_u": model.last_lip_points["lip_u"]})
    assert again["lipschitz_jacobian"] >= logs["lipschitz_jacobian"] * (1 - 1e-4)
    model.extra_loss(x, warm={"lip_u": torch.randn(2, 12, 12, dtype=torch.complex64)})
    with pytest.raises(InputError, match="lr_jacobian_steps"):
        MOL(constraint="lr", lr_jacobian_block=2)
    with pytest.raises(InputError, match="lr_jacobian_block"):
        MOL(constraint="lr", lr_jacobian_steps=2, lr_jacobian_block=0)


def test_zero_jacobian_penalty_is_a_barrier_at_the_origin_continued_from_one_vector():
    opts = dict(dims="2d", channels=4, layers=3, architecture="residual", residual_init_gain=1.0, lr_steps=0,
                lr_weight=1e-3, lr_jacobian_threshold=0.8)
    model = MOL(constraint="lr", lr_zero_jacobian_steps=3, **opts)
    strategy = model.constraint_strategy
    assert strategy.global_warm_keys() == ("lip_z",) and strategy.warm_keys() == ()
    assert model.config()["lr_zero_jacobian_steps"] == 3
    assert "lr_zero_jacobian_steps" not in MOL(constraint="lr").config()
    x = torch.randn(2, 12, 12, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    loss, logs, h = _penalty_and_h(model, x)
    zero = torch.zeros(1, 12, 12, dtype=torch.complex64)
    _, z = jacobian_spectral_norm(h, zero, n_iter=3, return_vector=True)
    jac = jacobian_norm_along(h, zero, z)
    assert float(loss.detach()) == pytest.approx(float(1e-3 * lipschitz_barrier(jac.detach(), 0.8).mean()), rel=1e-5)
    assert logs["lipschitz"] == logs["lipschitz_zero"] == pytest.approx(float(jac.detach()), rel=1e-5)
    # one vector whatever the batch, and it does not depend on the images: only on the weights
    assert model.last_lip_points["lip_z"].shape == (1, 12, 12)
    torch.manual_seed(0)
    _, other = model.extra_loss(2 * x)
    assert other["lipschitz_zero"] == logs["lipschitz_zero"]
    _, again = model.extra_loss(x, warm={"lip_z": model.last_lip_points["lip_z"]})
    assert again["lipschitz_zero"] >= logs["lipschitz_zero"] * (1 - 1e-6)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.denoiser.parameters())


def _physics_12():
    from molrecon.physics import MultiCoilMRI

    maps = torch.ones(1, 1, 12, 12, dtype=torch.complex64)
    mask = torch.zeros(1, 12, 12)
    mask[..., ::2] = 1
    return MultiCoilMRI(maps, mask)


def test_power_iteration_stops_once_it_no_longer_rises():
    weight = torch.linspace(0.1, 0.8, 64).reshape(1, 8, 8)
    steps = []

    def h(v: torch.Tensor) -> torch.Tensor:
        out = weight * v
        if out.requires_grad:
            out.register_hook(lambda g: steps.append(1))
        return out

    x = torch.randn(1, 8, 8, dtype=torch.complex64)
    full = jacobian_spectral_norm(h, x, n_iter=400, generator=torch.Generator().manual_seed(0))
    calls_full = len(steps)
    steps.clear()
    early = jacobian_spectral_norm(h, x, n_iter=400, generator=torch.Generator().manual_seed(0), tol=1e-4)
    assert len(steps) < calls_full / 2
    assert float(early) == pytest.approx(float(full), rel=2e-3) and float(full) == pytest.approx(0.8, rel=1e-3)


@pytest.mark.parametrize("architecture", ["plain", "residual", "orthogonal"])
@pytest.mark.parametrize("dims,shape", [("2d", (2, 14, 12)), ("3d", (1, 5, 6, 7)), ("2d+t", (1, 4, 6, 8))])
def test_linearised_jacobian_is_the_autograd_jacobian_and_its_adjoint(architecture, dims, shape):
    """``jacobian_at``: the Jacobian of a ReLU CNN (masked convolutions) and of the orthogonal network (MaxMin's
    pair swaps between the kernels) equals forward- and reverse-mode autograd, its ``vjp`` is the adjoint of its
    ``jvp``, and the penalty's differentiable norm along a direction has the same value and weight gradient
    either way."""
    from torch.autograd import forward_ad

    from molrecon.models.cnn import ConvDenoiser
    from molrecon.models.priors import OrthogonalDenoiser, ResidualDenoiser

    torch.manual_seed(0)
    net = {"residual": lambda: ResidualDenoiser(dims=dims, channels=6, layers=4, residual_init_gain=1.0),
           "orthogonal": lambda: OrthogonalDenoiser(dims=dims, channels=6, layers=3, state_channels=4,
                                                    lipschitz_target=1.05),
           "plain": lambda: ConvDenoiser(dims=dims, channels=6, layers=4)}[architecture]()
    weights = net.effective_weights(shape[1:])
    x, v, u = (torch.randn(shape, dtype=torch.complex64) for _ in range(3))
    jac = net.jacobian_at(x, weights)
    with forward_ad.dual_level():
        jvp_ref = forward_ad.unpack_dual(net.apply(forward_ad.make_dual(x, v), weights)).tangent
    xr = x.clone().requires_grad_(True)
    (vjp_ref,) = torch.autograd.grad(net.apply(xr, weights), xr, u)
    torch.testing.assert_close(jac.jvp(v), jvp_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jac.vjp(u), vjp_ref, rtol=1e-5, atol=1e-6)
    lhs = torch.vdot(jac.jvp(v).flatten(), u.flatten()).real
    rhs = torch.vdot(v.flatten(), jac.vjp(u).flatten()).real
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)
    h = lambda t: net.apply(t, weights)  # noqa: E731
    grads = []
    for linearised in (False, True):
        net.zero_grad()
        # a fresh map from the parameters each time: the orthogonal kernels are computed from them
        kernels = net.effective_weights(shape[1:])
        linearize = partial(net.jacobian_at, weights=kernels) if linearised else None
        value = jacobian_norm_along(partial(net.apply, weights=kernels), x, v, recompute=True, linearize=linearize)
        value.sum().backward()
        grads.append((value.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                        for p in net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-7)
    # the biases only move the masks (or pair orders): the Jacobian has no gradient w.r.t. them (None or zeros)
    assert any(float(g.abs().sum()) > 0 for g in grads[1][1])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    sigma_lin = jacobian_spectral_norm(h, x, n_iter=30, generator=torch.Generator().manual_seed(0),
                                       linearize=lambda t: net.jacobian_at(t, weights))
    sigma_ref = jacobian_spectral_norm(h, x, n_iter=30, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sigma_lin, sigma_ref, rtol=1e-4, atol=1e-6)
    # the linearised power iteration records no graph at all; autograd's holds one of h while it runs
    from molrecon.bench.saved import SavedTensorMeter

    for linearize, recorded in ((lambda t: net.jacobian_at(t, weights), False), (None, True)):
        with SavedTensorMeter() as meter:
            jacobian_spectral_norm(h, x, n_iter=2, linearize=linearize)
        assert (meter.peak_bytes > 0) == recorded
    block_lin, _ = jacobian_top_subspace(h, x, 2, n_iter=20, generator=torch.Generator().manual_seed(0),
                                         linearize=lambda t: net.jacobian_at(t, weights))
    block_ref, _ = jacobian_top_subspace(h, x, 2, n_iter=20, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(block_lin, block_ref, rtol=1e-4, atol=1e-6)
