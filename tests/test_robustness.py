"""Robustness measurements (molrecon.evaluate.robustness) and the `molrecon robustness` CLI, on tiny problems."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from molrecon.errors import InputError
from molrecon.evaluate import robustness as R
from molrecon.evaluate.robustness.report import FIGURE_LABELS
from molrecon.models import MOL
from molrecon.models.modl import MoDL
from molrecon.normalization import Normalization
from molrecon.physics import RandomMask, fft_centered, simulate_coil_maps

N, COILS = 32, 4


def _phantom(n: int = N) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    body = ((xx**2 / 0.6 + yy**2 / 0.8) < 0.7).float()
    img = body * (1 + 0.5 * (xx > 0.1).float() + 0.3 * ((xx + 0.3) ** 2 + yy**2 < 0.05).float())
    phase = torch.exp(1j * (0.5 * xx + 0.3 * yy))
    return (img / img.max() * phase).to(torch.complex64)[None]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These 32×32 problems gain nothing from threads, and two threads on a loaded 2-core machine were measured
    20× slower (spin-waiting): run this module single-threaded and restore the setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    maps = simulate_coil_maps((N, N), COILS)[None]
    target = _phantom()
    full = fft_centered(maps * target[:, None], (-2, -1))
    ex = R.remask_examples([full], [maps], [target], 4.0, seed=0)[0]
    return ex, full, maps, target


def _mol(constraint: str = "sn", seed: int = 0, **kw) -> MOL:
    torch.manual_seed(seed)
    return MOL(constraint=constraint, dims="2d", channels=8, layers=3, **kw).eval()


def test_project_ball_respects_norm_and_mask(problem):
    ex = problem[0]
    g = torch.Generator().manual_seed(1)
    d = torch.randn((3, COILS, N, N), generator=g, dtype=torch.complex64) * 5
    r = torch.tensor([0.1, 1.0, 1e6])
    p = R.project_ball(d, ex.physics.mask, r)
    n = torch.linalg.vector_norm(p.reshape(3, -1), dim=1)
    assert torch.all(n <= r * (1 + 1e-5))
    assert torch.allclose(n[:2], r[:2], rtol=1e-5)  # outside the ball: projected onto the sphere
    assert float((p * (1 - ex.physics.mask)).abs().max()) == 0.0
    # inside the ball and on the mask: unchanged
    inside = ex.physics.mask * d[2:]
    assert torch.allclose(R.project_ball(inside, ex.physics.mask, r[2:]), inside)
    rnd = R.random_perturbation((2, COILS, N, N), ex.physics.mask, torch.tensor([0.3, 2.0]), g)
    assert torch.allclose(torch.linalg.vector_norm(rnd.reshape(2, -1), dim=1), torch.tensor([0.3, 2.0]), rtol=1e-5)
    assert float((rnd * (1 - ex.physics.mask)).abs().max()) == 0.0


def test_attack_takes_the_exact_gradient_of_a_model_trained_jacobian_free(problem):
    """The attack's ascent direction is the implicit gradient whatever backward mode the model trained with: a
    Jacobian-free gradient of the solve would be a weaker attack on exactly the models that use it."""
    from molrecon.evaluate.robustness.attack import _objective

    ex = problem[0]
    delta = 0.01 * torch.randn(ex.y.shape, dtype=ex.y.dtype, generator=torch.Generator().manual_seed(0))
    delta = delta * ex.physics.mask
    x_ref, _ = R.reconstruct(_mol("sn"), ex.y, ex.physics, tol=1e-6, max_iter=300)
    grads = {}
    for mode in ("implicit", "jfb"):
        model = _mol("sn", backward=mode)
        grads[mode] = _objective(model, ex.y, ex.physics, delta, x_ref, True, 1e-6)[1]
        d = delta.clone().requires_grad_(True)
        x = model(ex.y + d, ex.physics, tol=1e-6)
        (own,) = torch.autograd.grad((x - x_ref).abs().pow(2).sum(), d)
        grads[mode + " own"] = own
    torch.testing.assert_close(grads["jfb"], grads["implicit"], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(grads["implicit own"], grads["implicit"], rtol=1e-4, atol=1e-8)
    rel = float((grads["jfb own"] - grads["implicit"]).norm() / grads["implicit"].norm())
    assert rel > 1e-3  # the model's own Jacobian-free gradient differs: the check above can fail
    with pytest.raises(InputError, match="backward"):
        _mol("sn")(ex.y, ex.physics, backward="exact")


def test_attack_beats_best_of_50_random_and_respects_constraints(problem):
    ex = problem[0]
    model = _mol("sn")
    eps = (0.02, 0.1)
    x_ref, _ = R.reconstruct(model, ex.y, ex.physics, tol=1e-6, max_iter=300)
    att = R.worst_case_perturbation(model, ex.y, ex.physics, eps, x_ref=x_ref, steps=6, seed=3)
    b = float(torch.linalg.vector_norm(R.measured_data(ex.y, ex.physics)))
    dn = torch.linalg.vector_norm(att.delta.reshape(len(eps), -1), dim=1)
    assert torch.all(dn <= torch.tensor(eps) * b * (1 + 1e-4))
    assert float((att.delta * (1 - ex.physics.mask)).abs().max()) == 0.0
    # the best-so-far objective never decreases (backtracking ascent)
    for h in att.history:
        assert all(h[i + 1] >= h[i] for i in range(len(h) - 1))
    # 50 random perturbations of the same norm, evaluated the same way (tight re-solve)
    gen = torch.Generator().manual_seed(11)
    for i, e in enumerate(eps):
        rad = torch.full((50,), e * b)
        deltas = R.random_perturbation((50, COILS, N, N), ex.physics.mask, rad, gen)
        rnd = R.measure_perturbations(model, ex.y, ex.physics, deltas, x_ref, None, ex.target, ex.max_value,
                                      tol=1e-6, max_iter=300)
        adv = R.measure_perturbations(model, ex.y, ex.physics, att.delta[i:i + 1], x_ref, None, ex.target,
                                      ex.max_value, tol=1e-6, max_iter=300)[0]
        best_random = max(r["dx_norm"] for r in rnd)
        assert adv["dx_norm"] >= best_random, (e, adv["dx_norm"], best_random)
        # and it is a real optimiser, not a lucky draw: clearly above the typical random perturbation
        assert adv["dx_norm"] > 1.5 * float(np.mean([r["dx_norm"] for r in rnd]))


@pytest.mark.parametrize("lam", [1.0, 100.0])
def test_mol_sn_amplification_within_certificate(problem, lam):
    ex = problem[0]
    model = _mol("sn", seed=2, lam=lam)
    cert = model.certificate(ex.physics)
    assert cert["certified"]
    C = cert["robustness_constant"]
    x_ref, info_ref = R.reconstruct(model, ex.y, ex.physics, tol=1e-6, max_iter=400)
    att = R.worst_case_perturbation(model, ex.y, ex.physics, (0.01, 0.1), x_ref=x_ref, steps=5, seed=0)
    meas = R.measure_perturbations(model, ex.y, ex.physics, att.delta, x_ref, info_ref, ex.target, ex.max_value,
                                   tol=1e-6, max_iter=400)
    for m in meas:
        assert m["amplification"] <= C
        assert m["amplification_high"] is not None and m["amplification_high"] <= C
        assert R.certificate_verdict(m["amplification"], m["amplification_low"], m["amplification_high"], C) \
            == "confirmed"
        # measured 0.40·C (λ=1) and 0.47·C (λ=100): the bound is not vacuous and the attack finds much of it
        assert m["amplification"] > 0.2 * C


def test_certificate_verdict_logic():
    assert R.certificate_verdict(1.0, 0.9, 1.1, 2.0) == "confirmed"
    assert R.certificate_verdict(3.0, 2.5, 3.5, 2.0) == "violated"
    assert R.certificate_verdict(1.9, 1.5, 2.3, 2.0) == "holds-measured"
    assert R.certificate_verdict(2.1, 1.5, 2.3, 2.0) == "exceeded-within-error"
    assert R.certificate_verdict(2.1, None, None, 2.0) == "violated"
    assert R.certificate_verdict(2.1, None, None, None) == "n/a"
    assert R.certificate_verdict(2.1, None, None, math.inf) == "n/a"


def test_uniqueness_spread_tiny_for_mol_sn(problem):
    ex = problem[0]
    u = R.uniqueness_study(_mol("sn"), ex.y, ex.physics, ex.target, ex.max_value, tol=1e-6, max_iter=400)
    assert u["applicable"] and set(u["starts"]) == {"zero", "adjoint", "noise", "cg-sense"}
    assert all(u["converged"].values())
    assert u["spread"] < 1e-3
    assert u["spread"] <= u["spread_bound"] + 1e-6
    assert R.uniqueness_study(MoDL(K=2, dims="2d", channels=4, layers=2), ex.y, ex.physics, ex.target,
                              ex.max_value)["applicable"] is False


def test_plain_iteration_matches_the_models_plain_solver(problem):
    ex = problem[0]
    model = _mol("sn")
    model.normalization = Normalization("none")  # plain_iteration runs the raw operator on ex.y
    ours = R.plain_iteration(model, ex.y, ex.physics, ex.target, ex.max_value, n_iter=8)
    with pytest.warns(RuntimeWarning):  # tol 0 never "converges": the warning is expected
        _, info = model.solve(ex.y, ex.physics, solver="plain", tol=0.0, max_iter=8)
    theirs = [float(r[0]) for r in info.residuals]
    assert len(ours["residual"]) == 8 and len(theirs) == 8
    # ours divides by ‖x_n‖, the solver by ‖T(x_n)‖: equal to first order once the iterates settle
    np.testing.assert_allclose(ours["residual"][2:], theirs[2:], rtol=0.05)
    assert model.solver == "anderson" and model.tol == 1e-4  # the overrides did not touch the model
    # MOL-SN contracts: the residual falls by orders of magnitude
    assert ours["residual"][-1] < 1e-2 * ours["residual"][0]
    modl = R.plain_iteration(MoDL(K=2, dims="2d", channels=4, layers=2), ex.y, ex.physics, ex.target,
                             ex.max_value, n_iter=5)
    assert len(modl["residual"]) == 5 and modl["start"] == "adjoint"


def test_run_robustness_and_report(problem, tmp_path):
    ex, full, maps, target = problem
    models = {"mol-sn": _mol("sn"), "modl": MoDL(K=2, dims="2d", channels=4, layers=2)}
    cfg = R.RobustnessConfig(eps=(0.01, 0.05), attack_steps=2, random_draws=2, conv_iters=10,
                             accelerations=(2.0,), noise_snr_db=(20.0,))
    shift = {2.0: R.remask_examples([full], [maps], [target], 2.0, seed=0)}
    res = R.run_robustness(models, [ex], cfg, shift_examples=shift, data_acceleration=4.0)
    assert res["verdicts"]["mol_sn_within_certificate"] is True
    assert "mol_more_robust_than_baselines" in res["verdicts"]
    row = res["attack"]["mol-sn"][0]
    assert row["certified"] and row["certificate_min"] > row["amplification_max"] > 0
    assert row["mask_leak_max"] == 0.0 and row["delta_over_radius_max"] <= 1 + 1e-4
    assert set(res["shift"]["mol-sn"]["acceleration"]) == {"data", "2"}
    # fewer samples → better PSNR for the reference
    sense = res["shift"]["sense (reference)"]["acceleration"]
    assert sense["2"]["psnr"] > sense["data"]["psnr"]
    paths = R.write_report(res, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert "machine" in data and "command" in data and "_images" not in data
    md = paths["markdown"].read_text()
    assert "MOL-SN measured amplification within its certificate" in md
    for name in ("amplification_vs_eps", "convergence", "adversarial_examples", "distribution_shift"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
        assert f"]({name}.png)" in md


def test_the_report_links_only_the_figures_it_wrote(problem, tmp_path):
    cfg = R.RobustnessConfig(eps=(0.01,), attack_steps=1, random_draws=1, parts=("attack",))
    res = R.run_robustness({"mol-sn": _mol("sn")}, [problem[0]], cfg)
    paths = R.write_report(res, tmp_path / "rep")
    md = paths["markdown"].read_text()
    written = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert "convergence.png" not in written and "distribution_shift.png" not in written
    assert sorted(n for n in FIGURE_LABELS if f"]({n})" in md) == written
    assert sorted(json.loads(paths["json"].read_text())["figures"]) == written


def test_bad_inputs(problem):
    ex = problem[0]
    with pytest.raises(InputError):
        R.RobustnessConfig(eps=(-0.1,)).validate()
    with pytest.raises(InputError):
        R.RobustnessConfig(parts=("attack", "nonsense")).validate()
    with pytest.raises(InputError):
        R.run_robustness({}, [ex])
    with pytest.raises(InputError):
        R.run_robustness({"m": _mol()}, [])


def _write_tiny_data(folder, full, maps, target):
    from molrecon.io import write_h5_atomic

    mask = RandomMask(0.08, 4)((N, N), seed=0)[0].numpy()
    write_h5_atomic(folder / "tiny.h5", {"kspace": full.numpy(), "maps": maps.numpy(), "target": target.numpy(),
                                         "mask": mask.astype(np.float32)},
                    {"dims": "2d", "target_max": float(target.abs().max())})


def test_cli_on_two_tiny_checkpoints(problem, tmp_path, capsys):
    from molrecon.cli import main
    from molrecon.weights.checkpoint import save_checkpoint

    _, full, maps, target = problem
    data = tmp_path / "data"
    data.mkdir()
    _write_tiny_data(data, full, maps, target)
    specs = []
    for name, model in (("sn", _mol("sn")), ("modl", MoDL(K=2, dims="2d", channels=4, layers=2))):
        path = tmp_path / f"{name}.pt"
        config = {"method": model.method_name, **model.config()}
        save_checkpoint(path, {"model_state": model.state_dict(), "model_config": config})
        specs.append(str(path))
    out = tmp_path / "out"
    rc = main(["robustness", "--models", ",".join(specs), "--data", str(data), "--slices", "1",
               "--eps", "0.01,0.05", "--attack-steps", "2", "--random-draws", "2", "--conv-iters", "8",
               "--accels", "2", "--noise-snr", "20", "--quiet", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "robustness.json").read_text())
    assert set(res["attack"]) == {"sn", "modl"}
    assert res["models"]["sn"]["method"] == "mol-sn" and res["models"]["sn"]["source"].startswith("checkpoint:")
    assert res["verdicts"]["mol_sn_within_certificate"] is True
    assert abs(res["data_acceleration"] - 4.0) < 1.0
    assert res["machine"]["cpu_count"] and isinstance(res["command"], str)
    assert res["psnr_definition"].startswith("whole-image")
    assert "PSNR: whole-image" in (out / "robustness.md").read_text()
    for f in ("robustness.md", "amplification_vs_eps.png", "convergence.png", "adversarial_examples.png",
              "distribution_shift.png"):
        assert (out / f).stat().st_size > 0
    assert not list(out.glob(".*.tmp"))
    # bad input: a clear one-line error and exit code 2
    assert main(["robustness", "--models", specs[0], "--data", str(data), "--eps", "0.01,abc",
                 "--out", str(tmp_path / "bad")]) == 2
    assert main(["robustness", "--models", str(tmp_path / "missing.pt"), "--data", str(data),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--eps" in err


def test_a_failing_model_is_reported_not_fatal(problem):
    ex = problem[0]

    class Diverging(torch.nn.Module):
        method_name = "deq"

        def solve(self, y, physics, x0=None, **overrides):
            raise InputError("MOL (deq): the reconstruction contains NaN/Inf (diverged)")

        def forward(self, y, physics, **overrides):
            return self.solve(y, physics)[0]

    cfg = R.RobustnessConfig(eps=(0.01,), attack_steps=1, random_draws=1, conv_iters=3,
                             parts=("attack", "random", "uniqueness"))
    res = R.run_robustness({"deq": Diverging(), "mol-sn": _mol("sn")}, [ex], cfg)
    assert "diverged" in res["errors"]["deq"][0]
    assert res["attack"]["mol-sn"][0]["amplification_max"] > 0
    assert "## Failures" in R.markdown_report(res)


def test_attack_and_its_figure_on_a_volume(tmp_path):
    """3D data (and 2D+time, the same shapes): the attack runs on the volume, the figure shows its central plane."""
    from molrecon.physics import MultiCoilMRI, mask_for

    shape = (6, 12, 12)
    g = torch.Generator().manual_seed(0)
    physics = MultiCoilMRI(simulate_coil_maps(shape, 2, dims="3d")[None],
                           mask_for("3d", 2.0)(shape, seed=0, dims="3d"), dims="3d")
    target = torch.randn((1, *shape), generator=g, dtype=torch.complex64)
    ex = R.Example(y=physics.A(target), physics=physics, target=target, max_value=float(target.abs().max()),
                   name="volume")
    torch.manual_seed(0)
    models = {"modl": MoDL(K=2, dims="3d", channels=4, layers=2)}
    res = R.run_robustness(models, [ex], R.RobustnessConfig(eps=(0.01,), attack_steps=2, parts=("attack",)))
    assert res["attack"]["modl"][0]["amplification_max"] > 0
    images = res["_images"]["modl"]
    assert images["clean"].shape == images["difference"].shape == images["target"].shape == shape[1:]
    np.testing.assert_allclose(images["target"], target[0, shape[0] // 2].abs().numpy())
    paths = R.write_report(res, tmp_path / "rep")
    assert paths["adversarial_examples"].read_bytes()[:4] == b"\x89PNG"


def test_default_models_follow_the_kind_of_data():
    from molrecon.commands.robustness import DEFAULT_MODELS, default_models

    assert default_models("2d") == default_models("radial") == DEFAULT_MODELS
    assert set(default_models("3d").split(",")) == {"modl-3d-4x", "mol-lr-3d-4x", "mol-sn-3d-4x"}
    assert set(default_models("dynamic").split(",")) == {"modl-2dt-4x", "mol-lr-2dt-4x", "mol-sn-2dt-4x"}
    assert all(n.endswith("-2dt-radial") for n in default_models("radial-dynamic").split(","))
