"""Evaluation of methods over volumes, the demo, the examples and `molrecon recon` with a pretrained name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import sigpy
import torch

from _tiny_models import TINY_MODL, TINY_MOL_SN, tiny_model, write_checkpoint
from molrecon.cli import main
from molrecon.physics import RandomMask, fft_centered, simulate_coil_maps

ROOT = Path(__file__).resolve().parents[1]
def _phantom(n: int, shift: int) -> np.ndarray:
    """Shepp-Logan with a smooth phase, shifted so that the slices of a volume differ."""
    img = np.roll(sigpy.shepp_logan((n, n)), shift, axis=0)
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    return (np.abs(img) * np.exp(1j * 0.4 * np.pi * (xx + 0.5 * yy))).astype(np.complex64)


def write_volume(path: Path, slices: int = 2, coils: int = 4, n: int = 48, seed: int = 0) -> None:
    """One multicoil file in the fastMRI layout: fully sampled ``kspace`` [S, C, H, W], ``maps``, the
    1-D column ``mask`` (4x, seeded), the complex ``target`` and ``reconstruction_rss``."""
    maps = simulate_coil_maps((n, n), coils)
    targets = np.stack([_phantom(n, 2 * s + seed) for s in range(slices)])
    kspace = fft_centered(maps[None] * torch.from_numpy(targets)[:, None], (-2, -1)).numpy()
    mask = RandomMask(0.08, 4)((n, n), seed=seed).reshape(-1).numpy()
    coil_imgs = maps[None].numpy() * targets[:, None]
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.create_dataset("maps", data=np.repeat(maps[None].numpy(), slices, axis=0).astype(np.complex64))
        f.create_dataset("mask", data=mask.astype(np.float32))
        f.create_dataset("target", data=targets)
        f.create_dataset("reconstruction_rss", data=np.sqrt((np.abs(coil_imgs) ** 2).sum(1)).astype(np.float32))
        f.attrs["max"] = float(np.abs(targets).max())
        f.attrs["dims"] = "2d"


@pytest.fixture
def tiny_data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for v in range(2):
        write_volume(folder / f"vol{v}.h5", seed=v)
    return folder


def tiny_dataset(folder):
    from molrecon.evaluate.evaluation import load_dataset

    return load_dataset(folder)


# --------------------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_command_writes_report(tmp_path, tiny_data, capsys):
    ckpt = write_checkpoint(tmp_path / "modl.pt", tiny_model())
    out = tmp_path / "report"
    rc = main(["evaluate", "--methods", "zero-filled", "sense", "--checkpoint", str(ckpt), "--data",
               str(tiny_data), "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["zero-filled", "sense", "modl"]
    assert report["settings"]["psnr_definition"].startswith("object-support")
    for name, s in report["methods"].items():
        assert np.isfinite(s["psnr"]) and 5 < s["psnr"] < 80, (name, s)
        assert 0 < s["ssim"] <= 1 and 0 < s["nmse"] < 2
        assert s["psnr_std"] >= 0 and s["num_volumes"] == 2 and s["num_slices"] == 4
        assert s["time_per_slice_s"] > 0
    # CG-SENSE unfolds the 4x aliasing that zero-filling leaves
    assert report["methods"]["sense"]["psnr"] > report["methods"]["zero-filled"]["psnr"] + 1.0
    assert report["methods"]["sense"]["nmse"] < report["methods"]["zero-filled"]["nmse"]
    assert report["methods"]["modl"]["source"].startswith("checkpoint:")
    assert len(report["volumes"]) == 2 and len(report["slices"]) == 4
    # the volume data range is the target volume max, as fastMRI
    with h5py.File(tiny_data / "vol0.h5") as f:
        vmax = float(np.abs(f["target"][()]).max())
    vol0 = next(v for v in report["volumes"] if "vol0" in v["fname"])
    assert vol0["data_range"] == pytest.approx(vmax, rel=1e-3)
    assert report["machine"]["torch"] == torch.__version__
    md = (out / "report.md").read_text()
    for name in ("zero-filled", "sense", "modl", "PSNR"):
        assert name in md
    png = (out / "figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "sense" in captured.out


def test_evaluate_iterations_from_model_info(tiny_data):
    """A model that reports ``last_info`` (as MOL and the DEQ do) gets its iterations in the summary."""
    from molrecon.evaluate.evaluation import evaluate, model_runner
    from molrecon.solvers import SolverInfo

    class FixedPoint(torch.nn.Module):
        method_name = "deq"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.last_info = None

        def forward(self, y, physics):
            x = physics.A_adjoint(y) * self.w
            b = x.shape[0]
            self.last_info = SolverInfo(iterations=torch.full((b,), 5), converged=torch.ones(b, dtype=torch.bool))
            return x

    res = evaluate([model_runner(FixedPoint())], tiny_dataset(tiny_data), progress=False)
    s = res["methods"]["deq"]
    assert s["iterations"] == 5 and s["iterations_max"] == 5


def test_evaluate_metric_matches_direct_computation(tiny_data):
    """Zero-filled PSNR of one volume equals the fastMRI formula applied by hand."""
    from molrecon.evaluate.evaluation import classical_runner, evaluate
    from molrecon.metrics import object_support

    ds = tiny_dataset(tiny_data)
    res = evaluate([classical_runner("zero-filled")], ds, progress=False, max_volumes=1)
    from molrecon.data.slice_dataset import collate, physics_from_batch

    items = [ds[i] for i in range(len(ds)) if str(ds[i]["fname"]) == res["volumes"][0]["fname"]]
    batch = collate(items)
    physics = physics_from_batch(batch)
    x = physics.A_adjoint(physics.mask * batch["kspace"]).abs().numpy()
    t = np.abs(np.stack([np.asarray(it["target"]) for it in items]))
    s = np.stack([object_support(ti) for ti in t])
    mse = np.mean((x * s - t * s) ** 2)
    assert res["volumes"][0]["metrics"]["zero-filled"]["psnr"] == pytest.approx(10 * np.log10(t.max() ** 2 / mse),
                                                                               abs=1e-3)


def test_evaluate_rejects_unknown_method(tiny_data, tmp_path):
    rc = main(["evaluate", "--methods", "bogus", "--data", str(tiny_data), "--out", str(tmp_path / "r")])
    assert rc == 2


# --------------------------------------------------------------------------------------------------------
# methods from checkpoints
def test_two_models_of_one_method_get_distinct_labels(tmp_path):
    from molrecon.evaluate.evaluation import resolve_methods

    paths = []
    for run in ("modl_k1", "modl_k10"):
        (tmp_path / run).mkdir()
        paths.append(write_checkpoint(tmp_path / run / "best.pt", tiny_model()))
    runners = resolve_methods(["sense"], paths)
    assert [r.name for r in runners] == ["sense", "modl (modl_k1/best)", "modl (modl_k10/best)"]


# --------------------------------------------------------------------------------------------------------
# demo


def test_demo_on_tiny_dataset(tmp_path, tiny_data, capsys):
    from molrecon.commands.demo import run_demo
    from molrecon.weights.pretrained import save_pretrained

    shipped = tmp_path / "shipped"
    save_pretrained(tiny_model(), dict(TINY_MODL), "modl-2d-4x", root=shipped)
    save_pretrained(tiny_model(TINY_MOL_SN), dict(TINY_MOL_SN), "mol-sn-2d-4x", root=shipped)
    metrics = run_demo(tmp_path / "demo", dataset=tiny_dataset(tiny_data), pretrained_root=shipped,
                       data_description="tiny test set")
    out = capsys.readouterr().out
    assert set(metrics["methods"]) == {"zero-filled", "sense", "cs-wavelet", "modl", "mol-sn"}
    for s in metrics["methods"].values():
        assert {"psnr", "ssim", "nmse", "psnr_std", "iterations", "time_per_slice_s"} <= set(s)
        assert np.isfinite(s["psnr"]) and 0 < s["ssim"] <= 1
    assert metrics["settings"]["average_over"] == "slices"
    assert metrics["methods"]["sense"]["psnr"] > metrics["methods"]["zero-filled"]["psnr"]
    # what is not shipped is said, and skipped, never faked
    assert set(metrics["skipped"]) == {"deq", "mol-lr"}
    mol = metrics["methods"]["mol-sn"]
    assert 1 <= mol["iterations"] <= 8 and mol["source"] == "pretrained:mol-sn-2d-4x"
    assert mol["certificate"]["certified"] is True and mol["certificate"]["L"] < 1
    assert "skipping mol-lr: pretrained model mol-lr-2d-4x is not shipped" in out
    assert (tmp_path / "demo" / "figure.png").exists() and (tmp_path / "demo" / "report.md").exists()
    assert "mol-lr skipped" in (tmp_path / "demo" / "report.md").read_text()


# --------------------------------------------------------------------------------------------------------
# examples


@pytest.fixture(scope="module")
def builtin_2d():
    """The built-in 2D set where the examples will find it ($MOLRECON_DATA or the user cache), built once."""
    from molrecon.data import ensure_builtin

    return ensure_builtin("2d")


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(script, tmp_path, builtin_2d):
    from molrecon.weights.pretrained import available_names

    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("MOLRECON_PRETRAINED_DIR", None)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PSNR" in proc.stdout
    if script == "reconstruct_pretrained_mol.py":
        for name in ("mol-lr-2d-4x", "mol-sn-2d-4x"):
            expected = "certificate: L =" if name in available_names() else f"{name}: not shipped"
            assert expected in proc.stdout
    if script == "evaluate_methods.py":
        report = json.loads((tmp_path / "example_report" / "report.json").read_text())
        assert {"zero-filled", "sense"} <= set(report["methods"])


@pytest.mark.slow
def test_pretrained_example_prints_certificate(tmp_path, builtin_2d):
    """With a MOL-SN exported under the name the example looks for, it reconstructs and prints the certificate.
    (The tiny model is untrained: this checks the code path, not the quality.)"""
    from molrecon.weights.pretrained import save_pretrained

    small = dict(TINY_MOL_SN, max_iter=5)
    save_pretrained(tiny_model(small), small, "mol-sn-2d-4x", root=tmp_path / "shipped")
    env = dict(os.environ, OMP_NUM_THREADS="1", MOLRECON_PRETRAINED_DIR=str(tmp_path / "shipped"))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "reconstruct_pretrained_mol.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mol-lr-2d-4x: not shipped in this installation (shipped: mol-sn-2d-4x)" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("  certificate"))
    assert "certified = True" in line
    assert 0 < float(line.split("L = ")[1].split()[0]) < 1


def test_recon_command_with_pretrained_name(tmp_path, tiny_data, monkeypatch, capsys):
    """`molrecon recon --method modl --pretrained NAME` reconstructs with a shipped model; a name holding
    another method is refused."""
    from molrecon.weights.pretrained import save_pretrained

    save_pretrained(tiny_model(), dict(TINY_MODL), "modl-2d-4x", root=tmp_path / "shipped")
    monkeypatch.setenv("MOLRECON_PRETRAINED_DIR", str(tmp_path / "shipped"))
    out = tmp_path / "rec.h5"
    rc = main(["recon", "--method", "modl", "--pretrained", "modl-2d-4x", "--input", str(tiny_data / "vol0.h5"),
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["reconstruction"].shape == (2, 48, 48) and np.isfinite(f["reconstruction"][()]).all()
    rc = main(["recon", "--method", "mol-lr", "--pretrained", "modl-2d-4x", "--input", str(tiny_data / "vol0.h5"),
               "--out", str(tmp_path / "x.h5")])
    assert rc == 2 and "not 'mol-lr'" in capsys.readouterr().err


