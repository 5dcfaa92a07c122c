"""Reading and writing the field's formats: BART CFL, ISMRMRD raw data, DICOM out, and `molrecon convert`.

The ISMRMRD files here are written with the ``ismrmrd`` package directly, acquisition by acquisition (not with
molrecon's writer), so the reader is checked against an independent producer.
"""

import glob
import re

import h5py
import numpy as np
import pytest

from molrecon.cli import main
from molrecon.data import ensure_builtin
from molrecon.errors import InputError
from molrecon.formats import (
    bart_to_molrecon,
    molrecon_to_bart,
    read_cfl,
    read_problem,
    write_cfl,
)
from molrecon.formats.prewhiten import apply_whitening, noise_covariance, whitening_matrix

TINY_2D = {"size": 32, "coils": 4, "contrasts": ["t1"], "units": 1, "max_train_slices": 1}


@pytest.fixture(scope="module")
def builtin_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    folder = ensure_builtin("2d", root, seed=5, **TINY_2D)
    return sorted(glob.glob(str(folder / "test" / "*.h5")))[0]


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def recon_of(path):
    with h5py.File(path) as f:
        return f["reconstruction_complex"][()]


# ------------------------------------------------------------------------------------------------- ISMRMRD
def white_noise(coils, n, sigma, rng):
    """Noise whose sample covariance is exactly sigma² I (orthogonalised), so prewhitening must be the identity."""
    z = rng.standard_normal((n, coils)) + 1j * rng.standard_normal((n, coils))
    z -= z.mean(axis=0)
    q, _ = np.linalg.qr(z)
    return (q * sigma * np.sqrt(n - 1)).T.astype(np.complex64)


def write_mrd(path, kspace, mask, fov=(233.0, 233.0, 5.0), noise=None, acs=None, oversample=1, limits=True,
              traj="cartesian", readout_of=None, calib_only=()):
    """Write ``kspace`` ``[S, C, H, W]`` (readout H, encode step 1 W) acquisition by acquisition with ismrmrd."""
    import ismrmrd
    import ismrmrd.xsd as x

    S, C, H, W = kspace.shape
    size_e = x.matrixSizeType(x=H * oversample, y=W, z=1)
    size_r = x.matrixSizeType(x=H, y=W, z=1)
    enc = x.encodingType(
        encodedSpace=x.encodingSpaceType(matrixSize=size_e, fieldOfView_mm=x.fieldOfViewMm(
            x=fov[0] * oversample, y=fov[1], z=fov[2])),
        reconSpace=x.encodingSpaceType(matrixSize=size_r, fieldOfView_mm=x.fieldOfViewMm(
            x=fov[0], y=fov[1], z=fov[2])),
        trajectory=x.trajectoryType(traj),
        encodingLimits=x.encodingLimitsType(
            kspace_encoding_step_1=x.limitType(minimum=0, maximum=W - 1, center=W // 2),
            slice=x.limitType(minimum=0, maximum=S - 1, center=0)))
    hdr = x.ismrmrdHeader(acquisitionSystemInformation=x.acquisitionSystemInformationType(receiverChannels=C),
                          experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=63_870_000))
    hdr.encoding.append(enc)
    xml = x.ToXML(hdr)
    if not limits:  # the schema wants the element, so take it out of the text as a broken converter would
        xml = re.sub(r"\s*<encodingLimits>.*</encodingLimits>", "", xml, flags=re.S)
        assert "encodingLimits" not in xml
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(xml)
    if noise is not None:
        for start in range(0, noise.shape[1], 64):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(noise[:, start:start + 64]))
            acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            dset.append_acquisition(acq)
    if oversample > 1:  # the same object in a twice as long readout FOV: zero-pad the image along the readout
        import torch

        from molrecon.physics import fft_centered, ifft_centered

        img = ifft_centered(torch.from_numpy(kspace), (2,))
        pad = (H * oversample - H) // 2
        img = torch.nn.functional.pad(img, (0, 0, pad, pad))
        kspace = fft_centered(img, (2,)).numpy()
    for s in range(S):
        for e1 in range(W):
            if not mask[e1] and e1 not in calib_only:
                continue
            data = np.ascontiguousarray(kspace[s, :, :, e1])
            if readout_of is not None:
                data = np.ascontiguousarray(data[:, :readout_of(e1)])
            acq = ismrmrd.Acquisition.from_array(data)
            acq.center_sample = kspace.shape[2] // 2
            acq.idx.kspace_encode_step_1 = e1
            acq.idx.slice = s
            acq.read_dir[:] = [0.0, 1.0, 0.0]
            acq.phase_dir[:] = [1.0, 0.0, 0.0]
            acq.slice_dir[:] = [0.0, 0.0, 1.0]
            acq.position[:] = [0.0, 0.0, 10.0 + 5.0 * s]
            if e1 in calib_only:
                acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING if mask[e1] else
                             ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            elif acs is not None and W // 2 - acs // 2 <= e1 < W // 2 - acs // 2 + acs:
                acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
            dset.append_acquisition(acq)
    dset.close()
    return path


def builtin_arrays(path):
    with h5py.File(path) as f:
        return f["kspace"][()], f["maps"][()], f["mask"][()], float(f.attrs["sigma"])


def acs_width(mask):
    c = len(mask) // 2
    lo, hi = c, c
    while mask[lo - 1]:
        lo -= 1
    while mask[hi + 1]:
        hi += 1
    return hi - lo + 1


def test_ismrmrd_from_builtin_reconstructs_like_its_fastmri_copy(tmp_path, capsys, builtin_file):
    check_mrd_matches_fastmri_copy(tmp_path, capsys, builtin_file)


@pytest.mark.slow
def test_ismrmrd_from_the_default_builtin_set(tmp_path, capsys):
    folder = ensure_builtin("2d")  # the 128x128, 8-coil set of `molrecon data build`
    check_mrd_matches_fastmri_copy(tmp_path, capsys, sorted(glob.glob(str(folder / "test" / "*.h5")))[0])


def check_mrd_matches_fastmri_copy(tmp_path, capsys, builtin_file):
    kspace, maps, mask, sigma = builtin_arrays(builtin_file)
    W = kspace.shape[-1]
    mask[W // 2 - 6:W // 2 + 6] = 1  # an ESPIRiT-sized calibration region (the tiny set's is 4 lines)
    acs = acs_width(mask)
    noise = white_noise(kspace.shape[1], 2048, sigma, np.random.default_rng(0))
    mrd = write_mrd(tmp_path / "raw.mrd", kspace, mask, noise=noise, acs=acs)
    copy = tmp_path / "copy.h5"  # the fastMRI copy of the same acquisition
    with h5py.File(copy, "w") as g:
        g["kspace"], g["maps"], g["mask"] = kspace * mask, maps, mask
    prob = read_problem(mrd)
    assert prob.attrs["prewhitened"] and prob.attrs["noise_scans"] == 32
    assert prob.calib_width == acs
    np.testing.assert_array_equal(prob.mask, mask)
    np.testing.assert_allclose(prob.kspace, kspace * mask, atol=1e-6 * np.abs(kspace).max())

    # maps from the fastMRI copy: the same problem, so the same image
    rc, err = run_cli(["recon", "--method", "sense", "--input", mrd, "--maps", copy,
                       "--out", tmp_path / "a.h5"], capsys)
    assert rc == 0, err
    rc, err = run_cli(["recon", "--method", "sense", "--input", copy, "--out", tmp_path / "b.h5"], capsys)
    assert rc == 0, err
    a, b = recon_of(tmp_path / "a.h5"), recon_of(tmp_path / "b.h5")
    # float32 noise samples: their covariance is sigma² I to ~1e-6, so prewhitening is the identity to that
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4

    # no maps anywhere: ESPIRiT on the flagged calibration lines equals ESPIRiT on the copy at that width
    with h5py.File(tmp_path / "nomaps.h5", "w") as g:
        g["kspace"], g["mask"] = kspace * mask, mask
    rc, err = run_cli(["recon", "--method", "sense", "--input", mrd, "--out", tmp_path / "c.h5"], capsys)
    assert rc == 0, err
    rc, err = run_cli(["recon", "--method", "sense", "--input", tmp_path / "nomaps.h5", "--calib-width", acs,
                       "--out", tmp_path / "d.h5"], capsys)
    assert rc == 0, err
    c, d = recon_of(tmp_path / "c.h5"), recon_of(tmp_path / "d.h5")
    assert np.linalg.norm(c - d) / np.linalg.norm(d) < 1e-4


def test_prewhitening_whitens_correlated_noise(tmp_path):
    rng = np.random.default_rng(1)
    C, n = 4, 20000
    mix = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0.8j, 0], [0.2, 0, 2.0, 0], [0, 0, 0.3, 0.5]])
    noise = mix @ (rng.standard_normal((C, n)) + 1j * rng.standard_normal((C, n)))
    cov = noise_covariance(noise)
    W = whitening_matrix(cov)
    white = apply_whitening(noise[None], W, coil_axis=1)[0]
    level = np.real(np.trace(cov)) / C
    np.testing.assert_allclose(noise_covariance(white), level * np.eye(C), atol=1e-5 * level)
    assert np.abs(cov - np.diag(np.diag(cov))).max() > 0.2 * level  # it was correlated before

    # through the reader: the imaging data are noise too, measured by the same coils
    data = (mix @ (rng.standard_normal((C, 16 * 64)) + 1j * rng.standard_normal((C, 16 * 64)))).reshape(C, 16, 64)
    mrd = write_mrd(tmp_path / "n.mrd", data[None].astype(np.complex64), np.ones(64, bool),
                    noise=noise[:, :8192].astype(np.complex64))
    prob = read_problem(mrd)
    whitened = prob.kspace[0].reshape(C, -1)
    got = noise_covariance(whitened)
    assert np.abs(got - np.diag(np.diag(got))).max() < 0.1 * np.real(np.trace(got)) / C
    raw = read_problem(mrd, prewhiten=False).kspace[0].reshape(C, -1)
    np.testing.assert_allclose(raw, data.reshape(C, -1), rtol=1e-5, atol=1e-5)


def test_readout_oversampling_is_removed(tmp_path, builtin_file):
    kspace, _, mask, _ = builtin_arrays(builtin_file)
    mrd = write_mrd(tmp_path / "os.mrd", kspace * mask, mask, oversample=2)
    prob = read_problem(mrd)
    assert prob.kspace.shape == kspace.shape
    np.testing.assert_allclose(prob.kspace, kspace * mask, atol=1e-5 * np.abs(kspace).max())


def test_calibration_only_lines_feed_the_maps_not_the_mask(tmp_path, builtin_file):
    kspace, _, mask, _ = builtin_arrays(builtin_file)
    W = kspace.shape[-1]
    sparse = np.zeros_like(mask)
    sparse[::4] = 1
    calib = tuple(range(W // 2 - 4, W // 2 + 4))
    mrd = write_mrd(tmp_path / "cal.mrd", kspace, sparse, calib_only=calib)
    prob = read_problem(mrd)
    np.testing.assert_array_equal(prob.mask, sparse)
    assert prob.calib_width == 8
    np.testing.assert_allclose(prob.calib_kspace[..., list(calib)], kspace[..., list(calib)], atol=1e-6)
    assert np.abs(prob.kspace[..., W // 2 + 1]).max() == 0  # not an imaging line


def test_ismrmrd_geometry_comes_from_the_acquisitions(tmp_path, builtin_file):
    kspace, _, mask, _ = builtin_arrays(builtin_file)
    prob = read_problem(write_mrd(tmp_path / "g.mrd", np.concatenate([kspace, kspace]), mask, fov=(64, 96, 4)))
    geo = prob.image_geometry()
    H, W = kspace.shape[2:]
    assert geo.voxel_mm == pytest.approx((5.0, 64 / H, 96 / W))
    assert geo.row_dir == (0.0, 1.0, 0.0) and geo.col_dir == (1.0, 0.0, 0.0)
    first = np.array([0.0, 0.0, 10.0]) - (H - 1) / 2 * 64 / H * np.array([0, 1, 0]) - \
        (W - 1) / 2 * 96 / W * np.array([1, 0, 0])
    np.testing.assert_allclose(geo.positions[0], first)
    np.testing.assert_allclose(geo.positions[1], first + [0, 0, 5.0])


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case,needle", [
    ("truncated", "truncated"),
    ("no-limits", "encodinglimits"),
    ("mixed-readouts", "mixed readout lengths"),
    ("radial", "not supported"),
    ("unknown", "unknown format"),
    ("hdr-size", "bytes"),
])
def test_bad_inputs_give_one_line_exit_2_and_no_output(tmp_path, capsys, builtin_file, case, needle):
    kspace, maps, mask, _ = builtin_arrays(builtin_file)
    src = tmp_path / "in.mrd"
    if case == "truncated":
        write_mrd(src, kspace, mask)
        _truncate(src)
    elif case == "no-limits":
        write_mrd(src, kspace, mask, limits=False)
    elif case == "mixed-readouts":
        write_mrd(src, kspace, mask, readout_of=lambda e1: kspace.shape[2] - 2 * (e1 % 2))
    elif case == "radial":
        write_mrd(src, kspace, mask, traj="radial")
    elif case == "unknown":
        src = tmp_path / "in.dat"
        src.write_bytes(b"not k-space at all")
    else:
        src = tmp_path / "in.cfl"
        write_cfl(src, molrecon_to_bart(kspace, "2d"))
        hdr = src.with_suffix(".hdr")
        hdr.write_text(hdr.read_text().replace(f"{kspace.shape[2]} {kspace.shape[3]} 1 {kspace.shape[1]}",
                                               f"{kspace.shape[2]} {kspace.shape[3]} 2 {kspace.shape[1]}"))
    for cmd in (["recon", "--method", "sense", "--input", src, "--out", tmp_path / "out.h5",
                 "--dicom", tmp_path / "dcm"], ["convert", src, tmp_path / "out.h5"]):
        rc, err = run_cli(cmd, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"error: {src.with_suffix('.cfl') if case == 'hdr-size' else src}")
        assert needle in lines[0].lower(), lines[0]
        assert not (tmp_path / "out.h5").exists() and not (tmp_path / "dcm").exists()


# ------------------------------------------------------------------------------------------------- BART CFL
@pytest.mark.parametrize("dims,shape", [("2d", (3, 4, 6, 5)), ("3d", (2, 4, 6, 5, 3)), ("2d+t", (2, 3, 4, 6, 5))])
def test_cfl_layout_roundtrip(tmp_path, dims, shape):
    rng = np.random.default_rng(2)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    b = molrecon_to_bart(k, dims)
    assert b.ndim == 16
    s, c = 1, 2
    if dims == "2d":  # [S, C, H, W] -> (READ=H, PHS1=W, 1, COIL, ..., SLICE)
        assert b.shape[:4] == (6, 5, 1, 4) and b.shape[13] == 3
        assert b[4, 3, 0, c, 0, 0, 0, 0, 0, 0, 0, 0, 0, s] == k[s, c, 4, 3]
    elif dims == "3d":  # [S, C, D, H, W] -> (READ=D, PHS1=H, PHS2=W, COIL, ..., SLICE)
        assert b.shape[:4] == (6, 5, 3, 4) and b.shape[13] == 2
        assert b[4, 3, 2, c, 0, 0, 0, 0, 0, 0, 0, 0, 0, s] == k[s, c, 4, 3, 2]
    else:  # [S, C, T, H, W] -> (READ=H, PHS1=W, 1, COIL, ..., TIME, ..., SLICE)
        assert b.shape[:4] == (6, 5, 1, 3) and b.shape[10] == 4 and b.shape[13] == 2
        assert b[4, 3, 0, c, 0, 0, 0, 0, 0, 0, 3, 0, 0, s] == k[s, c, 3, 4, 3]
    write_cfl(tmp_path / "k", b)
    back, found = bart_to_molrecon(read_cfl(tmp_path / "k.cfl"))
    assert found == dims
    np.testing.assert_array_equal(back, k)
    raw = np.fromfile(tmp_path / "k.cfl", dtype=np.complex64)  # column-major: READ runs fastest
    assert raw[1] == b.reshape(-1, order="F")[1] == b[(1,) + (0,) * 15]
    assert "# Dimensions" in (tmp_path / "k.hdr").read_text()


def _bart_fftc(x, axes):
    """BART's centred unitary FFT as BART computes it: ``fftmod`` phases around a plain FFT (src/num/fft.c)."""
    out = np.asarray(x, np.complex128)
    for ax in axes:
        n = out.shape[ax]
        c = n // 2
        shape = [1] * out.ndim
        shape[ax] = n
        mod = np.exp(2j * np.pi * (np.arange(n) - c / 2) * c / n).reshape(shape)
        out = mod * np.fft.fft(mod * out, axis=ax, norm="ortho")
    return out


@pytest.mark.parametrize("shape", [(8, 6), (7, 5), (9, 4)])
def test_bart_centring_equals_ours(shape):
    import torch

    from molrecon.physics import fft_centered

    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    ours = fft_centered(torch.from_numpy(x), (0, 1)).numpy()
    np.testing.assert_allclose(_bart_fftc(x, (0, 1)), ours, atol=1e-5)


def test_cfl_rejects_extra_bart_dimensions(tmp_path):
    write_cfl(tmp_path / "m", np.ones((4, 4, 1, 2, 2), np.complex64))  # MAPS = 2
    with pytest.raises(InputError, match="no molrecon equivalent"):
        read_problem(tmp_path / "m.cfl")


# ------------------------------------------------------------------------------------------ DICOM and convert
@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_dicom_series_reads_back_with_pydicom_and_nibabel(tmp_path, capsys, builtin_file):
    import pydicom
    from nibabel.nicom import dicomwrappers

    kspace, _, mask, _ = builtin_arrays(builtin_file)
    two = np.concatenate([kspace, kspace[:, ::-1]])
    mrd = write_mrd(tmp_path / "g.mrd", two, mask, fov=(64, 96, 4))
    rc, err = run_cli(["recon", "--method", "sense", "--input", mrd, "--maps", builtin_file, "--out",
                       tmp_path / "r.h5", "--dicom", tmp_path / "dcm"], capsys)
    assert rc == 0, err
    files = sorted((tmp_path / "dcm").glob("*.dcm"))
    assert len(files) == 2
    rec = np.abs(recon_of(tmp_path / "r.h5"))
    H, W = kspace.shape[2:]
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.Rows == H and ds.Columns == W
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([64 / H, 96 / W])
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert "DERIVED" in ds.ImageType and "NOT FOR DIAGNOS" in ds.ImageComments
        img = ds.pixel_array * float(ds.RescaleSlope)
        np.testing.assert_allclose(img, rec[k], atol=rec.max() / 65535)
        w = dicomwrappers.wrapper_from_file(str(f))
        assert w.image_shape[:2] == (H, W)
        expect = np.array([0.0, 0.0, 10.0 + 5 * k]) - (H - 1) / 2 * 64 / H * np.array([0, 1, 0]) - \
            (W - 1) / 2 * 96 / W * np.array([1, 0, 0])
        np.testing.assert_allclose(w.affine[:3, 3], expect, atol=1e-3)
        # nibabel's voxel axes are (row, column): down a column is the row direction (A->P), along a row the
        # column direction (R->L), both scaled by their spacing
        np.testing.assert_allclose(w.affine[:3, 0], [0, 64 / H, 0], atol=1e-6)
        np.testing.assert_allclose(w.affine[:3, 1], [96 / W, 0, 0], atol=1e-6)
        np.testing.assert_allclose(np.abs(w.slice_normal), [0, 0, 1], atol=1e-6)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(5.0)


def test_convert_roundtrips(tmp_path, capsys, builtin_file):
    kspace, maps, mask, _ = builtin_arrays(builtin_file)
    for a, b in (("x.mrd", "x.h5"), ("y.cfl", "y.h5")):
        rc, err = run_cli(["convert", builtin_file, tmp_path / a], capsys)
        assert rc == 0, err
        rc, err = run_cli(["convert", tmp_path / a, tmp_path / b], capsys)
        assert rc == 0, err
        with h5py.File(tmp_path / b) as f:
            np.testing.assert_allclose(f["kspace"][()], kspace * mask, atol=1e-6)
            np.testing.assert_array_equal(np.broadcast_to(f["mask"][()], mask.shape), mask)
    np.testing.assert_array_equal(bart_to_molrecon(read_cfl(tmp_path / "y_maps"))[0], maps)
    rc, err = run_cli(["convert", builtin_file, tmp_path / "z.nii"], capsys)
    assert rc == 2 and "output format" in err and not (tmp_path / "z.nii").exists()


def test_partial_readout_lands_at_its_centre_sample(tmp_path, builtin_file):
    kspace, _, mask, _ = builtin_arrays(builtin_file)
    H = kspace.shape[2]
    prob = read_problem(write_mrd(tmp_path / "pf.mrd", kspace, mask, readout_of=lambda e1: H - 5))
    want = kspace * mask
    want[:, :, H - 5:] = 0
    np.testing.assert_allclose(prob.kspace, want, atol=1e-6)
    assert prob.mask.shape == (H, kspace.shape[3]) and not prob.mask[H - 5:].any()


@pytest.mark.parametrize("dims,spatial,mask_shape", [("3d", (6, 8, 10), (8, 10)), ("2d+t", (3, 8, 10), (3, 1, 10)),
                                                     ("2d", (8, 10), (10,))])
def test_ismrmrd_writer_and_reader_agree_in_every_layout(tmp_path, dims, spatial, mask_shape):
    from molrecon.formats import Geometry, RawProblem
    from molrecon.formats.ismrmrd_write import write_ismrmrd

    rng = np.random.default_rng(4)
    S = 2 if dims == "2d" else 1
    shape = (S, 3, *spatial)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    mask = (rng.random(mask_shape) < 0.5).astype(np.float32)
    if dims == "3d":  # a calibration run of 2 encode-1 lines through the centre (e1 = 4, at e2 = 5)
        mask[2:6, 5] = [0, 1, 1, 0]
    else:  # the same through e1 = 5, in every frame
        mask[..., 3:7] = [0, 1, 1, 0]
    prob = RawProblem(kspace=k, mask=mask, dims=dims, source=tmp_path / "x.h5",
                      attrs={"voxel_size_mm": np.array([2.0, 1.5, 1.25])})
    back = read_problem(write_ismrmrd(tmp_path / "x.mrd", prob))
    assert back.dims == dims
    np.testing.assert_allclose(back.kspace, k * mask, atol=1e-6)
    np.testing.assert_array_equal(np.broadcast_to(back.mask, k.shape), np.broadcast_to(mask, k.shape))
    want = prob.image_geometry()
    got = back.image_geometry()
    assert got.voxel_mm == pytest.approx(want.voxel_mm)
    np.testing.assert_allclose(got.row_dir, want.row_dir, atol=1e-6)
    np.testing.assert_allclose(got.col_dir, want.col_dir, atol=1e-6)
    np.testing.assert_allclose(np.array(got.positions), np.array(want.positions), atol=1e-4)
    assert isinstance(want, Geometry) and back.calib_width == 2


def test_dicom_frames_and_a_failed_write_keeps_the_old_series(tmp_path, monkeypatch):
    import pydicom

    from molrecon.formats import Geometry, write_dicom_series

    rng = np.random.default_rng(6)
    frames = rng.random((3, 6, 5)).astype(np.float32)
    geo = Geometry.axial((1, 6, 5), (4.0, 1.5, 2.0))
    out = write_dicom_series(tmp_path / "dyn", frames, geo, frames=True)
    files = sorted(out.glob("*.dcm"))
    ds = [pydicom.dcmread(f) for f in files]
    assert [d.TemporalPositionIdentifier for d in ds] == [1, 2, 3]
    assert len({tuple(d.ImagePositionPatient) for d in ds}) == 1  # one slice position for all frames
    assert len({d.SOPInstanceUID for d in ds}) == 3 and len({d.SeriesInstanceUID for d in ds}) == 1
    before = {f.name: f.read_bytes() for f in files}
    bad = frames.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(tmp_path / "dyn", bad, geo, frames=True)
    assert {f.name: f.read_bytes() for f in sorted(out.glob("*.dcm"))} == before
    calls = []
    save_as = pydicom.dataset.FileDataset.save_as

    def failing_save(self, *args, **kwargs):  # a disk that fills up after the first image
        calls.append(1)
        if len(calls) > 1:
            raise OSError("No space left on device")
        return save_as(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.FileDataset, "save_as", failing_save)
    with pytest.raises(OSError):
        write_dicom_series(tmp_path / "dyn", frames[::-1], geo, frames=True)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in sorted(out.glob("*.dcm"))} == before
    again = write_dicom_series(tmp_path / "dyn", frames, geo, frames=True)  # deterministic: same bytes
    assert {f.name: f.read_bytes() for f in sorted(again.glob("*.dcm"))} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_averages_are_averaged_and_contrasts_stack_on_the_batch_axis(tmp_path):
    import ismrmrd

    from molrecon.formats import RawProblem
    from molrecon.formats.ismrmrd_write import build_header

    rng = np.random.default_rng(7)
    C, H, W = 2, 6, 4
    k = (rng.standard_normal((2, 2, C, H, W)) + 1j * rng.standard_normal((2, 2, C, H, W))).astype(np.complex64)
    xml = build_header(RawProblem(kspace=k[0], mask=np.ones(W), dims="2d", source=tmp_path), (6.0, 4.0, 1.0), 1)
    dset = ismrmrd.Dataset(str(tmp_path / "a.mrd"), "dataset", create_if_needed=True)
    dset.write_xml_header(xml)
    for contrast in range(2):
        for avg in range(2):
            for e1 in range(W):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[contrast, avg, :, :, e1]))
                acq.center_sample = H // 2
                acq.idx.kspace_encode_step_1, acq.idx.average, acq.idx.contrast = e1, avg, contrast
                dset.append_acquisition(acq)
    dset.close()
    prob = read_problem(tmp_path / "a.mrd")
    assert prob.kspace.shape == (2, C, H, W)
    np.testing.assert_allclose(prob.kspace, k.mean(axis=1), atol=1e-6)


def test_too_narrow_calibration_region_falls_back_with_a_warning(tmp_path, builtin_file):
    from molrecon.formats import load_problem

    kspace, _, mask, _ = builtin_arrays(builtin_file)
    W = kspace.shape[-1]
    mask = np.zeros_like(mask)
    mask[::2] = 1
    mask[W // 2 - 2:W // 2 + 2] = 1
    mrd = write_mrd(tmp_path / "n.mrd", kspace, mask, acs=3)
    with pytest.warns(UserWarning, match="too narrow"):
        _, maps, _, _, prob = load_problem(mrd, calib_width=12)
    assert prob.calib_width == 3 and maps.shape == kspace.shape and maps.abs().sum() > 0
