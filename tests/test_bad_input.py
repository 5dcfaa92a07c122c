"""Bad input through every command: one table of cases, each asserting the same four things.

For every case: exit code 2; exactly one line on stderr, ``error: ...``, naming the file (or name) at fault
and the problem; no output (nor a temporary file) left behind; and an output that existed before unchanged
(sha256). The cases are the classes found by trying the CLI as a hostile user would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import sigpy
import torch

from molrecon.cli import main
from molrecon.physics import RandomMask, fft_centered, simulate_coil_maps

N = 24


def write_scan(path: Path, n: int = N, with_maps: bool = True, mutate: Callable | None = None) -> Path:
    img = torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))
    maps = simulate_coil_maps((n, n), 4)
    mask = RandomMask(0.25, 2)((n, n), seed=0)
    data = {"kspace": (fft_centered(maps * img, (-2, -1)) * mask)[None].numpy(), "mask": mask.numpy()}
    if with_maps:
        data["maps"] = maps[None].numpy()
    if mutate:
        mutate(data)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if isinstance(v, dict):
                g = f.create_group(k)
                for kk, vv in v.items():
                    g.create_dataset(kk, data=vv)
            elif v is not None:
                f.create_dataset(k, data=v)
    return path


def write_radial(path: Path, n: int = N, with_maps: bool = True, mutate: Callable | None = None) -> Path:
    """A small non-Cartesian file (docs/formats.md): 12 golden-angle spokes of 2n samples, shared trajectory."""
    from molrecon.physics import NonCartesianMRI, radial_trajectory

    img = torch.from_numpy(sigpy.shepp_logan((n, n)).astype(np.complex64))[None]
    maps = simulate_coil_maps((n, n), 4)[None]
    traj = radial_trajectory(12, 2 * n, image_size=n)
    data = {"kspace": NonCartesianMRI(maps, traj).A(img).numpy(), "trajectory": traj.numpy(),
            "maps": maps.numpy() if with_maps else None}
    attrs = {} if with_maps else {"matrix": np.array([n, n])}
    if mutate:
        mutate(data) if mutate.__code__.co_argcount == 1 else mutate(data, attrs)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def radial(method: str = "sense", *extra, mutate=None, with_maps=True):
    def build(tmp: Path):
        inp = write_radial(tmp / "radial.h5", with_maps=with_maps, mutate=mutate)
        return ["recon", "--method", method, "--input", inp, "--out", tmp / "out.h5", *extra], str(inp), \
            [tmp / "out.h5"]
    return build


def _traj_outside(d):
    d["trajectory"] = d["trajectory"] * 1.5


def _no_size(d, attrs):
    d["maps"] = None
    attrs.pop("matrix", None)


def tiny_checkpoint(path: Path, mutate: Callable | None = None) -> Path:
    from molrecon.models import build_model
    from molrecon.weights.checkpoint import save_checkpoint

    cfg = {"method": "modl", "K": 1, "dims": "2d", "channels": 4, "layers": 2, "cg_iter": 2}
    state = build_model(dict(cfg)).state_dict()
    if mutate:
        mutate(state)
    save_checkpoint(path, {"model_state": state, "model_config": cfg}, check_finite=False)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Case:
    """``build(tmp) -> (argv, named, outputs)``: ``named`` must appear in the error; ``outputs`` are the paths
    the command would write (pre-filled with a previous result when ``previous``)."""

    id: str
    build: Callable[[Path], tuple[list, str, list[Path]]]
    needle: str
    previous: bool = True


def recon(method: str = "sense", *extra, mutate=None, with_maps=True, n=N, out="out.h5", nifti=None):
    def build(tmp: Path):
        inp = write_scan(tmp / "scan.h5", n=n, with_maps=with_maps, mutate=mutate)
        outs = [tmp / out]
        argv = ["recon", "--method", method, "--input", inp, "--out", tmp / out, *extra]
        if nifti is not None:
            argv += ["--nifti", tmp / nifti]
            outs.append(tmp / nifti)
            return argv, str(tmp / nifti), outs  # the NIfTI name is the problem
        return argv, str(inp), outs
    return build


def recon_ckpt(method: str, make: Callable[[Path], Path]):
    def build(tmp: Path):
        inp = write_scan(tmp / "scan.h5")
        ck = make(tmp)
        return ["recon", "--method", method, "--checkpoint", ck, "--input", inp, "--out", tmp / "out.h5"], \
            str(ck), [tmp / "out.h5"]
    return build


def recon_pretrained(name: str, method: str = "mol-lr"):
    def build(tmp: Path):
        inp = write_scan(tmp / "scan.h5")
        return ["recon", "--method", method, "--pretrained", name, "--input", inp, "--out", tmp / "out.h5"], \
            name, [tmp / "out.h5"]
    return build


def recon_raw(write: Callable[[Path], None], *extra):
    def build(tmp: Path):
        inp = tmp / "scan.h5"
        write(inp)
        return ["recon", "--method", "sense", "--input", inp, "--out", tmp / "out.h5", *extra], str(inp), \
            [tmp / "out.h5"]
    return build


def recon_out(make_out: Callable[[Path], Path], nifti: bool = False):
    """An output path that is itself the problem (named in the error)."""
    def build(tmp: Path):
        inp = write_scan(tmp / "scan.h5")
        bad = make_out(tmp)
        if nifti:
            return ["recon", "--method", "zero-filled", "--input", inp, "--out", tmp / "out.h5", "--nifti", bad], \
                str(bad), [tmp / "out.h5"]
        return ["recon", "--method", "zero-filled", "--input", inp, "--out", bad], str(bad), []
    return build


def info(write: Callable[[Path], None]):
    def build(tmp: Path):
        inp = tmp / "scan.h5"
        write(inp)
        return ["info", inp], str(inp), []
    return build


def train(text: str | None, *sets: str, out_dir: str = "run"):
    def build(tmp: Path):
        cfg = tmp / "cfg.yaml"
        cfg.write_text(text if text is not None else
                       f"model: {{method: mol-lr, channels: 4, layers: 2}}\nout_dir: {tmp / out_dir}\n"
                       f"data: {{source: synthetic, shape: [16, 16], num_train: 2, num_val: 1}}\n"
                       f"train: {{max_steps: 1, tensorboard: false, progress: false}}\n")
        sets_ = [s.format(tmp=tmp) for s in sets]
        named = next((s.split("=", 1)[1] for s in sets_ if s.startswith("out_dir=")), str(cfg))
        return ["train", cfg, *[a for s in sets_ for a in ("--set", s)]], named, [tmp / out_dir]
    return build


def evaluate(make_out: Callable[[Path], Path], *extra):
    def build(tmp: Path):
        out = make_out(tmp)
        return ["evaluate", "--methods", "zero-filled", "--data", tmp / "nodata", "--out", out, *extra], \
            str(out if not extra else tmp / "nodata"), []
    return build


# -- mutations of the input file ----------------------------------------------------------------------------
def _set(key, value):
    def mutate(d):
        d[key] = value(d) if callable(value) else value
    return mutate


def _nan_kspace(d):
    d["kspace"][0, 0, 3, 3] = np.nan


def _inf_maps(d):
    d["maps"][0, 0, 2, 2] = np.inf


def _huge(path: Path):
    with h5py.File(path, "w") as f:  # declared 512 GiB, stored in a few KiB: nothing must be allocated
        f.create_dataset("kspace", shape=(1000, 64, 1024, 1024), dtype=np.complex64, chunks=(1, 1, 64, 64))


def _kspace_string(path: Path):
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data="not k-space")


def _kspace_group(path: Path):
    with h5py.File(path, "w") as f:
        f.create_group("kspace").create_dataset("x", data=np.zeros(3))


def _no_kspace(path: Path):
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=np.zeros((1, 4, 4)))


def _text(path: Path):
    path.write_text("this is not HDF5")


def _truncated(path: Path):
    write_scan(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _empty_kspace(path: Path):
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(0, 4, 8, 8), dtype=np.complex64)


def _random_bytes(tmp: Path) -> Path:
    p = tmp / "noise.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _nan_weights(tmp: Path) -> Path:
    def mutate(state):
        next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    return tiny_checkpoint(tmp / "nan.pt", mutate)


def _wrong_shape(tmp: Path) -> Path:
    def mutate(state):
        key = next(k for k, v in state.items() if v.ndim == 4)
        state[key] = torch.zeros(3, 3, 3, 3)
    return tiny_checkpoint(tmp / "shape.pt", mutate)


def _file(name):
    def make(tmp: Path) -> Path:
        (tmp / name).write_text("a file")
        return tmp / name
    return make


def _dir(name):
    def make(tmp: Path) -> Path:
        (tmp / name).mkdir()
        return tmp / name
    return make


def _under_file(name):
    def make(tmp: Path) -> Path:
        (tmp / "plain").write_text("a file")
        return tmp / "plain" / name
    return make


def _the_input(tmp: Path) -> Path:
    return tmp / "scan.h5"


CASES = [
    # input files
    Case("kspace-nan", recon(mutate=_nan_kspace), "NaN"),
    Case("maps-inf", recon(mutate=_inf_maps), "NaN or Inf"),
    Case("maps-coils", recon(mutate=_set("maps", lambda d: d["maps"][:, :3])), "coils"),
    Case("kspace-real", recon(mutate=_set("kspace", lambda d: d["kspace"].real.copy())), "complex"),
    Case("kspace-rank", recon(mutate=_set("kspace", lambda d: d["kspace"][0])), "shape"),
    Case("mask-empty", recon(mutate=_set("mask", lambda d: np.zeros_like(d["mask"]))), "empty"),
    Case("mask-shape", recon(mutate=_set("mask", np.ones(7, np.float32))), "mask"),
    Case("maps-group", recon(mutate=_set("maps", {"a": np.zeros(3)})), "group"),
    Case("kspace-string", recon_raw(_kspace_string), "expected numbers"),
    Case("kspace-group", recon_raw(_kspace_group), "group"),
    Case("kspace-missing", recon_raw(_no_kspace), "missing HDF5 key 'kspace'"),
    Case("kspace-empty", recon_raw(_empty_kspace), "empty"),
    Case("kspace-huge", recon_raw(_huge), "above the limit"),
    Case("not-hdf5", recon_raw(_text), "not an HDF5 file"),
    Case("truncated", recon_raw(_truncated), "HDF5"),
    Case("missing-input", lambda tmp: (["recon", "--method", "sense", "--input", tmp / "absent.h5", "--out",
                                        tmp / "out.h5"], str(tmp / "absent.h5"), [tmp / "out.h5"]), "not found"),
    Case("espirit-tiny", recon(with_maps=False, n=4), "too small"),
    # non-Cartesian files (kspace on a trajectory)
    Case("radial-traj-outside", radial(mutate=_traj_outside), "outside the k-space edge"),
    Case("radial-traj-samples", radial(mutate=_set("trajectory", lambda d: d["trajectory"][:-5])),
         "to match 'kspace'"),
    Case("radial-traj-ndim", radial(mutate=_set("trajectory", lambda d: d["trajectory"][:, :1])), "trajectory"),
    Case("radial-traj-nan", radial(mutate=_set("trajectory", lambda d: np.where(
        np.arange(d["trajectory"].size).reshape(d["trajectory"].shape) == 3, np.nan, d["trajectory"]))),
        "'trajectory' contains NaN"),
    Case("radial-kspace-inf", radial(mutate=_set("kspace", lambda d: d["kspace"] * np.inf)), "NaN or Inf"),
    Case("radial-no-size", radial(mutate=_no_size), "missing image size"),
    Case("radial-matrix-bad", radial(mutate=lambda d, a: a.update(matrix=np.array([N, 0]))), "'matrix'"),
    Case("radial-maps-coils", radial(mutate=_set("maps", lambda d: d["maps"][:, :3])), "do not fit"),
    Case("radial-dcf-shape", radial(mutate=_set("dcf", np.ones(7, np.float32))), "'dcf' has shape"),
    Case("radial-dcf-negative", radial(mutate=_set("dcf", lambda d: -np.ones(d["kspace"].shape[-1], np.float32))),
         "'dcf' must be real and >= 0"),
    Case("radial-kspace-real", radial(mutate=_set("kspace", lambda d: d["kspace"].real.copy())), "complex"),
    # solver arguments
    Case("max-iter-0", recon("sense", "--max-iter", "0"), "--max-iter must be >= 1"),
    Case("max-iter-neg", recon("cs-wavelet", "--max-iter", "-5"), "--max-iter must be >= 1"),
    Case("lam-nan", recon("sense", "--lam", "nan"), "--lam must be a finite number"),
    Case("lam-inf", recon("cs-tv", "--lam", "inf"), "--lam must be a finite number"),
    Case("lam-negative", recon("cs-wavelet", "--lam", "-1"), "--lam must be a finite number"),
    Case("calib-width-0", recon("sense", "--calib-width", "0", with_maps=False), "--calib-width"),
    Case("checkpoint-classical", recon("sense", "--checkpoint", "x.pt"), "applies to the learned methods"),
    Case("pretrained-classical", recon("cs-tv", "--pretrained", "mol-lr-2d-4x"), "applies to the learned"),
    Case("learned-no-weights", recon("mol-lr"), "needs --checkpoint"),
    Case("lam-learned", recon("modl", "--pretrained", "modl-2d-4x", "--lam", "1"), "applies to the classical"),
    # weights
    Case("pretrained-path", recon_pretrained("../../x"), "is not a model name"),
    Case("pretrained-unknown", recon_pretrained("mol-lr-9d-4x"), "unknown pretrained model"),
    Case("pretrained-wrong-method", recon_pretrained("modl-2d-4x", "mol-lr"), "holds a 'modl' model"),
    Case("checkpoint-random-bytes", recon_ckpt("modl", _random_bytes), "not a torch checkpoint"),
    Case("checkpoint-nan-modl", recon_ckpt("modl", _nan_weights), "NaN/Inf in"),
    Case("checkpoint-shape", recon_ckpt("modl", _wrong_shape), "has shape (3, 3, 3, 3)"),
    Case("checkpoint-missing", recon_ckpt("modl", lambda tmp: tmp / "absent.pt"), "not found"),
    # output paths
    Case("out-is-input", recon_out(_the_input), "same file as the input"),
    Case("out-is-dir", recon_out(_dir("outdir")), "is a folder"),
    Case("out-under-file", recon_out(_under_file("out.h5")), "is a file, not a folder"),
    Case("out-nifti-name", recon_out(lambda tmp: tmp / "out.nii.gz"), "must end in .h5"),
    Case("nifti-bad-name", recon("zero-filled", nifti="recon.png"), "must end in .nii"),
    Case("nifti-h5-name", recon_out(lambda tmp: tmp / "scan.h5", nifti=True), "must end in .nii"),
    Case("nifti-is-dir", recon_out(_dir("n.nii.gz"), nifti=True), "is a folder"),
    Case("nifti-under-file", recon_out(_under_file("r.nii"), nifti=True), "is a file, not a folder"),
    # info
    Case("info-string", info(_kspace_string), "expected numbers", previous=False),
    Case("info-group", info(_kspace_group), "group", previous=False),
    Case("info-missing", info(lambda p: None), "not found", previous=False),
    Case("info-text", info(_text), "not an HDF5 file", previous=False),
    # train
    Case("train-empty-yaml", train(""), "config is empty", previous=False),
    Case("train-set-section", train(None, "train=5"), "'train' is a section", previous=False),
    Case("train-channels-type", train(None, "model.channels=abc"), "model.channels", previous=False),
    Case("train-acceleration-type", train(None, "data.acceleration=fast"), "data.acceleration", previous=False),
    Case("train-grad-clip-type", train(None, "train.grad_clip=x"), "train.grad_clip", previous=False),
    Case("train-python-tag", train("model: !!python/object/apply:os.system ['true']\n"), "not a valid YAML",
         previous=False),
    Case("train-out-dir-under-file", train(None, "out_dir={tmp}/plain/run"), "is a file, not a folder",
         previous=False),
    # evaluate
    Case("evaluate-out-file", evaluate(_file("report.txt")), "is a file", previous=False),
    Case("evaluate-out-under-file", evaluate(_under_file("rep")), "is a file, not a folder", previous=False),
    Case("evaluate-max-slices-0", evaluate(lambda tmp: tmp / "rep", "--max-slices", "0"), "--max-slices",
         previous=False),
]


def _leftovers(tmp: Path, before: set[Path]) -> list[Path]:
    return sorted(p for p in tmp.rglob("*") if p not in before and (p.name.startswith(".") or p.suffix == ".tmp"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(tmp_path, capsys, case):
    if case.id == "train-out-dir-under-file":
        (tmp_path / "plain").write_text("a file")
    argv, named, outputs = case.build(tmp_path)
    previous = {}
    for out in outputs:
        if case.previous and not out.exists():
            out.write_bytes(b"previous result " + out.name.encode())
        if out.exists() and out.is_file():
            previous[out] = sha(out)
    if case.id == "out-is-input":
        previous[tmp_path / "scan.h5"] = sha(tmp_path / "scan.h5")
    before = set(tmp_path.rglob("*"))
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0], f"{named!r} not named in {lines[0]!r}"
    assert case.needle in lines[0], f"{case.needle!r} not in {lines[0]!r}"
    for out, digest in previous.items():
        assert sha(out) == digest, f"{out} was changed by a failing command"
    for out in outputs:
        if out not in previous:
            assert not out.exists(), f"{out} was created by a failing command"
    assert not _leftovers(tmp_path, before)


def test_table_covers_enough_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    inp = write_scan(tmp_path / "scan.h5")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc = main(["recon", "--method", "zero-filled", "--input", str(inp), "--out", str(ro / "o.h5")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and "not writable" in err and len(err.splitlines()) == 1
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o755)
