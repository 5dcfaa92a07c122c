"""Backward modes of the fixed-point layer (solvers/backward.py): exact gradients where they are known, and the
default (implicit) path of MOL unchanged bit for bit."""

from __future__ import annotations

import pytest
import torch

from molrecon.errors import InputError
from molrecon.models import MOL
from molrecon.models.factory import build_model
from molrecon.normalization import Normalization
from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
from molrecon.solvers.backward import BACKWARD_MODES, attach_backward, register_backward
from molrecon.solvers.implicit import attach_implicit_backward
from molrecon.train.config import validate_config


def _linear_toy(n: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64):
    """T(x) = W x + b with ‖W‖ = 0.7: x* = (I - W)^{-1} b, and for ℓ = <c, x*>, dℓ/db = (I - W)^{-T} c."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = (0.7 * W / torch.linalg.matrix_norm(W, ord=2)).to(dtype)
    b = torch.randn(1, n, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    c = torch.randn(1, n, generator=g, dtype=torch.float64).to(dtype)
    eye = torch.eye(n, dtype=dtype)
    x_star = torch.linalg.solve(eye - W, b.detach()[0])[None]

    def step(x: torch.Tensor) -> torch.Tensor:
        return x @ W.T + b

    return W, b, c, x_star, step, eye


def _grad(mode: str, dtype: torch.dtype = torch.float64, **options) -> tuple[torch.Tensor, tuple]:
    W, b, c, x_star, step, eye = _linear_toy(dtype=dtype)
    out = attach_backward(mode, step, x_star, **options)
    (gb,) = torch.autograd.grad((out * c).sum(), b)
    return gb, (W, c, eye)


def test_implicit_mode_is_the_exact_gradient_of_the_fixed_point():
    # the fixed-point solvers work in single precision
    gb, (W, c, eye) = _grad("implicit", dtype=torch.float32, solver="plain", max_iter=500, tol=1e-7)
    exact = torch.linalg.solve((eye - W).double().T, c[0].double())[None]
    torch.testing.assert_close(gb.double(), exact, rtol=2e-6, atol=1e-7)


def test_jfb_is_v_through_one_step():
    gb, (_, c, _) = _grad("jfb")
    torch.testing.assert_close(gb, c, rtol=0, atol=0)  # ∂T/∂b = I, g = v = c


@pytest.mark.parametrize("steps,damping", [(1, 1.0), (3, 0.5), (4, 0.3)])
def test_phantom_is_the_truncated_damped_neumann_series(steps, damping):
    gb, (W, c, eye) = _grad("phantom", steps=steps, damping=damping)
    B = (1 - damping) * eye + damping * W.T
    expected = damping * sum(torch.linalg.matrix_power(B, i) @ c[0] for i in range(steps))
    torch.testing.assert_close(gb, expected[None], rtol=1e-12, atol=1e-13)


def test_phantom_with_many_steps_tends_to_implicit():
    W, _, c, _, _, eye = _linear_toy()
    exact = torch.linalg.solve((eye - W).T, c[0])[None]
    errs = []
    for steps in (2, 10, 60):
        gb, _ = _grad("phantom", steps=steps, damping=0.8)
        errs.append(float((gb - exact).norm() / exact.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8, errs


def test_phantom_one_undamped_step_is_jfb():
    a, _ = _grad("phantom", steps=1, damping=1.0)
    b, _ = _grad("jfb")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_registry_and_bad_options():
    assert {"implicit", "jfb", "phantom"} <= set(BACKWARD_MODES)
    _, _, _, x_star, step, _ = _linear_toy()
    with pytest.raises(InputError, match="unknown backward mode"):
        attach_backward("nope", step, x_star)
    with pytest.raises(InputError, match="takes no option"):
        attach_backward("jfb", step, x_star, steps=3)
    with pytest.raises(InputError, match="damping"):
        attach_backward("phantom", step, x_star, damping=0.0)

    @register_backward("_test_twice", ("scale",))
    def twice(step, x_star, scale=2.0):
        return scale * step(x_star.detach())

    try:
        W, b, c, x_star, step, _ = _linear_toy()
        out = attach_backward("_test_twice", step, x_star, scale=3.0)
        (gb,) = torch.autograd.grad((out * c).sum(), b)
        torch.testing.assert_close(gb, 3.0 * c)
    finally:
        from molrecon.solvers.backward import BACKWARD_OPTIONS
        BACKWARD_MODES.pop("_test_twice")
        BACKWARD_OPTIONS.pop("_test_twice")


# ------------------------------------------------------------------------------------------------ MOL
def _mol_problem(n: int = 16, coils: int = 3):
    maps = simulate_coil_maps((n, n), coils)[None]
    physics = MultiCoilMRI(maps, RandomMask(0.08, 3.0)((n, n), seed=0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, n, n), generator=g, dtype=torch.complex64)
    return physics, physics.A(x), torch.randn((1, n, n), generator=g, dtype=torch.complex64)


def _mol(**kw) -> MOL:
    torch.manual_seed(0)
    model = MOL(constraint="sn", dims="2d", channels=8, layers=3, lam=10.0, tol=1e-6, max_iter=200, **kw)
    with torch.no_grad():
        for conv in model.denoiser.convs:
            conv.weight.mul_(3.0)
    model.normalization = Normalization("none")
    return model.eval()


def _param_grads(model: MOL, physics, y, tgt) -> list[torch.Tensor]:
    out = model(y, physics)
    return list(torch.autograd.grad((out - tgt).abs().pow(2).sum(), list(model.parameters())))


def test_mol_default_backward_is_the_previous_implicit_path_bit_for_bit():
    physics, y, tgt = _mol_problem()
    model = _mol()
    assert model.backward == "implicit" and model.config()["backward"] == "implicit"
    got = _param_grads(model, physics, y, tgt)

    # the path of MOL.forward, spelled out: the no-grad solve, then one recorded exact block
    weights = model._weights((16, 16))
    x_star, _ = model._run(y, physics, None, weights, model._settings({}), exact_output=False)
    x_in = x_star.detach().requires_grad_(True)
    mu = model.alpha * model.lam
    out = model._block(x_in, weights, physics.A_adjoint(y), physics, mu, exact=True, where="ref")
    out = attach_implicit_backward(out, x_in, solver=model.solver, max_iter=model.max_iter, tol=model.tol / 10,
                                   m=model.anderson_m)
    ref = torch.autograd.grad((out - tgt).abs().pow(2).sum(), list(model.parameters()))
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_mol_phantom_tends_to_implicit_and_jfb_differs():
    physics, y, tgt = _mol_problem()
    imp = torch.cat([g.flatten() for g in _param_grads(_mol(), physics, y, tgt)])
    pha = torch.cat([g.flatten() for g in _param_grads(_mol(backward="phantom", backward_steps=40,
                                                            backward_damping=1.0), physics, y, tgt)])
    jfb = torch.cat([g.flatten() for g in _param_grads(_mol(backward="jfb"), physics, y, tgt)])
    assert float((pha - imp).norm() / imp.norm()) < 1e-3
    assert float((jfb - imp).norm() / imp.norm()) > 1e-3  # not the exact gradient: the check above can fail


def test_capped_inner_cg_keeps_the_adjoint_fixed_point_with_less_cg_work(monkeypatch):
    """``backward_cg_iter``: a few warm-started CG steps per DC backward inside the adjoint solve reach the same
    gradient (the exact adjoint fixed point) with fewer CG iterations in all; the final backward still solves to
    the tolerance."""
    import molrecon.solvers.implicit as implicit

    physics, y, tgt = _mol_problem()
    work: list[int] = []
    cg = implicit.conjugate_gradient

    def counted(*args, **kwargs):
        x, info = cg(*args, **kwargs)
        work.append(int(info.iterations.max()))
        return x, info

    monkeypatch.setattr(implicit, "conjugate_gradient", counted)
    grads, totals = {}, {}
    for budget in (None, 3):
        model = _mol(backward_cg_iter=budget)
        out = model(y, physics)  # the forward's CG runs outside DCSolve's backward: not counted below
        work.clear()
        grads[budget] = torch.cat([g.flatten() for g in torch.autograd.grad(
            (out - tgt).abs().pow(2).sum(), list(model.parameters()))])
        totals[budget] = sum(work)
        assert model.last_backward_info.all_converged
    assert max(work[:-1]) <= 3, work  # capped inside the adjoint solve (the last, into the parameters, is not)
    assert totals[3] < 0.8 * totals[None], totals
    err = float((grads[3] - grads[None]).norm() / grads[None].norm())
    assert err < 1e-4, err
    assert _mol(backward_cg_iter=3).config()["backward_cg_iter"] == 3


def test_backward_config_key_and_old_configs():
    cfg = validate_config({"model": {"method": "mol-lr", "backward": "phantom", "backward_steps": 3,
                                     "backward_damping": 0.5}})
    assert build_model({**cfg["model"], "dims": "2d", "channels": 4, "layers": 2}).backward == "phantom"
    old = build_model({"method": "mol-sn", "dims": "2d", "channels": 4, "layers": 2})  # a config from before
    assert old.backward == "implicit"
    from molrecon.weights.pretrained import load_pretrained

    shipped = load_pretrained("mol-lr-2d-radial")  # trained with the implicit backward
    assert shipped.backward == "implicit" and shipped.config()["backward"] == "implicit"
    assert shipped.backward_cg_iter is None  # DC backwards solved to the tolerance, as before the key
    assert load_pretrained("mol-sn-2d-4x").backward == "jfb"  # trained and stored with the key
    assert load_pretrained("mol-lr-2d-4x").backward == "jfb"
    for bad, match in [({"backward": "exact"}, "model.backward"), ({"backward_steps": 0}, "backward_steps"),
                       ({"backward_damping": 1.5}, "backward_damping"), ({"backward_cg_iter": 0}, "backward_cg_iter")]:
        with pytest.raises(InputError, match=match):
            validate_config({"model": {"method": "mol-lr", **bad}})
    with pytest.raises(InputError, match="fixed-point methods"):
        validate_config({"model": {"method": "modl", "backward": "jfb"}})
    with pytest.raises(InputError, match="backward"):
        MOL(constraint="sn", backward="nope")


# ------------------------------------------------------------------------------------------ bench gradient
def test_bench_gradient_rows():
    from molrecon.bench.gradient import gradient_errors, gradient_markdown, parse_mode, summarize_gradient

    assert parse_mode("phantom@steps=3,damping=0.5") == ("phantom", {"backward_steps": 3, "backward_damping": 0.5})
    assert parse_mode("implicit@tol=1e-3") == ("implicit", {"backward_tol": 1e-3})
    assert parse_mode("implicit@cg_iter=8") == ("implicit", {"backward_cg_iter": 8})
    for bad in ("exact", "jfb@steps=2", "phantom@k=2", "implicit@steps=2"):
        with pytest.raises(InputError):
            parse_mode(bad)
    physics, y, tgt = _mol_problem()
    model = _mol()
    model.tol = 1e-4
    rows = gradient_errors(model, [(y, physics, tgt, tgt.abs().amax())],
                           ["implicit", "jfb", "phantom@steps=30,damping=1.0"], label="tiny")
    by = {r["mode"]: r for r in rows}
    assert by["implicit"]["rel_error"] < 1e-3 and by["implicit"]["cosine"] > 0.9999
    assert by["phantom@steps=30,damping=1.0"]["rel_error"] < by["jfb"]["rel_error"]
    assert by["jfb"]["cosine"] < by["implicit"]["cosine"]
    assert model.backward == "implicit"  # the benchmark leaves the model as it found it
    md = gradient_markdown({"summary": summarize_gradient(rows), "reference": "r", "slices": 1, "threads": 1})
    assert "| tiny | jfb |" in md
    assert by["jfb"]["adjoint_iterations"] is None and by["implicit"]["adjoint_iterations"] >= 1


def test_bench_gradient_cli_refuses_unknown_model(tmp_path, capsys):
    from molrecon.cli import main

    assert main(["bench", "gradient", "--pretrained", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "not shipped" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
