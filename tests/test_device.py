"""The accelerator paths against the CPU: the same operator, the same reconstructions, the same gradients.

Each test runs its computation on ``$MOLRECON_TEST_DEVICE`` (default ``cuda``) and on the CPU and compares the two;
it is skipped where that device is absent (CI has none). ``benchmarks/gpu/run.sh`` runs this file on a lent GPU.
``MOLRECON_TEST_DEVICE=cpu`` runs the same code against itself, which checks the tests, not a device.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from molrecon.data.builtin import builtin_test_example
from molrecon.models.factory import build_model
from molrecon.models.orthogonal import max_min, orthogonal_block
from molrecon.physics import MultiCoilMRI, RandomMask, simulate_coil_maps
from molrecon.precision import use_ieee_float32

DEVICE = os.environ.get("MOLRECON_TEST_DEVICE", "cuda")
use_ieee_float32()  # as a program using the library on a GPU does (TF32 would move MOL's answer by ~1e-3)


def _available(device: str) -> bool:
    kind = torch.device(device).type
    return kind == "cpu" or (kind == "cuda" and torch.cuda.is_available())


pytestmark = pytest.mark.skipif(not _available(DEVICE), reason=f"needs the device {DEVICE!r}")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() - b.cpu()).norm() / b.cpu().norm().clamp_min(1e-30))


def _problem(shape=(32, 28), coils=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    physics = MultiCoilMRI(simulate_coil_maps(shape, coils)[None], RandomMask(0.16, 3.0)(shape, seed=seed))
    x = torch.randn((1, *shape), dtype=torch.complex64, generator=g)
    return physics, x


def test_operator_on_the_device_is_the_cpu_operator():
    physics, x = _problem()
    on_device = physics.to(DEVICE)
    xd = x.to(DEVICE)
    y = torch.randn_like(physics.A(x))
    assert _relative(on_device.A(xd), physics.A(x)) < 1e-5
    assert _relative(on_device.A_adjoint(y.to(DEVICE)), physics.A_adjoint(y)) < 1e-5
    assert _relative(on_device.normal(xd), physics.normal(x)) < 1e-5
    lhs = torch.vdot(on_device.A(xd).flatten(), y.to(DEVICE).flatten())
    rhs = torch.vdot(xd.flatten(), on_device.A_adjoint(y.to(DEVICE)).flatten())
    assert abs(complex(lhs - rhs)) <= 1e-4 * abs(complex(lhs))


@pytest.mark.parametrize("nd", [2, 3])
def test_orthogonal_block_on_the_device_is_its_formula(nd):
    """The custom backward (input kept, MaxMin recomputed, placeholder in the input's layout) on the device's
    convolutions: value and every gradient equal the plain composition's, in float64."""
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 4) + (6,) * nd, (8, 4) + (3,) * nd, (8,), (4, 8) + (3,) * nd, (4,)]
    args = [torch.randn(s, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_() for s in shapes]
    conv = F.conv2d if nd == 2 else F.conv3d
    z, q1, b1, q2, b2 = args
    reference = conv(max_min(conv(z, q1, b1, padding=1)), q2, b2, padding=1)
    out = orthogonal_block(*args, 1)
    torch.testing.assert_close(out, reference)
    v = torch.randn(out.shape, generator=g, dtype=torch.float64).to(DEVICE)
    for got, want in zip(torch.autograd.grad(out, args, v), torch.autograd.grad(reference, args, v)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["modl-2d-4x", "mol-sn-2d-4x", "mol-lr-2d-4x"])
def test_shipped_model_reconstructs_the_same_on_the_device(name):
    """A shipped model on the device reaches the CPU's answer: MoDL to rounding, MOL within what its forward
    tolerance (1e-4 per iteration) leaves between two solves (on the CPU, two starts of the shipped MOL models end
    1e-4 to 2e-4 apart on this slice)."""
    from molrecon import load_pretrained

    y, physics, _ = builtin_test_example(0)
    model = load_pretrained(name)
    with torch.no_grad():
        x_cpu = model(y, physics)
        x_dev = copy.deepcopy(model).to(DEVICE)(y.to(DEVICE), physics.to(DEVICE))
    assert x_dev.device.type == torch.device(DEVICE).type
    assert _relative(x_dev, x_cpu) < (1e-4 if name.startswith("modl") else 5e-3)


@pytest.mark.parametrize("config", [
    {"method": "modl", "K": 3, "cg_iter": 5},
    {"method": "mol-sn", "architecture": "orthogonal", "state_channels": 8, "lipschitz_target": 0.99,
     "max_iter": 60, "tol": 1e-6, "cg_iter": 10},
    {"method": "mol-sn", "architecture": "orthogonal", "state_channels": 8, "lipschitz_target": 0.99,
     "max_iter": 60, "tol": 1e-6, "cg_iter": 10, "backward": "jfb"},
    {"method": "mol-lr", "architecture": "residual", "max_iter": 60, "tol": 1e-6, "cg_iter": 10},
], ids=["modl", "mol-sn-implicit", "mol-sn-jfb", "mol-lr"])
def test_training_gradient_on_the_device_is_the_cpu_gradient(config):
    """One training step's loss and parameter gradient (MoDL through its unrolled graph, MOL through the
    implicit or Jacobian-free backward) agree between the device and the CPU."""
    physics, target = _problem(seed=1)
    y = physics.A(target) + 0.01 * torch.randn_like(physics.A(target))
    torch.manual_seed(0)
    model = build_model({"dims": "2d", "channels": 8, "layers": 3, **config})
    results = []
    for device in ("cpu", DEVICE):
        m = copy.deepcopy(model).to(device)
        m.train()
        x = m(y.to(device), physics.to(device))
        loss = (x - target.to(device)).abs().pow(2).mean()
        grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])
        results.append((float(loss.detach()), torch.cat([g.flatten().cpu() for g in grads])))
    (loss_cpu, g_cpu), (loss_dev, g_dev) = results
    assert torch.isfinite(g_dev).all()
    assert abs(loss_dev - loss_cpu) <= 1e-3 * loss_cpu
    assert float(F.cosine_similarity(g_dev, g_cpu, dim=0)) > 0.999
    assert _relative(g_dev, g_cpu) < 2e-2


def test_training_command_runs_on_the_device(tmp_path):
    """``molrecon train`` with ``device`` set: a few steps, checkpoints and a finite loss."""
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_2d.yaml"
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "molrecon", "train", str(config), "--set", f"device={DEVICE}",
                           "--set", "train.max_steps=3", "--set", f"out_dir={out}", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "last.pt").exists()
    losses = [float(line.split(",")[2]) for line in (out / "train_log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
