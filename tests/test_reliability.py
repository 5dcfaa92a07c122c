"""Defects of the hostile-user review that are not a bad-input exit: NIfTI of every layout with the file's
voxel sizes, folder mode going on past a bad file, ``info`` on a huge declared file, the resume message, and
nothing written when a reconstruction is not finite."""

from __future__ import annotations

import time

import h5py
import nibabel
import numpy as np
import pytest
import torch

from molrecon.cli import main
from molrecon.data.builtin import ensure_builtin
from molrecon.data.nifti import voxel_size_of


def _first(kind: str):
    return sorted((ensure_builtin(kind) / "test").glob("*.h5"))[0]  # a fresh machine builds the set first


@pytest.mark.parametrize("kind,shape,zooms", [
    ("2d", (128, 128, 1), (1.8203125, 1.8203125, 1.0)),
    ("3d", (64, 64, 64), (3.25, 3.25, 3.25)),
    ("dynamic", (96, 96, 1, 12), (2.42708333, 2.42708333, 1.0, 1.0)),
])
def test_recon_writes_nifti_for_every_layout_with_the_files_voxel_size(tmp_path, capsys, kind, shape, zooms):
    src = _first(kind)
    out, nii = tmp_path / "r.h5", tmp_path / "r.nii.gz"
    rc = main(["recon", "--method", "zero-filled", "--input", str(src), "--out", str(out), "--nifti", str(nii)])
    assert rc == 0, capsys.readouterr().err
    img = nibabel.load(nii)
    assert img.shape == shape
    np.testing.assert_allclose(img.header.get_zooms(), zooms, rtol=1e-5)
    with h5py.File(out) as f:
        rec = f["reconstruction"][()]
    # the NIfTI holds the same magnitudes, (w, h, s[, t]) ordered
    data = np.asarray(img.dataobj)
    first = data[..., 0] if data.ndim == 4 else data
    expect = rec[0, 0][None] if kind == "dynamic" else (rec[0] if kind == "3d" else rec[0][None])
    np.testing.assert_allclose(first.transpose(2, 1, 0), expect, rtol=1e-5)


def test_voxel_size_falls_back_to_the_header_then_1mm():
    from molrecon.data import make_header

    header = make_header((128, 128, 1), (233.0, 233.0, 4.0), num_coils=4, phase_steps=128)
    vs, source = voxel_size_of({}, header, "2d")
    assert source == "ismrmrd_header" and np.allclose(vs, (4.0, 233 / 128, 233 / 128))
    assert voxel_size_of({}, None, "2d") == ((1.0, 1.0, 1.0), "default 1 mm")


def _string_kspace(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data="oops")


def test_folder_mode_carries_on_past_bad_files_and_reports_each(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _first("2d")
    (folder / "a_good.h5").write_bytes(good.read_bytes())
    _string_kspace(folder / "b_string.h5")
    with h5py.File(folder / "c_group.h5", "w") as f:
        f.create_group("kspace")
    (folder / "d_good.h5").write_bytes(good.read_bytes())
    rc = main(["recon", "--method", "zero-filled", "--input", str(folder), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 2
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2 and "b_string.h5" in errors[0] and "c_group.h5" in errors[1], captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good.h5", "d_good.h5"]
    assert "reconstructed 2/4" in captured.out


def test_folder_mode_refuses_out_equal_to_input(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.h5").write_bytes(_first("2d").read_bytes())
    before = (folder / "a.h5").read_bytes()
    rc = main(["recon", "--method", "zero-filled", "--input", str(folder), "--out", str(folder)])
    assert rc == 2 and "input folder" in capsys.readouterr().err
    assert (folder / "a.h5").read_bytes() == before


def test_info_describes_a_huge_declared_file_without_reading_it(tmp_path, capsys):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # 512 GiB declared, a few KiB stored
        f.create_dataset("kspace", shape=(1000, 64, 1024, 1024), dtype=np.complex64, chunks=(1, 1, 64, 64))
    t0 = time.perf_counter()
    assert main(["info", str(path)]) == 0
    assert time.perf_counter() - t0 < 30  # reads one coil of one slice, not 512 GiB
    out = capsys.readouterr().out
    assert "slices: 1000, coils: 64, spatial: (1024, 1024)" in out


def test_a_non_finite_reconstruction_is_not_written(tmp_path, capsys, monkeypatch):
    import molrecon.recon

    def nan_recon(method, y, physics, **kwargs):
        return torch.full(physics.A_adjoint(y).shape, float("nan"), dtype=torch.complex64)

    monkeypatch.setattr(molrecon.recon, "reconstruct", nan_recon)
    out, nii = tmp_path / "o.h5", tmp_path / "o.nii"
    out.write_bytes(b"previous")
    rc = main(["recon", "--method", "sense", "--input", str(_first("2d")), "--out", str(out), "--nifti", str(nii)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "NaN or Inf" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"previous" and not nii.exists()


def test_resume_says_the_step_it_continues_from(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{method: modl, K: 1, channels: 4, layers: 2, cg_iter: 2}}\nout_dir: {tmp_path / 'run'}\n"
                   "data: {source: synthetic, shape: [16, 16], num_train: 4, num_val: 1}\n"
                   "train: {max_steps: 2, checkpoint_every: 1, tensorboard: false, progress: false}\n")
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--set", "train.max_steps=3"]) == 0
    assert "resuming from step 2" in capsys.readouterr().out
