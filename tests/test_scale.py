"""Scale invariance: every reconstruction is equivariant in the k-space scale (``docs/conventions.md``, "Scale").

Real k-space comes in arbitrary units (fastMRI ~1e-6 … 1e-3) while the shipped models were trained at
max|target| = 1; without normalisation the learned methods fell to −2.5 dB at ×1e-3.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import molrecon
from molrecon.cli import main
from molrecon.data import builtin_test_example, default_root
from molrecon.errors import InputError
from molrecon.metrics import psnr
from molrecon.normalization import (
    DEFAULT_REFERENCE,
    Normalization,
    default_normalization,
    model_normalization,
)
from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
from molrecon.recon import reconstruct
from molrecon.weights.pretrained import PRETRAINED_DIR

SCALES = [1e-8, 1e8]


def _db(x: torch.Tensor, target: torch.Tensor) -> float:
    t = target.abs().numpy()
    return psnr(x.abs().numpy(), t, data_range=float(t.max()))


@pytest.fixture(scope="module")
def example():
    return builtin_test_example(0)


TINY = {"mol-sn": {"method": "mol-sn"}, "mol-lr": {"method": "mol-lr"}, "deq": {"method": "deq"},
        "modl": {"method": "modl", "K": 2, "cg_iter": 5}}


def _tiny(method: str):
    from molrecon.models import build_model

    torch.manual_seed(0)
    extra = {} if method == "modl" else {"max_iter": 10}
    return build_model({**TINY[method], "dims": "2d", "channels": 4, "layers": 2, **extra}).eval()


def _check_equivariant(model, y, physics, target, scales=SCALES) -> None:
    with torch.no_grad():
        ref = model(y, physics)
        c1 = model.last_info.extra["kspace_scale"]
        base = _db(ref, target)
        for s in scales:
            x = model(y * s, physics) / s
            assert abs(_db(x, target) - base) <= 0.1, s
            # the same image, not only the same score
            assert float((x - ref).abs().max() / ref.abs().max()) < 1e-3, s
            assert torch.allclose(model.last_info.extra["kspace_scale"] * s, c1, rtol=1e-4)


@pytest.mark.parametrize("method", list(TINY))
def test_every_family_is_equivariant_over_1e8(method):
    """The normalisation wraps the public entry points, so this holds whatever the weights."""
    y, physics, img = _phantom()
    _check_equivariant(_tiny(method), y, physics, img)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mol-lr-2d-4x", "mol-sn-2d-4x", "deq-2d-4x", "modl-2d-4x"])
def test_shipped_models_are_equivariant_over_1e8(example, name):
    y, physics, target = example
    _check_equivariant(molrecon.load_pretrained(name), y, physics, target)


def test_mol_solve_scales_the_error_bound_and_a_start_image():
    y, physics, _ = _phantom()
    model = _tiny("mol-sn")
    x1, info1 = model.solve(y, physics)
    s = 1e6
    xs, infos = model.solve(y * s, physics, x0=x1 * s)
    assert torch.allclose(xs / s, x1, rtol=1e-3, atol=1e-3 * float(x1.abs().max()))
    assert torch.allclose(infos.extra["error_bound"], info1.extra["error_bound"] * s, rtol=0.5)
    assert torch.allclose(infos.extra["kspace_scale"] * s, info1.extra["kspace_scale"], rtol=1e-4)


def _scaled_copy(src, dst, s: float) -> None:
    with h5py.File(src) as f, h5py.File(dst, "w") as g:
        for key in f:
            data = f[key][()]
            g.create_dataset(key, data=data * np.complex64(s) if key == "kspace" else data)
        for k, v in f.attrs.items():
            g.attrs[k] = v


@pytest.mark.parametrize("method,name", [("mol-lr", "mol-lr-2d-4x"), ("modl", "modl-2d-4x"),
                                         ("mol-sn", "mol-sn-2d-4x")])
def test_recon_psnr_agrees_at_1e_minus6_1_1e6(tmp_path, capsys, method, name):
    src = sorted((default_root() / "2d" / "test").glob("*.h5"))[0]
    with h5py.File(src) as f:
        target = np.abs(f["target"][()])
    scores, scales = {}, {}
    for s in (1e-6, 1.0, 1e6):
        inp, out = tmp_path / f"in_{s:g}.h5", tmp_path / f"out_{s:g}.h5"
        _scaled_copy(src, inp, s)
        rc = main(["recon", "--method", method, "--pretrained", name, "--input", str(inp), "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        with h5py.File(out) as f:
            rec = f["reconstruction"][()] / s
            scales[s] = f.attrs["kspace_scale"] * s
            assert f.attrs["normalization_statistic"] == "p99-zero-filled"
        scores[s] = psnr(rec, target, data_range=float(target.max()))
    assert max(scores.values()) - min(scores.values()) <= 0.1, scores
    assert scores[1.0] > 20, scores  # and the image is a reconstruction, not noise
    np.testing.assert_allclose(scales[1e-6], scales[1.0], rtol=1e-4)
    np.testing.assert_allclose(scales[1e6], scales[1.0], rtol=1e-4)


def _phantom(n: int = 32):
    import sigpy

    img = torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))[None]
    maps = simulate_coil_maps((n, n), 4)[None]
    mask = RandomMask(0.16, 3)((n, n), seed=0)
    physics = MultiCoilMRI(maps, mask)
    return physics.A(img), physics, img


@pytest.mark.parametrize("method", ["sense", "cs-wavelet", "cs-tv"])
def test_classical_lambda_is_relative_to_the_data(method):
    y, physics, img = _phantom()
    kw = {"max_iter": 30}
    ref = reconstruct(method, y, physics, **kw)
    for s in (1e-30, 1e-6, 1e6, 1e18):  # 1e-30 and 1e18 gave all-zero images before
        x = reconstruct(method, y * s, physics, **kw) / s
        assert torch.isfinite(x).all()
        assert abs(_db(x, img) - _db(ref, img)) <= 0.1, (method, s)


def test_normalization_values_are_checked_and_carried_by_the_sidecars():
    with pytest.raises(InputError, match="positive finite"):
        Normalization(reference=float("nan"))
    with pytest.raises(InputError, match="unknown normalisation statistic"):
        Normalization(statistic="mean-of-nothing")
    with pytest.raises(InputError, match="side.json"):
        Normalization.from_dict({"statistic": "p99-zero-filled"}, where="side.json")
    for path in sorted(PRETRAINED_DIR.glob("*.json")):
        meta = json.loads(path.read_text())
        norm = Normalization.from_dict(meta["normalization"])
        assert norm == default_normalization(meta["dims"]), path.name
    model = molrecon.load_pretrained("modl-3d-4x")  # the SHA-256 check passes: the weights are unchanged
    assert model.normalization.reference == DEFAULT_REFERENCE["3d"]


def test_built_in_training_scale_is_left_nearly_unchanged(example):
    y, physics, _ = example
    c = default_normalization("2d").factors(y, physics)
    assert 0.5 < float(c) < 2.0  # the shipped models see their training scale, give or take a slice's spread
    zero = default_normalization("2d").factors(torch.zeros_like(y), physics)
    assert float(zero) == 1.0  # no signal: nothing to normalise, no division by zero


def test_a_model_trained_after_the_change_sees_normalised_data(example):
    """The trainer calls ``model(y, physics)``: normalisation is part of the trained function too."""
    from molrecon.models import build_model

    y, physics, _ = example
    model = build_model({"method": "modl", "K": 1, "dims": "2d", "channels": 4, "layers": 2, "cg_iter": 2})
    x = model(y * 1e-5, physics)
    x.abs().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.allclose(model(y, physics).detach(), x.detach() / 1e-5, rtol=1e-3,
                          atol=1e-3 * float(x.detach().abs().max() / 1e-5))


def test_a_checkpoint_without_a_recorded_normalization_uses_the_default_of_its_dims():
    from molrecon.models import build_model

    model = build_model({"method": "mol-lr", "dims": "2d+t", "channels": 4, "layers": 2})
    y, physics, _ = _phantom()
    assert model_normalization(model, physics) == default_normalization("2d+t")
