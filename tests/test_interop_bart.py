"""Against BART itself (Debian/Ubuntu: ``apt-get install bart``): molrecon's CG-SENSE on BART's phantom with
BART's maps equals ``bart pics -l2``, BART's centred FFT equals ours, and BART reads the CFL files we write.

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
