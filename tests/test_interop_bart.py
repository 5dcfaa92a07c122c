"""Against BART itself (Debian/Ubuntu: ``apt-get install bart``): molrecon's CG-SENSE on BART's phantom with
BART's maps equals ``bart pics -l2``, on 2D radial data it equals ``bart pics -l2 -t traj`` (the weight matched
as in :mod:`molrecon.bench.bart_radial`), BART's centred FFT and NUFFT equal ours, and BART reads our CFL files.

Skipped, with the reason, on machines without the ``bart`` command.
"""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from molrecon.cli import main
from molrecon.formats import read_cfl, write_cfl
from molrecon.physics import fft_centered

pytestmark = [pytest.mark.bart,
              pytest.mark.skipif(shutil.which("bart") is None, reason="needs BART's `bart` command "
                                 "(apt-get install bart)")]


def bart(*args, cwd):
    subprocess.run(["bart", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin:/usr/local/bin"})


@pytest.mark.parametrize("lam", [0.01, 0.1])
def test_sense_matches_bart_pics_l2(tmp_path, capsys, lam):
    bart("phantom", "-x", 64, "-k", "-s", 8, "phantom", cwd=tmp_path)
    bart("ecalib", "-m1", "phantom", "maps", cwd=tmp_path)
    bart("upat", "-Y", 64, "-Z", 1, "-y", 2, "-z", 1, "-c", 8, "pattern", cwd=tmp_path)
    bart("fmac", "phantom", "pattern", "under", cwd=tmp_path)
    # -S undoes pics' data scaling; for l2 the scaling cancels anyway, so -r is molrecon's --lam (docs/formats.md)
    bart("pics", "-l2", "-r", lam, "-S", "under", "maps", "ref", cwd=tmp_path)
    for name in ("phantom", "under"):  # both: the fully sampled phantom and its 2x undersampled copy
        out = tmp_path / f"x_{name}.cfl"
        if name == "phantom":
            bart("pics", "-l2", "-r", lam, "-S", "phantom", "maps", "ref_phantom", cwd=tmp_path)
        rc = main(["recon", "--method", "sense", "--input", str(tmp_path / f"{name}.cfl"), "--maps",
                   str(tmp_path / "maps.cfl"), "--out", str(out), "--lam", str(lam)])
        assert rc == 0, capsys.readouterr().err
        ref = read_cfl(tmp_path / ("ref" if name == "under" else "ref_phantom"))
        x = read_cfl(out)
        assert x.shape == ref.shape == (64, 64)
        assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-3


@pytest.mark.parametrize("shape", [(8, 6), (7, 5), (9, 4)])
def test_bart_fft_equals_our_centred_fft(tmp_path, shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    write_cfl(tmp_path / "x", x)
    bart("fft", "-u", 3, "x", "k", cwd=tmp_path)
    ours = fft_centered(torch.from_numpy(x), (0, 1)).numpy()
    np.testing.assert_allclose(read_cfl(tmp_path / "k"), ours, atol=1e-5)


def test_bart_reads_our_cfl(tmp_path):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 4, 1, 3)) + 1j * rng.standard_normal((5, 4, 1, 3))).astype(np.complex64)
    write_cfl(tmp_path / "x", x)
    bart("scale", 2, "x", "y", cwd=tmp_path)
    np.testing.assert_allclose(read_cfl(tmp_path / "y"), 2 * x, rtol=1e-6)


def _radial_slice(n=128, coils=8, spokes=32):
    import sigpy

    from molrecon.physics import NonCartesianMRI, radial_trajectory, simulate_coil_maps

    traj = radial_trajectory(spokes, 2 * n, image_size=n)
    maps = simulate_coil_maps((n, n), coils)[None]
    x = torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))[None]
    y = NonCartesianMRI(maps, traj, oversampling=2.5, numpoints=8).A(x)
    g = torch.Generator().manual_seed(0)
    y = y + 0.01 * float(y.abs().mean()) * torch.randn(y.shape, generator=g, dtype=torch.complex64)
    return y[0].numpy(), traj.numpy(), maps[0].numpy(), 2 * n


def test_bart_nufft_has_our_scale(tmp_path):
    from molrecon.formats.noncartesian import to_bart_noncartesian
    from molrecon.physics import NonCartesianMRI, radial_trajectory

    n = 32
    traj = radial_trajectory(16, 2 * n, image_size=n)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, n, n), generator=g, dtype=torch.complex64)
    ours = NonCartesianMRI(torch.ones(1, 1, n, n, dtype=torch.complex64), traj).A(x)[0].numpy()
    _, t = to_bart_noncartesian(ours, traj.numpy(), readout=2 * n)
    write_cfl(tmp_path / "traj", t)
    write_cfl(tmp_path / "img", x[0].numpy())
    bart("nufft", "traj", "img", "k", cwd=tmp_path)
    theirs = read_cfl(tmp_path / "k").reshape(2 * n, 16, order="F").T.reshape(1, -1)
    scale = np.vdot(ours, theirs) / np.vdot(ours, ours)
    assert abs(scale - 1) < 5e-3  # measured 1.0009: BART's NUFFT has our orthonormal-DFT scale
    # the rest is the NUFFTs' kernel error, largest on the samples at the edge -N/2 (3.1e-2 at 32², 1.7e-2 at 64²)
    assert np.linalg.norm(theirs - scale * ours) / np.linalg.norm(theirs) < 5e-2


@pytest.mark.parametrize("lam", [1e-3, 1e-2])
def test_radial_sense_matches_bart_pics_t(lam):
    from molrecon.bench.bart_radial import bart_pics_l2, molrecon_sense, relative_error

    y, traj, maps, readout = _radial_slice()
    x, _, bound2 = molrecon_sense(y, traj, maps, lam, 100, tol=1e-9)
    xb, _, _ = bart_pics_l2(y, traj, maps, lam * bound2, 100, readout)
    assert relative_error(x, xb) < 1e-2
    wrong, _, _ = bart_pics_l2(y, traj, maps, lam, 100, readout)  # BART's -r taken as molrecon's lam: wrong
    assert relative_error(x, wrong) > 5e-2


def test_convert_radial_to_bart_then_pics_t_equals_recon(tmp_path, capsys):
    from molrecon.formats.noncartesian import problem_from_arrays, write_noncartesian
    from molrecon.physics import NonCartesianMRI

    y, traj, maps, readout = _radial_slice()
    write_noncartesian(tmp_path / "r.h5", problem_from_arrays(y[None], traj, maps.shape[1:], "2d", maps=maps[None],
                                                              attrs={"readout": readout}))
    assert main(["convert", str(tmp_path / "r.h5"), str(tmp_path / "r.cfl")]) == 0
    assert read_cfl(tmp_path / "r_traj").shape == (3, readout, traj.shape[0] // readout)
    lam = 1e-3
    bound2 = NonCartesianMRI(torch.from_numpy(maps)[None], torch.from_numpy(traj)).norm_bound() ** 2
    bart("pics", "-l2", "-r", lam * bound2, "-i", 100, "-S", "-t", "r_traj", "r", "r_maps", "ref", cwd=tmp_path)
    assert main(["recon", "--method", "sense", "--lam", str(lam), "--max-iter", "100", "--input",
                 str(tmp_path / "r.h5"), "--out", str(tmp_path / "x.cfl")]) == 0, capsys.readouterr().err
    ref, x = read_cfl(tmp_path / "ref"), read_cfl(tmp_path / "x")
    assert x.shape == ref.shape == maps.shape[1:]
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-2
