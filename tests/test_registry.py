"""The one registry of methods: a method registered in one call is built, loaded and run by every path
(``molrecon recon``, ``molrecon evaluate``), and every registered method builds, loads and runs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from molrecon import names, recon
from molrecon.cli import main
from molrecon.data.builtin import ensure_builtin
from molrecon.errors import InputError
from molrecon.evaluate.evaluation import evaluate, load_dataset, resolve_methods
from molrecon.evaluate.methods import run
from molrecon.models.factory import build_method, model_config, register_model, unregister_model
from molrecon.physics import MultiCoilMRI, mask_for, simulate_coil_maps
from molrecon.weights.checkpoint import save_checkpoint
from molrecon.weights.loading import resolve_model
from molrecon.weights.pretrained import available_names, pretrained_name

SHIPPED = set(available_names())


def _problem(seed: int = 0, shape=(24, 24)):
    g = torch.Generator().manual_seed(seed)
    maps = simulate_coil_maps(shape, 3)[None]
    mask = mask_for("2d", 4.0)(shape, seed=seed, dims="2d")
    physics = MultiCoilMRI(maps, mask, dims="2d")
    target = torch.zeros((1, *shape), dtype=torch.complex64)
    target[:, 6:18, 5:19] = 1 + 0.1 * torch.randn((12, 14), generator=g)
    return target, physics.A(target), physics


def _first_2d():
    return sorted((ensure_builtin("2d") / "test").glob("*.h5"))[0]


def _halved_zero_filled(y, physics, lam=0.5):
    return lam * physics.A_adjoint(y)


class ToyNet(nn.Module):
    """A learned method in one class: a gain on the zero-filled image."""

    method_name = "toy-net"

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, y, physics):
        return self.gain * physics.A_adjoint(y)

    def config(self):
        return {"gain": 1.0}


@pytest.fixture
def toy_classical():
    recon.register_classical("toy-zf", _halved_zero_filled, label="Toy", lam=0.5)
    try:
        yield "toy-zf"
    finally:
        recon.unregister_classical("toy-zf")


@pytest.fixture
def toy_learned():
    register_model("toy-net", ToyNet, label="Toy net")
    try:
        yield "toy-net"
    finally:
        unregister_model("toy-net")


def test_a_classical_method_registered_once_runs_from_evaluate_and_recon(toy_classical, tmp_path):
    assert toy_classical in names.CLASSICAL_METHODS and toy_classical in names.METHOD_ORDER
    assert names.display_name(toy_classical) == "Toy"
    target, y, physics = _problem()
    x, info = run(toy_classical, y, physics)  # its default lam, 0.5
    assert info is None and torch.equal(x, 0.5 * physics.A_adjoint(y))
    x2, _ = run(toy_classical, y, physics, lam=2.0)
    assert torch.allclose(x2, 4 * x)

    # evaluate: the registered name resolves to a runner; the scores are those of the image it returns
    runners = resolve_methods([toy_classical, "zero-filled"])
    assert [r.name for r in runners] == ["zero-filled", toy_classical]  # registry order: after the shipped ones
    data = load_dataset(None, "2d", "test", acceleration=4.0)
    res = evaluate(runners, data, max_slices=1, progress=False)
    assert res["methods"][toy_classical]["params"] == {"lam": 0.5}
    halved = res["example"]["images"][toy_classical]
    assert np.allclose(halved, 0.5 * res["example"]["images"]["zero-filled"], rtol=1e-5, atol=1e-7)

    # recon: the command accepts the name and writes the method's image
    src, out_toy, out_zf = _first_2d(), tmp_path / "toy.h5", tmp_path / "zf.h5"
    assert main(["recon", "--method", toy_classical, "--input", str(src), "--out", str(out_toy)]) == 0
    assert main(["recon", "--method", "zero-filled", "--input", str(src), "--out", str(out_zf)]) == 0
    with h5py.File(out_toy) as a, h5py.File(out_zf) as b:
        assert a.attrs["method"] == toy_classical and float(a.attrs["lam"]) == 0.5
        np.testing.assert_allclose(a["reconstruction_complex"][()], 0.5 * b["reconstruction_complex"][()],
                                   rtol=1e-5, atol=1e-7)


def test_an_unregistered_method_is_unknown_everywhere(tmp_path):
    recon.register_classical("toy-gone", _halved_zero_filled)
    recon.unregister_classical("toy-gone")
    _, y, physics = _problem()
    assert "toy-gone" not in names.CLASSICAL_METHODS and "toy-gone" not in names.METHODS
    with pytest.raises(InputError, match="unknown classical method"):
        run("toy-gone", y, physics)
    with pytest.raises(InputError, match="unknown method"):
        resolve_methods(["toy-gone"])
    with pytest.raises(SystemExit):  # argparse's choices: exit code 2
        main(["recon", "--method", "toy-gone", "--input", str(_first_2d()), "--out", str(tmp_path / "o.h5")])
    with pytest.raises(ValueError, match="shipped"):
        names.unregister_method("sense")


def test_a_learned_method_registered_once_loads_and_runs_from_evaluate_and_recon(toy_learned, tmp_path):
    assert toy_learned in names.LEARNED_METHODS and toy_learned not in names.FIXED_POINT_METHODS
    model = build_method(toy_learned)
    assert isinstance(model, ToyNet)
    with torch.no_grad():
        model.gain.fill_(0.25)
    ck = save_checkpoint(tmp_path / "toy.pt", {"model_state": model.state_dict(),
                                                "model_config": model_config(model), "step": 1})
    choice = resolve_model(ck)  # a path: the checkpoint, with its weights
    assert choice.method == toy_learned and choice.source == f"checkpoint:{ck}" and choice.label == "toy"
    assert float(choice.model.gain) == 0.25
    with pytest.raises(InputError, match="fixed-point"):  # overrides are checked before anything runs
        resolve_model(ck, overrides={"max_iter": 3})

    runners = resolve_methods(["zero-filled"], checkpoints=[ck])
    data = load_dataset(None, "2d", "test", acceleration=4.0)
    res = evaluate(runners, data, max_slices=1, progress=False)
    assert res["methods"][toy_learned]["source"] == f"checkpoint:{ck}"
    assert np.allclose(res["example"]["images"][toy_learned], 0.25 * res["example"]["images"]["zero-filled"],
                       rtol=1e-5, atol=1e-7)

    out = tmp_path / "toy.h5"
    assert main(["recon", "--method", toy_learned, "--checkpoint", str(ck), "--input", str(_first_2d()),
                 "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f.attrs["method"] == toy_learned and np.isfinite(f["reconstruction_complex"][()]).all()


@pytest.mark.filterwarnings("ignore:MOL .* forward did not converge")  # a few iterations on purpose
@pytest.mark.parametrize("method", names.SHIPPED_METHODS)
def test_every_method_is_built_loaded_and_run_on_a_tiny_problem(method, tmp_path):
    target, y, physics = _problem(1)
    spec = names.METHODS[method]
    if spec.family == "classical":
        x, _ = run(method, y, physics, max_iter=None if method == "zero-filled" else 20)
        assert x.shape == target.shape and torch.isfinite(torch.view_as_real(x)).all()
        zf_err = float((physics.A_adjoint(y) - target).norm())
        assert float((x - target).norm()) <= zf_err * (1 + 1e-6)  # no worse than its zero-filled start
        return
    small = {"max_iter": 4} if spec.fixed_point else {}
    model = resolve_model(config={**model_config(build_method(method, dims="2d", channels=4, layers=2)),
                                  **small}, seed=3).model
    x, info = run(model, y, physics)
    assert x.shape == target.shape and torch.isfinite(torch.view_as_real(x)).all()
    assert (info is not None) == spec.fixed_point or method == "modl"
    # loaded from a checkpoint it is the same model: same reconstruction
    ck = save_checkpoint(tmp_path / "m.pt", {"model_state": model.state_dict(), "model_config": model_config(model),
                                              "step": 0})
    loaded = resolve_model(checkpoint=ck, method=method)
    assert torch.equal(run(loaded.model, y, physics)[0], x)
    name = pretrained_name(method)
    if name not in SHIPPED:
        return
    shipped = resolve_model(method, overrides={"max_iter": 3} if spec.fixed_point else None)
    assert shipped.source == f"pretrained:{name}" and shipped.method == method
    xs, _ = run(shipped.model, y, physics, **shipped.overrides)
    assert xs.shape == target.shape and torch.isfinite(torch.view_as_real(xs)).all()
