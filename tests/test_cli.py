"""The classical `molrecon recon` / `molrecon info` commands, including every bad-input case."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import sigpy
import torch

from molrecon.cli import main
from molrecon.physics import MultiCoilMRI, RandomMask, fft_centered, simulate_coil_maps


def write_file(path, slices=2, coils=4, n=32, with_maps=True, with_mask=True, mutate=None):
    img = torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))
    maps = simulate_coil_maps((n, n), coils)
    full = fft_centered(maps * img, (-2, -1))
    mask = RandomMask(0.25, 2)((n, n), seed=0)
    kspace = (full * mask)[None].repeat(slices, 1, 1, 1).numpy()
    data = {"kspace": kspace}
    if with_maps:
        data["maps"] = maps[None].repeat(slices, 1, 1, 1).numpy()
    if with_mask:
        data["mask"] = mask.numpy()
    if mutate:
        mutate(data)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=v)
    return img


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("method", ["zero-filled", "sense", "cs-wavelet"])
def test_recon_writes_output(tmp_path, capsys, method):
    img = write_file(tmp_path / "in.h5")
    out = tmp_path / "out.h5"
    rc, err = run_cli(["recon", "--method", method, "--input", tmp_path / "in.h5", "--out", out,
                       "--max-iter", "30"], capsys)
    assert rc == 0, err
    with h5py.File(out) as f:
        rec = f["reconstruction"][()]
        assert rec.shape == (2, 32, 32)
        assert f.attrs["method"] == method
    error = np.linalg.norm(rec[0] - np.abs(img.numpy())) / np.linalg.norm(img.numpy())
    assert error < 0.6  # 2x-undersampled Shepp-Logan: aliasing is expected, but the image is there


def test_recon_without_maps_uses_espirit_and_writes_nifti(tmp_path, capsys):
    import nibabel

    write_file(tmp_path / "in.h5", with_maps=False, with_mask=False, n=48)
    rc, err = run_cli(["recon", "--method", "sense", "--input", tmp_path / "in.h5", "--out", tmp_path / "o.h5",
                       "--nifti", tmp_path / "o.nii.gz", "--calib-width", "12"], capsys)
    assert rc == 0, err
    assert 48 in nibabel.load(tmp_path / "o.nii.gz").shape


def test_info(tmp_path, capsys):
    write_file(tmp_path / "in.h5")
    assert main(["info", str(tmp_path / "in.h5")]) == 0
    out = capsys.readouterr().out
    assert "coils: 4" in out and "acceleration" in out


def test_every_command_runs_without_tf32(tmp_path, capsys):
    """The command line turns TF32 off for cuDNN convolutions and cuBLAS products (PyTorch's default on
    Ampere and later GPUs), so that MOL's tolerance and certificates speak of IEEE float32 (molrecon/precision.py)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        write_file(tmp_path / "in.h5")
        assert main(["info", str(tmp_path / "in.h5")]) == 0
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _nan(d):
    d["kspace"][0, 0, 3, 3] = np.nan


def _coils(d):
    d["maps"] = d["maps"][:, :3]


def _real(d):
    d["kspace"] = d["kspace"].real.copy()


def _shape(d):
    d["kspace"] = d["kspace"][0]


def _empty_mask(d):
    d["mask"] = np.zeros_like(d["mask"])


@pytest.mark.parametrize("mutate,needle", [
    (_nan, "NaN"), (_coils, "coils"), (_real, "complex"), (_shape, "shape"), (_empty_mask, "empty"),
])
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, capsys, mutate, needle):
    write_file(tmp_path / "bad.h5", mutate=mutate)
    out = tmp_path / "out.h5"
    rc, err = run_cli(["recon", "--method", "sense", "--input", tmp_path / "bad.h5", "--out", out], capsys)
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0] and "bad.h5" in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".out.h5*"))


def test_missing_key_not_hdf5_and_missing_file(tmp_path, capsys):
    with h5py.File(tmp_path / "nokspace.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=np.zeros((1, 4, 4)))
    (tmp_path / "text.h5").write_text("this is not HDF5")
    for name, needle in [("nokspace.h5", "missing HDF5 key 'kspace'"), ("text.h5", "not an HDF5 file"),
                         ("absent.h5", "not found")]:
        rc, err = run_cli(["recon", "--method", "zero-filled", "--input", tmp_path / name, "--out",
                           tmp_path / "o.h5"], capsys)
        assert rc != 0 and needle in err and name in err, err
        assert not (tmp_path / "o.h5").exists()


def test_existing_output_survives_a_failed_run(tmp_path, capsys):
    write_file(tmp_path / "bad.h5", mutate=_nan)
    out = tmp_path / "out.h5"
    out.write_bytes(b"previous result")
    rc, _ = run_cli(["recon", "--method", "sense", "--input", tmp_path / "bad.h5", "--out", out], capsys)
    assert rc != 0 and out.read_bytes() == b"previous result"


def test_console_script_entry_point(tmp_path):
    write_file(tmp_path / "in.h5")
    proc = subprocess.run([sys.executable, "-m", "molrecon", "recon", "--method", "zero-filled", "--input",
                           str(tmp_path / "in.h5"), "--out", str(tmp_path / "o.h5")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "molrecon", "info", str(tmp_path / "missing.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:")


def test_3d_file_roundtrip(tmp_path, capsys):
    spatial = (6, 16, 16)
    img = torch.randn(1, *spatial, dtype=torch.complex64)
    maps = simulate_coil_maps(spatial, 3)[None]
    P = MultiCoilMRI(maps, torch.ones(1, 16, 16))
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("kspace", data=P.A(img).numpy())
        f.create_dataset("maps", data=maps.numpy())
    rc, err = run_cli(["recon", "--method", "sense", "--lam", "0", "--input", tmp_path / "v.h5", "--out",
                       tmp_path / "o.h5"], capsys)
    assert rc == 0, err
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_allclose(f["reconstruction_complex"][0], img[0].numpy(), atol=2e-2)
