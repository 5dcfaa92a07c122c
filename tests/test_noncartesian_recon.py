"""The classical methods on the NUFFT operator, the non-Cartesian HDF5 layout, and ``molrecon recon`` on it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import sigpy
import torch

from _tiny_models import TINY_MODL, tiny_model, write_checkpoint
from molrecon.cli import main
from molrecon.formats import detect_format, load_problem, read_problem
from molrecon.formats.noncartesian import problem_from_arrays, to_bart_noncartesian, write_noncartesian
from molrecon.metrics import psnr
from molrecon.physics import (
    LinearPhysics,
    MultiCoilMRI,
    NonCartesianMRI,
    RandomMask,
    golden_angle_dynamic,
    radial_trajectory,
    simulate_coil_maps,
)
from molrecon.recon import (
    DEFAULT_LAM,
    DEFAULT_LAM_NONCARTESIAN,
    cg_sense,
    cs_tv,
    cs_wavelet,
    default_lam,
    reconstruct,
    zero_filled,
)

N = 32


def phantom(n: int = N) -> torch.Tensor:
    return torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))[None]


def radial_problem(spokes: int = 20, n: int = N, coils: int = 4, noise: float = 0.0):
    traj = radial_trajectory(spokes, 2 * n, image_size=n)
    physics = NonCartesianMRI(simulate_coil_maps((n, n), coils)[None], traj)
    x = phantom(n)
    y = physics.A(x)
    if noise:
        g = torch.Generator().manual_seed(0)
        y = y + noise * float(y.abs().mean()) * torch.randn(y.shape, generator=g, dtype=torch.complex64)
    return x, y, physics, traj


class ProtocolOnly(LinearPhysics):
    """The NUFFT operator behind the bare protocol: no ``mask``, ``maps`` or ``gridding`` to read (its
    ``zero_filled``, a protocol method, is the inner operator's)."""

    def __init__(self, inner: NonCartesianMRI) -> None:
        self._inner, self.dims = inner, inner.dims

    spatial_shape = property(lambda self: self._inner.spatial_shape)

    def A(self, x):
        return self._inner.A(x)

    def A_adjoint(self, y):
        return self._inner.A_adjoint(y)

    def normal(self, x):
        return self._inner.normal(x)

    def zero_filled(self, y):
        return self._inner.zero_filled(y)

    def norm_bound(self):
        return self._inner.norm_bound()

    def check_image(self, x, what="image"):
        self._inner.check_image(x, what)

    def check_kspace(self, y, what="k-space"):
        self._inner.check_kspace(y, what)

    def subset(self, index):
        return ProtocolOnly(self._inner.subset(index))

    def to(self, device):
        return ProtocolOnly(self._inner.to(device))

    def sampling_weights(self):
        return self._inner.sampling_weights()

    def sigpy_linop(self, b=0):
        return self._inner.sigpy_linop(b)


def test_zero_filled_is_gridding_and_has_the_image_scale():
    x, y, physics, _ = radial_problem(spokes=64)
    zf = zero_filled(y, physics)
    torch.testing.assert_close(zf, physics.gridding(y))
    # density compensated: the scale of the image (a plain adjoint is ~‖A‖² too bright)
    assert 0.7 < float(zf.abs().max() / x.abs().max()) < 1.3
    assert float(physics.A_adjoint(y).abs().max() / x.abs().max()) > 5


def test_sense_nearly_inverts_a_well_sampled_radial_problem():
    # a smooth object: its spectrum lies inside the sampled disk (a sharp phantom's corners of k-space do not)
    _, _, physics, _ = radial_problem(spokes=64)
    r = torch.arange(N) - N // 2
    x = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (N / 8) ** 2)).to(torch.complex64)[None]
    xs = cg_sense(physics.A(x), physics, lam=0.0, max_iter=100, tol=1e-9)
    assert float((xs - x).norm() / x.norm()) < 1e-2


def test_methods_beat_gridding_on_undersampled_radial():
    x, y, physics, _ = radial_problem(spokes=16, noise=0.02)
    p = {m: psnr(reconstruct(m, y, physics)[0].abs().numpy(), x[0].abs().numpy())
         for m in ("zero-filled", "sense", "cs-wavelet", "cs-tv")}
    assert p["sense"] > p["zero-filled"] + 1, p
    assert p["cs-wavelet"] > p["zero-filled"] + 1, p
    assert p["cs-tv"] > p["zero-filled"] + 1, p


@pytest.mark.parametrize("method", ["sense", "cs-wavelet", "cs-tv"])
def test_operator_only_path_is_scale_invariant_and_reads_no_maps(method):
    _, y, physics, _ = radial_problem(spokes=16)
    bare = ProtocolOnly(physics)
    lam = default_lam(method, physics)
    kw = {"lam": lam, "max_iter": 20}
    ref = reconstruct(method, y, physics, **kw)
    torch.testing.assert_close(reconstruct(method, y, bare, **kw), ref, rtol=1e-5, atol=1e-6)
    scaled = reconstruct(method, 1e-5 * y, physics, **kw)
    assert float((scaled - 1e-5 * ref).norm() / (1e-5 * ref).norm()) < 1e-2  # float32 rounding of c·y


def test_lam_defaults_per_operator_and_weight_convention():
    _, y, physics, _ = radial_problem(spokes=16)
    cart = MultiCoilMRI(simulate_coil_maps((N, N), 4)[None], RandomMask(0.08, 4)((N, N), seed=0))
    for m in ("sense", "cs-wavelet", "cs-tv"):
        assert default_lam(m, physics) == DEFAULT_LAM_NONCARTESIAN[m]
        assert default_lam(m, cart) == DEFAULT_LAM[m]
    assert default_lam("zero-filled", physics) is None
    # CG-SENSE's lam is that of A/‖A‖: the same image as the system AᴴA + lam·‖A‖² I
    from molrecon.solvers import conjugate_gradient

    lam, L = 1e-3, physics.norm_bound() ** 2
    ours = cg_sense(y, physics, lam=lam, max_iter=60, tol=1e-9)
    direct, _ = conjugate_gradient(lambda v: physics.normal(v) + lam * L * v, physics.A_adjoint(y), max_iter=60,
                                   tol=1e-9)
    assert float((ours - direct).norm() / ours.norm()) < 1e-3
    plain, _ = conjugate_gradient(lambda v: physics.normal(v) + lam * v, physics.A_adjoint(y), max_iter=60, tol=1e-9)
    assert float((ours - plain).norm() / ours.norm()) > 1e-2


def test_cartesian_defaults_unchanged_bit_for_bit():
    n = 24
    P = MultiCoilMRI(simulate_coil_maps((n, n), 4)[None], RandomMask(0.08, 4)((n, n), seed=0))
    y = P.A(phantom(n))
    assert torch.equal(cg_sense(y, P), cg_sense(y, P, lam=3e-4))
    # sigpy's apps start their power iteration from numpy's global generator: seed it for each call
    for fn, lam in ((cs_wavelet, 3e-4), (cs_tv, 2e-2)):
        np.random.seed(0)
        default = fn(y, P, max_iter=5)
        np.random.seed(0)
        assert torch.equal(default, fn(y, P, lam=lam, max_iter=5))


# -- the file layout -----------------------------------------------------------------------------------------
def write_radial(path, spokes=16, n=N, coils=4, maps=True, per_slice=False, slices=1, dcf=False):
    traj = radial_trajectory(spokes, 2 * n, image_size=n)
    physics = NonCartesianMRI(simulate_coil_maps((n, n), coils)[None], traj)
    y = torch.cat([physics.A(phantom(n) * (s + 1)) for s in range(slices)]).numpy()
    t = np.stack([traj.numpy()] * slices) if per_slice else traj.numpy()
    w = physics.density().numpy() if dcf else None
    prob = problem_from_arrays(y, t, (n, n), "2d", maps=physics.maps.numpy() if maps else None, dcf=w)
    return write_noncartesian(path, prob), physics, y


def test_layout_round_trip_and_detection(tmp_path):
    path, physics, y = write_radial(tmp_path / "r.h5", per_slice=True, slices=2, dcf=True)
    assert detect_format(path) == "noncartesian"
    prob = read_problem(path)
    assert prob.is_noncartesian and prob.dims == "2d" and prob.matrix == (N, N)
    np.testing.assert_array_equal(prob.kspace, y)
    assert prob.trajectory.shape == (2, y.shape[-1], 2) and prob.dcf.shape == (y.shape[-1],)
    np.testing.assert_array_equal(prob.maps, physics.maps.numpy())
    # convert keeps it non-Cartesian, bit for bit
    assert main(["convert", str(path), str(tmp_path / "c.h5")]) == 0
    again = read_problem(tmp_path / "c.h5")
    np.testing.assert_array_equal(again.kspace, y)
    np.testing.assert_array_equal(again.trajectory, prob.trajectory)
    assert main(["convert", str(path), str(tmp_path / "c.mrd")]) == 2


def test_dynamic_layout(tmp_path):
    n, frames = 24, 3
    traj = golden_angle_dynamic(frames, 6, 2 * n, image_size=n)
    maps = simulate_coil_maps((frames, n, n), 3, dims="2d+t")[None]
    physics = NonCartesianMRI(maps, traj, dims="2d+t")
    y = physics.A(phantom(n).expand(frames, n, n)[None].contiguous()).numpy()
    write_noncartesian(tmp_path / "d.h5", problem_from_arrays(y, traj.numpy(), (n, n), "2d+t"))
    kspace, est, _, dims, prob = load_problem(tmp_path / "d.h5", calib_width=12)
    assert dims == "2d+t" and tuple(est.shape) == (1, 3, frames, n, n) and prob.trajectory.shape == traj.shape


def test_builtin_radial_files_are_read_as_noncartesian(tmp_path):
    from molrecon.data.builtin import ensure_builtin

    folder = ensure_builtin("radial") / "val"
    f = sorted(folder.glob("*.h5"))[0]
    prob = read_problem(f)
    assert prob.is_noncartesian and prob.matrix == (128, 128) and prob.maps.shape[1:] == (8, 128, 128)


def test_bart_layout():
    traj = radial_trajectory(3, 8, image_size=8)
    k = np.arange(2 * 24).reshape(2, 24).astype(np.complex64)
    ksp, t = to_bart_noncartesian(k, traj.numpy(), readout=8)
    assert ksp.shape == (1, 8, 3, 2) and t.shape == (3, 8, 3)
    assert ksp[0, 5, 2, 1] == k[1, 2 * 8 + 5] and t[1, 5, 2] == traj[2 * 8 + 5, 1]


# -- the CLI -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["zero-filled", "sense", "cs-wavelet", "cs-tv"])
def test_recon_cli_runs_every_classical_method(tmp_path, method):
    # the file carries the dcf, so gridding uses it rather than recomputing Pipe–Menon (the slow part)
    path, physics, y = write_radial(tmp_path / "r.h5", spokes=20, dcf=method == "zero-filled")
    out = tmp_path / "x.h5"
    assert main(["recon", "--input", str(path), "--method", method, "--out", str(out), "--max-iter", "30"]
                if method != "zero-filled" else ["recon", "--input", str(path), "--method", method, "--out",
                                                 str(out)]) == 0
    with h5py.File(out) as f:
        x = f["reconstruction_complex"][()]
        if method != "zero-filled":
            assert f.attrs["lam"] == DEFAULT_LAM_NONCARTESIAN[method]
    expected = reconstruct(method, torch.from_numpy(y), physics, **({} if method == "zero-filled" else
                                                                     {"max_iter": 30}))
    np.testing.assert_allclose(x, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_recon_cli_estimates_maps_and_writes_cfl(tmp_path):
    path, physics, y = write_radial(tmp_path / "r.h5", spokes=32, maps=False)
    assert main(["recon", "--input", str(path), "--method", "sense", "--out", str(tmp_path / "x.cfl"),
                 "--calib-width", "16"]) == 0
    from molrecon.formats import read_cfl

    x = np.asarray(read_cfl(tmp_path / "x.cfl"))
    truth = phantom()[0].abs().numpy()
    assert psnr(np.abs(x), truth) > psnr(zero_filled(torch.from_numpy(y), physics)[0].abs().numpy(), truth)


def test_recon_cli_runs_a_learned_model_on_radial(tmp_path):
    path, _, _ = write_radial(tmp_path / "r.h5", spokes=16)
    ckpt = write_checkpoint(tmp_path / "modl.pt", tiny_model(TINY_MODL))
    assert main(["recon", "--input", str(path), "--method", "modl", "--checkpoint", str(ckpt), "--out",
                 str(tmp_path / "x.h5")]) == 0
    with h5py.File(tmp_path / "x.h5") as f:
        x = f["reconstruction_complex"][()]
    assert x.shape == (1, N, N) and np.isfinite(x).all()
