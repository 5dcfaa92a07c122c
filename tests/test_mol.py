"""Tests for MOL: CNN prior, SN/LR constraints, fixed-point solvers, implicit backward, certificates."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from molrecon.errors import ConvergenceError, InputError
from molrecon.models import MOL, ConvDenoiser
from molrecon.models.cnn import conv_operator_norm_bound, conv_power_iteration
from molrecon.models.lipschitz import adversarial_lipschitz, jacobian_spectral_norm, lipschitz_barrier
from molrecon.normalization import Normalization
from molrecon.physics import MultiCoilMRI, RandomMask, mask_for, simulate_coil_maps
from molrecon.solvers import conjugate_gradient, fixed_point_solve

torch.set_num_threads(1)


def _norm(x: torch.Tensor) -> float:
    return float(x.abs().pow(2).sum().sqrt())


def _problem(n: int = 16, coils: int = 3, batch: int = 1, seed: int = 0, accel: float = 3.0):
    maps = simulate_coil_maps((n, n), coils)[None]
    mask = RandomMask(0.08, accel)((n, n), seed=seed)
    physics = MultiCoilMRI(maps, mask)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    img = ((xx ** 2 / 0.6 + yy ** 2 / 0.8) < 0.7).float() + 0.5 * (((xx - 0.2) ** 2 + yy ** 2) < 0.1).float()
    x = (img * torch.exp(1j * xx)).to(torch.complex64)[None].repeat(batch, 1, 1)
    x = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.complex64)
    return physics, physics.A(x), x


def _model(constraint: str = "sn", gain: float = 3.0, seed: int = 0, **kw) -> MOL:
    torch.manual_seed(seed)
    kw.setdefault("channels", 8)
    kw.setdefault("layers", 3)
    model = MOL(constraint=constraint, dims=kw.pop("dims", "2d"), **kw)
    with torch.no_grad():  # random weights with a gain: SN clamps are active, LR nets are far from trivial
        for conv in model.denoiser.convs:
            conv.weight.mul_(gain)
    return model.eval()


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("constraint,gain", [("sn", 3.0), ("lr", 1.5)])
def test_implicit_gradients_match_unrolled(constraint, gain):
    physics, y, _ = _problem()
    model = _model(constraint, gain, lam=10.0, tol=1e-7, max_iter=200, cg_tol=1e-7, backward_tol=1e-6)
    model.normalization = Normalization("none")  # the reference below unrolls the raw operator
    yr = y.clone().requires_grad_(True)
    out = model(yr, physics)
    tgt = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    params = list(model.parameters())
    g_imp = torch.autograd.grad((out - tgt).abs().pow(2).sum(), params + [yr])
    assert model.last_backward_info is not None and model.last_backward_info.extra["fallback"] == "none" or \
        float(model.last_backward_info.extra["best_residual"].max()) < 1e-5

    # reference: autograd through a long unrolled forward with exact CG (graph of every CG iteration kept)
    weights = model.denoiser.effective_weights((16, 16))
    mu = model.alpha * model.lam
    aty = physics.A_adjoint(yr)
    xk = model.initial_image(y, physics)
    for _ in range(60):
        rhs = (1 - model.alpha) * xk + model.alpha * model.denoiser.apply(xk, weights) + mu * aty
        xk, _ = conjugate_gradient(lambda v: v + mu * physics.normal(v), rhs, max_iter=60, tol=1e-7)
    g_ref = torch.autograd.grad((xk - tgt).abs().pow(2).sum(), params + [yr])
    names = [n for n, _ in model.named_parameters()] + ["y"]
    assert "log_lam" in names  # the gradient for λ is among those checked
    for name, a, b in zip(names, g_imp, g_ref):
        rel = _norm(a - b) / max(_norm(b), 1e-30)
        assert rel < 1e-3, f"{constraint}: gradient of {name} differs by {rel:.2e}"


# ------------------------------------------------------------------------------------------ theory bounds
def test_uniqueness_and_certified_contraction_sn():
    physics, y, _ = _problem()
    model = _model("sn", 3.0, tol=1e-6, max_iter=300, cg_iter=100, cg_tol=1e-7, solver="plain")
    cert = model.certificate(physics)
    assert cert["certified"] and cert["L"] <= model.lipschitz_target + 1e-6
    c = cert["contraction"]
    assert c < 1
    g = torch.Generator().manual_seed(5)
    far = 30.0 * torch.randn((1, 16, 16), generator=g, dtype=torch.complex64)
    x1, i1 = model.solve(y, physics)
    x2, i2 = model.solve(y, physics, x0=far)
    assert i1.all_converged and i2.all_converged
    assert _norm(x1 - x2) / _norm(x1) < 1e-4
    # the exact block contracts at least as fast as certified: ‖x_{k+1} − x_k‖ ≤ c‖x_k − x_{k−1}‖
    weights = model.denoiser.effective_weights((16, 16))
    mu, aty = model.alpha * model.lam.detach(), physics.A_adjoint(y)
    with torch.no_grad():
        xs = [far]
        for _ in range(8):
            xs.append(model._block(xs[-1], weights, aty, physics, mu, exact=True))
        steps = [_norm(b - a) for a, b in zip(xs[:-1], xs[1:])]
    for s0, s1 in zip(steps[:-1], steps[1:]):
        assert s1 <= c * s0 * (1 + 1e-4) + 1e-6 * _norm(x1)


def test_monotonicity_of_F_sn():
    model = _model("sn", 3.0)
    h = model.denoiser
    m = 1 - h.certified_lipschitz((16, 16))
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        a = torch.randn((2, 16, 16), generator=g, dtype=torch.complex64)
        b = a + 0.3 * torch.randn((2, 16, 16), generator=g, dtype=torch.complex64)
        with torch.no_grad():
            d = a - b
            fd = d - (h(a) - h(b))
        inner = float((d.conj() * fd).real.sum())
        assert inner >= m * _norm(d) ** 2 * (1 - 1e-5)


def test_sn_training_power_iteration_runs_on_a_capped_grid_close_to_the_image_norm():
    """The training-mode power iteration keeps one vector per layer on at most ``POWER_ITERATION_GRID`` points per
    axis (an image-sized vector per layer would be kept for the whole training); the norm it converges to is
    within 1 % of the converged norm on the image's own grid, and below the certified bound there."""
    from molrecon.models.cnn import POWER_ITERATION_GRID

    torch.manual_seed(0)
    n = POWER_ITERATION_GRID + 16
    h = ConvDenoiser(dims="2d", channels=4, layers=2, spectral_norm=True, lipschitz_target=0.9, power_iter=1)
    h.train()
    for _ in range(60):
        sigmas = h.layer_sigmas((n, 20))
    state = h.extra_training_state()
    assert [tuple(e["u"].shape[2:]) for e in state] == [(POWER_ITERATION_GRID, 20)] * 2
    g = torch.Generator().manual_seed(1)
    for conv, sigma in zip(h.convs, sigmas):
        w = conv.weight.detach()
        full, _ = conv_power_iteration(w, torch.randn((1, w.shape[1], n, 20), generator=g), n_iter=200)
        assert abs(float(sigma) / float(full) - 1) < 0.01
        assert float(sigma) <= float(conv_operator_norm_bound(w, (n, 20)))
    restored = ConvDenoiser(dims="2d", channels=4, layers=2, spectral_norm=True, lipschitz_target=0.9)
    restored.load_state_dict(h.state_dict())
    restored.load_extra_training_state(state)
    restored.train()
    assert [float(s) for s in restored.layer_sigmas((n, 20))] == [float(s) for s in h.layer_sigmas((n, 20))]


def test_sn_jacobian_norm_never_exceeds_certified_bound():
    torch.manual_seed(0)
    h = ConvDenoiser(dims="2d", channels=8, layers=3, spectral_norm=True, lipschitz_target=0.9)
    with torch.no_grad():
        for conv in h.convs:
            conv.weight.mul_(4.0)
    g = torch.Generator().manual_seed(0)
    for mode in ("train", "eval"):
        h.train(mode == "train")
        weights = h.effective_weights((16, 16))
        bound = h.certified_lipschitz((16, 16), weights)
        if mode == "eval":
            assert bound <= 0.9 * (1 + 1e-5)
        for _ in range(3):
            x = 3 * torch.randn((2, 16, 16), generator=g, dtype=torch.complex64)
            est = jacobian_spectral_norm(lambda v, w=weights: h.apply(v, w), x, n_iter=30, generator=g)
            assert float(est.max()) <= bound * (1 + 1e-4)
    # the circular-embedding bound is an upper bound of the converged power iteration on the padded conv
    w = h.convs[1].weight.detach()
    sigma, _ = conv_power_iteration(w, torch.randn((1, 8, 16, 16), generator=g), n_iter=300)
    assert float(sigma) <= float(conv_operator_norm_bound(w, (16, 16)))
    assert float(sigma) >= 0.97 * float(conv_operator_norm_bound(w, (16, 16)))


def test_anderson_same_fixed_point_fewer_iterations():
    physics, y, _ = _problem(n=24, batch=2)
    kw = dict(alpha=0.3, tol=1e-5, max_iter=400, cg_iter=30)
    xp, ip = _model("sn", 3.0, solver="plain", **kw).solve(y, physics)
    xa, ia = _model("sn", 3.0, solver="anderson", **kw).solve(y, physics)
    assert ip.all_converged and ia.all_converged
    assert _norm(xp - xa) / _norm(xp) < 1e-3
    assert int(ia.iterations.max()) < int(ip.iterations.min())


def test_public_fixed_point_map_is_what_the_solver_iterates():
    physics, y, _ = _problem(n=16, batch=2)
    model = _model("sn", 3.0, solver="plain", tol=1e-6, max_iter=800, cg_iter=20)
    x_star, info = model.solve(y, physics)
    assert info.all_converged
    T = model.fixed_point_map(y, physics)
    assert _norm(T(x_star) - x_star) / _norm(x_star) < 1e-4
    # iterating the map by hand from the model's start image walks the solver's path
    x = model.initial_image(y, physics)
    with pytest.warns(RuntimeWarning):  # tol 0 is never reached
        _, plain = model.solve(y, physics, max_iter=5, tol=0.0, strict=False)
    for k in range(5):
        with torch.no_grad():
            fx = T(x)
        step = float(((fx - x).abs().pow(2).sum(dim=(1, 2)).sqrt() / fx.abs().pow(2).sum(dim=(1, 2)).sqrt())[0])
        assert step == pytest.approx(float(plain.residuals[k][0]), rel=1e-3, abs=1e-6)
        x = fx


def test_solve_overrides_apply_to_one_call_only():
    physics, y, _ = _problem(n=16)
    model = _model("lr", 1.0, tol=1e-4, max_iter=50, solver="anderson")
    with pytest.warns(RuntimeWarning):
        _, info = model.solve(y, physics, max_iter=3, tol=0.0, solver="plain")
    assert int(info.iterations.max()) == 3 and not info.all_converged
    assert (model.max_iter, model.tol, model.solver) == (50, 1e-4, "anderson")
    with pytest.raises(ConvergenceError):
        model.solve(y, physics, max_iter=2, tol=0.0, strict=True)
    with pytest.raises(InputError, match="not solver settings"):
        model.solve(y, physics, alpha=0.5)


def test_inexact_warm_started_dc_has_the_exact_blocks_fixed_point():
    # each block's CG starts at the current iterate, so at a fixed point its residual is zero: 2 CG steps per
    # block and a near-exact DC reach the same answer (only the path between them differs)
    physics, y, _ = _problem(n=24, batch=2)
    answers = {}
    for cg_iter in (2, 5, 60):
        x, info = _model("sn", 3.0, solver="plain", tol=1e-5, max_iter=2000, cg_iter=cg_iter,
                         cg_tol=1e-8).solve(y, physics)
        assert info.all_converged, cg_iter
        answers[cg_iter] = x
    for cg_iter in (2, 5):
        assert _norm(answers[cg_iter] - answers[60]) / _norm(answers[60]) < 1e-4, cg_iter


def test_cg_forcing_keeps_the_fixed_point_and_saves_data_consistency_work():
    # the forcing term only stops each block's warm-started CG earlier: at a fixed point the start solves the
    # block's system, so the answer is the same; near it a block costs a few steps instead of cg_iter
    physics, y, _ = _problem(n=24, batch=2)
    calls = {"n": 0}
    normal = physics.normal

    def counted(v):
        calls["n"] += 1
        return normal(v)

    physics.normal = counted
    model = _model("sn", 3.0, tol=1e-5, max_iter=300, cg_iter=30, cg_tol=1e-8)
    answers = {}
    for forcing in (None, 0.2):
        x, info = model.solve(y, physics, cg_forcing=forcing)
        assert info.all_converged, forcing
        answers[forcing] = x
    x_star = answers[None]
    assert _norm(answers[0.2] - x_star) / _norm(x_star) < 1e-4
    near = x_star + 1e-3 * _norm(x_star) / x_star.numel() ** 0.5 * torch.randn(
        x_star.shape, dtype=x_star.dtype, generator=torch.Generator().manual_seed(1))
    work = {}
    for forcing in (None, 0.2):
        T = model.fixed_point_map(y, physics, cg_forcing=forcing)
        calls["n"] = 0
        with torch.no_grad():
            T(near)
        work[forcing] = calls["n"]
    assert work[0.2] < 0.5 * work[None]
    # a per-call 0 turns off the forcing a model ships with: the same work as a model without it
    shipped = _model("sn", 3.0, tol=1e-5, max_iter=300, cg_iter=30, cg_tol=1e-8, cg_forcing=0.2)
    shipped.load_state_dict(model.state_dict())
    T = shipped.fixed_point_map(y, physics, cg_forcing=0)
    calls["n"] = 0
    with torch.no_grad():
        T(near)
    assert calls["n"] == work[None]
    assert model.cg_forcing is None and _model("sn", cg_forcing=0.2).config()["cg_forcing"] == 0.2
    assert _model("sn", cg_forcing=0).cg_forcing is None
    with pytest.raises(InputError, match="cg_forcing"):
        _model("sn", cg_forcing=1.5)


def test_a_posteriori_error_bound_holds():
    physics, y, _ = _problem()
    ref, _ = _model("sn", 3.0, tol=1e-7, max_iter=300, cg_iter=50, cg_tol=1e-7).solve(y, physics)
    loose = _model("sn", 3.0, tol=3e-2, max_iter=300, solver="plain", cg_tol=1e-7)
    x, info = loose.solve(y, physics)
    assert info.extra["bound_certified"]
    err = _norm(x - ref)
    bound = float(info.extra["error_bound"][0])
    assert err <= bound * 1.01 + 1e-5 * _norm(ref)
    assert bound < 0.5 * _norm(ref)  # and it is informative


def test_robustness_constant_holds():
    physics, y, _ = _problem()
    model = _model("sn", 3.0, tol=1e-7, max_iter=300, cg_iter=50, cg_tol=1e-7, lam=50.0)
    cert = model.certificate(physics)
    g = torch.Generator().manual_seed(4)
    noise = 0.05 * torch.randn(y.shape, generator=g, dtype=torch.complex64) * physics.mask
    x1, _ = model.solve(y, physics)
    x2, _ = model.solve(y + noise, physics)
    assert _norm(x1 - x2) <= cert["robustness_constant"] * _norm(noise)
    assert cert["robustness_constant"] == pytest.approx(min(50.0 * cert["norm_A_bound"] / cert["m"],
                                                            0.5 * math.sqrt(50.0 / cert["m"])), rel=1e-3)


# ------------------------------------------------------------------------------------------ constraints
def test_lr_certificate_and_penalty():
    physics, y, _ = _problem()
    model = _model("lr", 1.5, tol=1e-5)
    x, _ = model.solve(y, physics)
    cert = model.certificate(physics)
    assert cert["certified"] is False and cert["L"] > 0 and "estimate" in cert["estimator"]
    model.train()
    loss, logs = model.extra_loss(x)
    assert loss.requires_grad and float(loss) != 0 and "lipschitz" in logs
    loss.backward()
    assert model.denoiser.convs[0].weight.grad is not None
    # SN / DEQ: no penalty
    z, logs_sn = _model("sn").extra_loss(x)
    assert float(z) == 0 and logs_sn == {}
    assert _model("none").method_name == "deq" and model.method_name == "mol-lr"


def test_lipschitz_estimators_lower_bound_true_constant():
    # linear H = 0.7·I on real/imag: every estimator must find 0.7
    h = lambda v: 0.7 * v  # noqa: E731
    x = torch.randn((2, 8, 8), dtype=torch.complex64)
    assert torch.allclose(adversarial_lipschitz(h, x), torch.full((2,), 0.7), atol=1e-4)
    assert torch.allclose(jacobian_spectral_norm(h, x, n_iter=5), torch.full((2,), 0.7), atol=1e-4)


def test_barrier_is_continuous_and_increasing():
    T, e = 0.98, 1e-3
    lips = torch.tensor([0.5, 0.9, T - e - 1e-7, T - e, T - e + 1e-7, 1.2, 2.0])
    b = lipschitz_barrier(lips, T, e)
    assert torch.isfinite(b).all() and (b[1:] >= b[:-1]).all()
    assert abs(float(b[2] - b[3])) < 1e-3 and abs(float(b[3] - b[4])) < 1e-3


# ------------------------------------------------------------------------------------------ solvers
def test_per_sample_stopping():
    rates = torch.tensor([0.1, 0.9])
    calls = []

    def f(xs, idx):
        calls.append(idx.tolist())
        return rates[idx].reshape(-1, 1) * xs + 1.0

    x, info = fixed_point_solve(f, torch.zeros(2, 4), solver="plain", max_iter=500, tol=1e-6)
    assert info.all_converged
    assert int(info.iterations[0]) < int(info.iterations[1])
    assert [1] in calls  # the converged sample is no longer evaluated
    assert torch.allclose(x, (1 / (1 - rates)).reshape(-1, 1).expand(2, 4), rtol=1e-5)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs():
    physics, y, _ = _problem()
    model = _model("sn")
    bad = y.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="k-space"):
        model(bad, physics)
    with pytest.raises(InputError):
        model(y[:, :2], physics)  # wrong number of coils
    with pytest.raises(InputError):
        model(y.abs(), physics)  # real k-space
    with pytest.raises(InputError, match="dims"):
        _model("sn", dims="3d")(y, physics)
    broken = _model("sn")
    with torch.no_grad():
        broken.denoiser.convs[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="convs.0.weight"):
        broken.solve(y, physics)
    with pytest.raises(InputError):
        MOL(constraint="foo")
    # non-converged: warning with the residual, or ConvergenceError under strict
    slow = _model("sn", 3.0, alpha=0.05, max_iter=3, tol=1e-8)
    with pytest.warns(RuntimeWarning, match="relative change"):
        slow.solve(y, physics)
    strict = _model("sn", 3.0, alpha=0.05, max_iter=3, tol=1e-8, strict=True)
    with pytest.raises(ConvergenceError):
        strict.solve(y, physics)


# ------------------------------------------------------------------------------------------ dims / API
@pytest.mark.parametrize("dims", ["3d", "2d+t"])
def test_forward_3d_and_2dt(dims):
    shape = (6, 12, 12)
    maps = simulate_coil_maps(shape, 2, dims=dims)[None]
    mask = mask_for(dims, 3.0, kind="variable-density")(shape, seed=0, dims=dims)
    physics = MultiCoilMRI(maps, mask, dims=dims)
    x = torch.randn((1, *shape), dtype=torch.complex64)
    y = physics.A(x)
    model = MOL(constraint="sn", channels=4, layers=3, max_iter=20).train()  # lazy build from physics.dims
    out = model(y, physics)
    assert out.shape == x.shape and model.denoiser.dims == dims and model.denoiser.nd == 3
    out.abs().pow(2).sum().backward()
    assert model.denoiser.convs[0].weight.grad is not None and model.log_lam.grad is not None
    assert "error_bound" in model.last_info.extra


def test_config_rebuilds_model_and_state_dict():
    model = _model("lr", channels=4, layers=3)
    cfg = model.config()
    import json

    clone = MOL(**json.loads(json.dumps(cfg)))
    clone.load_state_dict(model.state_dict())
    physics, y, _ = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, _ = model.solve(y, physics)
        b, _ = clone.eval().solve(y, physics)
    assert torch.allclose(a, b)
    assert set(MOL(dims="2d", channels=4, layers=2).certificate(physics)) >= {
        "m", "L", "alpha_range", "contraction", "robustness_constant", "certified"}


@pytest.mark.slow
def test_training_step_memory_independent_of_iterations():
    from molrecon.bench import measure_step_memory

    kw = dict(shape=(96, 96), channels=32, layers=5, coils=4)
    peaks = []
    for it in (10, 40):
        # tol=0 with min_iter forces exactly `it` forward iterations
        r = measure_step_memory("mol-sn", max_iter=it, model_kwargs={"tol": 0.0, "min_iter": it,
                                                                     "solver": "plain", "backward_max_iter": 20},
                                repeats=3, **kw)
        assert r["forward_iterations"] == [it]
        peaks.append(r["peak_bytes"])
    assert min(peaks) > 0
    # fresh-process medians; the step's own peak (one recorded block + adjoint solve) does not grow with it
    assert abs(peaks[0] - peaks[1]) / max(peaks) < 0.15, peaks


def test_lr_clip_rescales_the_cnn_to_the_clip_level():
    """MOL-LR safeguard: for a bias-free ReLU CNN, scaling the weights scales the local Jacobian exactly."""
    from molrecon.models import ConvDenoiser
    from molrecon.models.lipschitz import jacobian_spectral_norm

    torch.manual_seed(0)
    den = ConvDenoiser(dims="2d", channels=8, layers=3, bias=False)
    for conv in den.convs:
        conv.weight.data.mul_(3.0)
    model = MOL(denoiser=den, constraint="lr", lr_clip=0.9)
    x = torch.randn(1, 16, 16, dtype=torch.complex64)
    g = torch.Generator().manual_seed(1)
    before = float(jacobian_spectral_norm(den, x, n_iter=50, generator=g)[0])
    assert before > 1.0
    scale = model.enforce_lipschitz(before)
    after = float(jacobian_spectral_norm(den, x, n_iter=50, generator=torch.Generator().manual_seed(1))[0])
    assert abs(scale ** 3 * before - 0.9) < 1e-5
    assert abs(after - 0.9) < 1e-3
    assert model.enforce_lipschitz(0.5) == 1.0  # below the clip: untouched
    assert MOL(denoiser=den, constraint="sn").enforce_lipschitz(5.0) == 1.0  # only for MOL-LR
