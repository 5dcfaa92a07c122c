"""Tests of molrecon.data: built-in set (tiny builds), fastMRI-layout loader with ESPIRiT cache, NIfTI export."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from molrecon.data import (
    SliceDataset,
    build_builtin,
    builtin_dataset,
    builtin_test_example,
    collate,
    ensure_builtin,
    export_nifti,
    load_manifest,
    physics_from_batch,
    plan_axial_splits,
    verify_builtin,
)
from molrecon.data.transforms import center_crop
from molrecon.errors import InputError
from molrecon.physics import RandomMask
from molrecon.recon import cg_sense

TINY = {
    "2d": {"size": 32, "coils": 4, "contrasts": ["t1", "t2"], "units": 2, "max_train_slices": 2},
    "3d": {"size": 16, "coils": 4, "contrasts": ["pd"], "n_train": 1, "n_val": 1, "n_test": 1},
    "dynamic": {"size": 32, "coils": 4, "contrasts": ["t1"], "frames": 6, "n_train": 1, "n_val": 1, "n_test": 1},
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    for kind, params in TINY.items():
        ensure_builtin(kind, root, seed=3, **params)
    return root


def _nmse(x, t):
    return float((x - t).abs().pow(2).sum() / t.abs().pow(2).sum())


# ----------------------------------------------------------------------------------------- built-in set
def test_default_split_plan_has_gaps_and_sizes():
    plan = plan_axial_splits()
    train = [z for b in plan for z in b["train"]]
    val = [z for b in plan for z in b["val"]]
    test = [z for b in plan for z in b["test"]]
    assert len(set(train) | set(val) | set(test)) == len(train) + len(val) + len(test)
    for z in val + test:
        assert min(abs(z - t) for t in train) >= 5
    assert min(abs(v - t) for v in val for t in test) >= 5
    # 4 contrasts per position: default sizes within the documented ranges
    assert 150 <= 4 * len(train) <= 250 and 4 * len(val) == 16 and 8 <= 4 * len(test) <= 16


def test_splits_disjoint(tiny_root):
    folder = tiny_root / "2d"
    m = load_manifest(folder)
    files = {s: set(m["splits"][s]) for s in ("train", "val", "test")}
    assert not (files["train"] & files["val"]) and not (files["train"] & files["test"]) and not (
        files["val"] & files["test"])
    z = {s: {zz for f in m["files"] if f["split"] == s for zz in f["z_index_mm"]} for s in files}
    assert z["train"] and z["val"] and z["test"]
    assert not (z["train"] & z["val"] or z["train"] & z["test"] or z["val"] & z["test"])
    # the positions stored in the files agree with the manifest
    for f in m["files"]:
        with h5py.File(folder / f["file"]) as h:
            assert list(h.attrs["z_index_mm"]) == f["z_index_mm"]
    # test covers several contrasts
    assert len({f["contrast"] for f in m["files"] if f["split"] == "test"}) == 2
    assert verify_builtin(folder) == []


def test_builtin_items_and_scaling(tiny_root):
    ds = builtin_dataset("2d", "val", root=tiny_root)
    item = ds[0]
    assert item["kspace"].shape == (4, 32, 32) and item["kspace"].dtype == torch.complex64
    assert item["mask"].shape == (1, 1, 32) and item["dims"] == "2d"
    # maps normalised, target max over the file is 1, k-space is masked
    assert torch.allclose(item["maps"].abs().pow(2).sum(0), torch.ones(32, 32), atol=1e-4)
    with h5py.File(ds.files[0]) as h:
        assert np.isclose(np.abs(h["target"][()]).max(), 1.0, atol=1e-6)
        assert h.attrs["simulated"] and h.attrs["inverse_crime"]
    cols = item["mask"][0, 0] == 0
    assert torch.all(item["kspace"][..., cols] == 0)
    # the fully sampled stored k-space is A(target) + noise at the stated SNR (30 dB)
    with h5py.File(ds.files[0]) as h:
        full = torch.from_numpy(h["kspace"][0])
    full_phys = physics_from_batch(collate([{**item, "mask": torch.ones(1, 1, 32)}]))
    noise = full[None] - full_phys.A(item["target"][None])
    snr = 20 * np.log10(float(full_phys.A(item["target"][None]).abs().pow(2).mean().sqrt()
                              / noise.abs().pow(2).mean().sqrt()))
    assert 27 < snr < 33
    # a mask_func overrides the file mask (8x gives fewer samples)
    ds8 = builtin_dataset("2d", "val", root=tiny_root, mask_func=RandomMask(0.04, 8))
    assert ds8[0]["mask"].sum() < item["mask"].sum()


def test_builtin_test_example_reconstructs(tiny_root):
    y, physics, target = builtin_test_example(0, root=tiny_root)
    assert y.shape == (1, 4, 32, 32) and target.shape == (1, 32, 32) and target.is_complex()
    x = cg_sense(y, physics, lam=1e-3)
    assert _nmse(x, target) < _nmse(physics.A_adjoint(y), target) + 1e-3
    assert _nmse(x, target) < 0.2


def test_3d_item(tiny_root):
    ds = builtin_dataset("3d", "train", root=tiny_root)
    item = ds[0]
    assert item["kspace"].shape == (4, 16, 16, 16) and item["mask"].shape == (1, 1, 16, 16)
    assert item["dims"] == "3d"
    batch = collate([item])
    assert batch["mask"].shape == (1, 1, 1, 16, 16)
    assert physics_from_batch(batch).A_adjoint(batch["kspace"]).shape == (1, 16, 16, 16)


def test_dynamic_series_moves_and_masks_differ(tiny_root):
    item = builtin_dataset("dynamic", "test", root=tiny_root)[0]
    t = item["target"].abs()
    assert t.shape == (6, 32, 32) and item["mask"].shape == (1, 6, 1, 32)
    diffs = [float((t[i + 1] - t[i]).norm() / t[i].norm()) for i in range(5)]
    assert min(diffs) > 0.01  # every frame moves
    masks = item["mask"][0, :, 0]
    assert len({tuple(m.tolist()) for m in masks}) > 1
    assert physics_from_batch(collate([item])).dims == "2d+t"


def test_build_deterministic(tmp_path):
    a = build_builtin(tmp_path / "a", "2d", seed=7, **TINY["2d"])
    b = build_builtin(tmp_path / "b", "2d", seed=7, **TINY["2d"])
    c = build_builtin(tmp_path / "c", "2d", seed=8, **TINY["2d"])
    ma, mb = load_manifest(a), load_manifest(b)
    assert [f["file"] for f in ma["files"]] == [f["file"] for f in mb["files"]]
    for f in ma["files"]:
        with h5py.File(a / f["file"]) as ha, h5py.File(b / f["file"]) as hb, h5py.File(c / f["file"]) as hc:
            for key in ("kspace", "maps", "mask", "target", "reconstruction_rss"):
                assert ha[key][()].tobytes() == hb[key][()].tobytes(), key
            assert ha["kspace"][()].tobytes() != hc["kspace"][()].tobytes()
    with pytest.raises(InputError, match="already exists"):
        build_builtin(a, "2d", seed=7, **TINY["2d"])


def test_ensure_builtin_returns_existing_without_rebuilding(tiny_root, monkeypatch):
    import molrecon.data.builtin as builtin

    monkeypatch.setattr(builtin, "build_builtin", lambda *a, **k: pytest.fail("rebuilt an existing set"))
    assert ensure_builtin("2d", tiny_root) == tiny_root / "2d"
    monkeypatch.setenv("MOLRECON_DATA", str(tiny_root))
    assert ensure_builtin("dynamic") == tiny_root / "dynamic"
    assert not list(tiny_root.glob(".*.building"))


def test_cli_build_and_verify(tmp_path, capsys):
    from molrecon.cli import main

    assert main(["data", "build", "--out", str(tmp_path), "--kind", "3d", "--size", "16", "--coils", "2",
                 "--contrasts", "t1"]) == 0
    assert (tmp_path / "3d" / "manifest.json").exists()
    assert main(["data", "verify", "--out", str(tmp_path), "--kind", "3d"]) == 0
    victim = sorted((tmp_path / "3d" / "train").glob("*.h5"))[0]
    with h5py.File(victim, "r+") as h:
        h["kspace"][0, 0, 0, 0, 0] = 123.0
    assert main(["data", "verify", "--out", str(tmp_path), "--kind", "3d"]) == 2
    assert "checksum mismatch" in capsys.readouterr().out


# --------------------------------------------------------------------------------- fastMRI round trip
def _fastmri_header(enc, rec, coils):
    import ismrmrd.xsd as x

    def space(m):
        return x.encodingSpaceType(matrixSize=x.matrixSizeType(x=m[0], y=m[1], z=1),
                                   fieldOfView_mm=x.fieldOfViewMm(x=2.0 * m[0], y=2.0 * m[1], z=5.0))

    hdr = x.ismrmrdHeader(experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=63_650_000),
                          acquisitionSystemInformation=x.acquisitionSystemInformationType(receiverChannels=coils))
    hdr.encoding.append(x.encodingType(
        encodedSpace=space(enc), reconSpace=space(rec), trajectory=x.trajectoryType.CARTESIAN,
        encodingLimits=x.encodingLimitsType(kspace_encoding_step_1=x.limitType(minimum=0, maximum=enc[1] - 1,
                                                                               center=enc[1] // 2))))
    return x.ToXML(hdr)


@pytest.fixture()
def fastmri_file(tmp_path):
    """A small multicoil file written the way fastMRI's files are: no maps, no mask, fully sampled k-space with
    readout oversampling (H = 2 × recon), ``reconstruction_rss`` centre-cropped to the recon matrix."""
    import sigpy.mri

    from molrecon.data import anatomy
    from molrecon.physics import fft_centered, ifft_centered

    slices, coils, H, W, rec = 2, 8, 96, 48, (48, 48)
    mag = anatomy.axial_slices("t1", [80, 90], 48)  # [2, 48, 48]
    img = np.zeros((slices, H, W), np.complex64)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 48), indexing="ij")
    img[:, 24:72] = mag * np.exp(1j * (0.6 * xx + 0.4 * yy ** 2))[None]
    maps = sigpy.mri.birdcage_maps((coils, H, W), r=1.2).astype(np.complex64)  # not normalised: like a scanner
    coil_imgs = torch.from_numpy(maps[None] * img[:, None] * 1e-4)  # raw scanner scale
    kspace = fft_centered(coil_imgs, (-2, -1))
    gen = torch.Generator().manual_seed(0)
    kspace = kspace + 1e-8 * torch.randn(kspace.shape, dtype=torch.complex64, generator=gen)
    rss = ifft_centered(kspace, (-2, -1)).abs().pow(2).sum(1).sqrt()
    rss = center_crop(rss, rec).numpy()
    path = tmp_path / "file1000001.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.numpy().astype(np.complex64))
        f.create_dataset("reconstruction_rss", data=rss.astype(np.float32))
        f.create_dataset("ismrmrd_header", data=_fastmri_header((H, W), rec, coils).encode())
        f.attrs["acquisition"] = "AXT1"
        f.attrs["max"] = float(rss.max())
        f.attrs["norm"] = float(np.linalg.norm(rss))
        f.attrs["patient_id"] = "abc123"
    return path, np.abs(img)


def test_fastmri_roundtrip_with_espirit_cache(fastmri_file, monkeypatch):
    path, mag = fastmri_file
    ds = SliceDataset(path.parent, mask_func=RandomMask(0.08, 4))
    assert len(ds) == 2 and ds.crop_size(0) == (48, 48)
    item = ds[1]
    side = ds.sidecar_path(path)
    assert side.exists() and side.name == "file1000001.espirit.h5"
    assert item["kspace"].shape == (8, 96, 48) and item["mask"].shape == (1, 1, 48)
    # the same mask for every slice of a volume (seeded by file name), as fastMRI does
    assert torch.equal(ds[0]["mask"], item["mask"])
    # ESPIRiT maps are normalised inside the object
    inside = torch.from_numpy(mag[1] > 0.2 * mag[1].max())
    rss2 = item["maps"].abs().pow(2).sum(0)
    assert float((rss2[inside] - 1).abs().median()) < 0.05
    # the target is the coil combination: its magnitude matches the (scaled) image; volume max is 1
    t = item["target"].abs().numpy()
    ref = mag[1] / mag.max()
    assert np.abs(t - ref)[inside.numpy()].mean() < 0.05 * ref[inside.numpy()].mean()
    assert max(float(ds[i]["target"].abs().max()) for i in range(2)) == pytest.approx(1.0, abs=1e-5)
    # the cropped rss kept for metrics matches the cropped target magnitude
    assert np.allclose(item["rss"].numpy(), center_crop(t, (48, 48)), atol=0.02)
    # reconstruct from the 4x data: CG-SENSE beats zero filling and approaches the fully sampled image
    batch = collate([item])
    physics = physics_from_batch(batch)
    x = cg_sense(batch["kspace"], physics, lam=1e-3, max_iter=60)
    zf = physics.A_adjoint(batch["kspace"])
    assert _nmse(x, batch["target"]) < 0.5 * _nmse(zf, batch["target"])
    # second dataset: the cache is reused, ESPIRiT is not run again
    import molrecon.data.slice_dataset

    monkeypatch.setattr(molrecon.data.slice_dataset, "estimate_coil_maps",
                        lambda *a, **k: pytest.fail("ESPIRiT rerun"))
    ds2 = SliceDataset([path], mask_func=RandomMask(0.08, 4))
    assert torch.equal(ds2[1]["maps"], item["maps"])
    assert len(SliceDataset(path.parent)) == 2  # the sidecar is not taken for a data file


def test_fastmri_file_without_mask_reads_fully_sampled(fastmri_file):
    path, _ = fastmri_file
    with pytest.warns(UserWarning, match="fully sampled"):
        item = SliceDataset(path)[0]
    assert item["mask"].shape == (1, 1, 48) and float(item["mask"].min()) == 1.0


# ------------------------------------------------------------------------------------------ bad files
def test_truncated_and_corrupted_files_name_the_file(tiny_root, tmp_path):
    src = sorted((tiny_root / "2d" / "train").glob("*.h5"))[0]
    trunc = tmp_path / "truncated.h5"
    data = src.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.h5"):
        SliceDataset(trunc)[0]
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 100)
    with pytest.raises(InputError, match="junk.h5"):
        SliceDataset(junk)
    nokey = tmp_path / "nokey.h5"
    with h5py.File(nokey, "w") as f:
        f.create_dataset("reconstruction_rss", data=np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InputError, match=r"nokey\.h5.*'kspace'"):
        SliceDataset(nokey)
    # a corrupted dataset inside a structurally valid file
    bad = tmp_path / "badmask.h5"
    shutil.copy(src, bad)
    with h5py.File(bad, "r+") as f:
        del f["mask"]
        f.create_dataset("mask", data=np.zeros(7, np.float32))
    with pytest.raises(InputError, match="badmask.h5"):
        SliceDataset(bad)[0]


def test_manifest_records_sources_and_checksums(tiny_root):
    m = json.loads((tiny_root / "2d" / "manifest.json").read_text())
    assert m["simulated"] is True and "inverse crime" in m["note"]
    assert {f["file"] for f in m["source"]["files"]} >= {"mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"}
    assert all(len(f["sha256"]) == 64 for f in m["files"]) and m["seed"] == 3


# -------------------------------------------------------------------------------------------- NIfTI
def test_nifti_export_affine_and_shape_round_trip(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).random((5, 12, 10)).astype(np.float32)  # [S, H, W]
    path = export_nifti(torch.from_numpy(vol) * (1 + 1j), tmp_path / "recon.nii.gz", voxel_size=(3.0, 2.0, 1.5))
    img = nib.load(path)
    assert img.shape == (10, 12, 5)
    assert np.allclose(img.header.get_zooms(), (1.5, 2.0, 3.0))
    data = np.asarray(img.dataobj)
    assert np.allclose(data, np.abs(np.transpose(vol, (2, 1, 0)) * (1 + 1j)), rtol=1e-6)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # columns right→left, rows anterior→posterior
    centre = img.affine @ np.array([(10 - 1) / 2, (12 - 1) / 2, (5 - 1) / 2, 1])
    assert np.allclose(centre[:3], 0)
    first = img.affine @ np.array([0, 0, 0, 1])  # row 0 col 0: patient right, anterior, lowest slice
    assert first[0] > 0 and first[1] > 0 and first[2] < 0
    assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(InputError):
        export_nifti(vol, tmp_path / "x.png")
    series = export_nifti(vol, tmp_path / "dyn.nii", voxel_size=(2.0, 1.5), frames=True)
    assert nib.load(series).shape == (10, 12, 1, 5)
