"""Correctness of the benchmark code at tiny sizes (the figures themselves are in benchmarks/)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from molrecon.bench.memory_sweep import linear_fit, memory_markdown, run_memory_sweep, summarize_memory
from molrecon.bench.quality import pretrained_for, quality_markdown
from molrecon.bench.speed import (
    ExclusiveTimer,
    TimedMRI,
    dc_iterations_sweep,
    iterations_to_tol,
    profile_inference,
    random_modl,
    random_mol,
    speed_markdown,
)
from molrecon.errors import InputError
from molrecon.solvers.timing import region, timing

TINY = {"2d": {"shape": [16, 16], "coils": 2, "channels": 4, "layers": 3}}


def _tiny_problem(seed: int = 0):
    from molrecon.physics import MultiCoilMRI, mask_for, simulate_coil_maps

    torch.manual_seed(seed)
    shape = (24, 24)
    maps = simulate_coil_maps(shape, 2)[None]
    mask = mask_for("2d", 4.0)(shape, seed=seed, dims="2d")
    physics = MultiCoilMRI(maps, mask, dims="2d")
    x = torch.randn((1, *shape), dtype=torch.complex64)
    return physics.A(x), physics


def test_memory_sweep_rows_follow_the_json_contract(tmp_path):
    from molrecon.cli import main

    rc = main(["bench", "memory", "--out", str(tmp_path), "--dims", "2d", "--methods", "modl", "mol-lr",
               "--modl-iters", "1", "2", "--mol-iters", "1", "3", "--shape-2d", "16", "16", "--coils-2d", "2",
               "--channels-2d", "4", "--layers", "3", "--recipe", "mol-lr-2d-4x"])
    assert rc == 0
    data = json.loads((tmp_path / "memory.json").read_text())
    assert data["complete"] is True and "platform" in data["machine"]
    # the shipped MOL-LR recipe's model settings and its penalty backward, at the benchmark's size
    assert data["settings"]["method_settings"]["mol-lr"]["architecture"] == "orthogonal"
    assert {r["penalty_backward"] for r in data["rows"]} == {"after_data"}
    assert [(r["method"], r["iters"]) for r in data["rows"]] == [("modl", 1), ("modl", 2), ("mol-lr", 1),
                                                                 ("mol-lr", 3)]
    for r in data["rows"]:
        assert {"method", "iters", "dims", "shape", "peak_mib", "device"} <= set(r)
        assert r["dims"] == "2d" and r["shape"] == [16, 16] and r["device"] == "cpu"
        # the peak is a running high-water mark above the step's baseline: never negative, never decreasing
        phases = r["phase_peaks_mib"]
        assert isinstance(r["peak_mib"], float) and r["peak_mib"] >= 0
        assert phases["forward"] <= phases["loss"] <= phases["backward"] <= phases["step"] == r["peak_mib"]
    # MOL is forced to run all max_iter forward iterations (otherwise "flat in max_iter" is vacuous)
    mol = [r for r in data["rows"] if r["method"] == "mol-lr"]
    assert [r["forward_iterations"] for r in mol] == [[1], [3]]
    assert (tmp_path / "memory.png").stat().st_size > 1000
    assert "| 2d |" in (tmp_path / "memory.md").read_text()


def test_memory_sweep_rejects_bad_dims():
    with pytest.raises(InputError, match="dims"):
        run_memory_sweep(["modl"], ["4d"], sizes=TINY)
    with pytest.raises(InputError, match="shape"):
        run_memory_sweep(["modl"], ["3d"], sizes={"3d": {"shape": [8, 8]}})


def test_linear_fit_and_budget_extrapolation():
    a, b, r2 = linear_fit([1, 2, 5], [110.0, 120.0, 150.0])
    assert a == pytest.approx(100.0) and b == pytest.approx(10.0) and r2 == pytest.approx(1.0)
    rows = [{"method": "modl", "iters": k, "dims": "3d", "shape": [8, 8, 8], "device": "cpu",
             "peak_mib": 100.0 + 10.0 * k} for k in (1, 2, 5)]
    rows += [{"method": "mol-lr", "iters": k, "dims": "3d", "shape": [8, 8, 8], "device": "cpu",
              "peak_mib": p} for k, p in ((5, 120.0), (50, 126.0))]
    (s,) = summarize_memory(rows, budget_gib=1.0)
    # 100 + 10 K > 1024 MiB first at K = ceil(92.4) = 93
    assert s["modl_k_exceeding_budget"] == math.ceil((1024 - 100) / 10)
    assert s["mol-lr_last_over_first"] == pytest.approx(1.05)
    assert s["mol-lr_over_modl_k1"] == pytest.approx(126.0 / 110.0)
    assert "MoDL K > 1 GiB" in memory_markdown(rows, [s])


def test_exclusive_timer_charges_the_innermost_label():
    t = ExclusiveTimer()

    def inner():
        with region("inner"):
            time.sleep(0.05)

    with region("outside"):  # no timer active: a no-op
        inner()
    assert t.totals == {} and t.calls == {}
    with timing(t):
        with region("outer"):
            time.sleep(0.05)
            inner()
        with region("absorb", absorb=True):
            inner()
    assert t.totals["inner"] == pytest.approx(0.05, abs=0.03)
    assert t.totals["outer"] == pytest.approx(0.05, abs=0.03)
    assert t.totals["absorb"] == pytest.approx(0.05, abs=0.03)
    assert t.calls == {"outer": 1, "inner": 1, "absorb": 1}


@pytest.mark.parametrize("method", ["mol-sn", "modl"])
def test_speed_profile_shares_sum_to_one_and_restore_the_model(method):
    y, physics = _tiny_problem()
    model = random_modl("2d", K=2, channels=4, layers=3) if method == "modl" else \
        random_mol("mol-sn", "2d", channels=4, layers=3, max_iter=5)
    before = set(vars(model)) | {"__physics__"}
    prof = profile_inference(model, y, physics)
    shares = prof["shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(v >= 0 for v in shares.values())
    assert shares["cnn"] > 0 and shares["fft"] > 0 and prof["cnn_share"] == shares["cnn"]
    assert prof["calls"]["cnn"] >= 2 and prof["calls"]["cg"] >= 1
    if method == "mol-sn":  # MOL's parts, each once per reconstruction
        assert prof["calls"]["init"] == prof["calls"]["final-dc"] == prof["calls"]["error-bound"] == 1
        assert shares["init"] > 0 and shares["final-dc"] > 0
    # nothing is set on the model, the physics or the modules, and the reconstruction is the untimed one
    assert set(vars(model)) | {"__physics__"} == before
    assert "normal" not in vars(physics)
    from molrecon.bench.speed import infer

    x_timed, _ = infer(model, y, TimedMRI.of(physics))
    x_plain, _ = infer(model, y, physics)
    assert torch.equal(x_timed, x_plain)


def test_iterations_to_tol_reports_plain_and_anderson():
    y, physics = _tiny_problem(1)
    model = random_mol("mol-sn", "2d", channels=4, layers=3, max_iter=7, tol=1e-3)
    res = iterations_to_tol(model, [(y, physics)], tol=1e-6, max_iter=60)
    for solver in ("plain", "anderson"):
        assert 1 <= res[solver]["iterations"] <= 60
        assert 0.0 <= res[solver]["converged_fraction"] <= 1.0
    assert res["anderson_over_plain"] == pytest.approx(res["anderson"]["iterations"] / res["plain"]["iterations"])
    # the model's own settings are restored
    assert (model.solver, model.max_iter, model.tol) == ("anderson", 7, 1e-3)


def test_dc_sweep_rows_and_same_answers():
    y, physics = _tiny_problem(2)
    model = random_mol("mol-sn", "2d", channels=4, layers=3, max_iter=9, tol=1e-3, cg_iter=4)
    rows = dc_iterations_sweep(model, [(y, physics)], [2, 12], tol=1e-6, max_iter=300)
    assert [r["cg_iter"] for r in rows] == [2, 4, 12]
    assert [r["own"] for r in rows] == [False, True, False]
    own = rows[1]
    assert own["max_rel_diff_vs_own"] == 0.0
    for r in rows:
        assert r["plain"]["converged_fraction"] == 1.0 and r["anderson"]["converged_fraction"] == 1.0
        assert r["max_rel_diff_vs_own"] < 1e-4  # same fixed point whatever the inner CG budget
    assert model.cg_iter == 4 and (model.solver, model.max_iter, model.tol) == ("anderson", 9, 1e-3)
    md = speed_markdown({"data": "x", "device": "cpu", "threads": 1, "tol": 1e-6, "max_iter": 300,
                         "models": [{"label": "m", "source": "random-init", "time_per_item_s": 1.0,
                                     "dc_sweep": rows}]})
    assert "CG steps per block" in md and "m (own)" in md


def test_quality_pretrained_resolution_and_notes():
    shipped = {"mol-lr-2d-4x", "modl-2d-8x"}
    assert pretrained_for("mol-lr", "2d", 4.0, shipped) == ("mol-lr-2d-4x", "")
    name, note = pretrained_for("mol-lr", "2d", 8.0, shipped)
    assert name == "mol-lr-2d-4x" and "trained at 4×" in note
    assert pretrained_for("modl", "2d", 8.0, shipped) == ("modl-2d-8x", "")
    name, note = pretrained_for("deq", "dynamic", 4.0, shipped)
    assert name is None and "deq-2dt-4x" in note and "skipped" in note
    rows = [{"method": "sense", "acceleration": a, "psnr": 30.0, "psnr_std": 1.0, "ssim": 0.9, "ssim_std": 0.01,
             "num_volumes": 2, "num_slices": 2} for a in (4.0, 8.0)]
    md = quality_markdown({"accelerations": [4.0, 8.0], "rows": rows, "data": "x", "notes": [note]})
    assert "| sense | 30.00 ± 1.00 | 0.9000 ± 0.0100 | 30.00 ± 1.00 |" in md and "skipped" in md


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_saved_bytes_mol_flat_in_max_iter_modl_linear_in_k():
    """By the graph's saved tensors (exact, load-independent): MOL keeps one block whatever max_iter, MoDL one
    CNN + CG graph per unrolled iteration."""
    from molrecon.bench.memory import measure_step_memory

    size = dict(shape=(32, 32), coils=2, channels=8, layers=3, in_process=True)
    for method in ("mol-sn", "mol-lr"):
        few, many = (measure_step_memory(method, k, model_kwargs={"tol": 1e-12, "solver": "plain"}, **size)
                     for k in (5, 50))
        assert many["forward_iterations"][0] > few["forward_iterations"][0] == 5  # more iterations really ran
        assert few["saved_bytes"] > 0
        assert abs(many["saved_bytes"] - few["saved_bytes"]) <= 0.05 * few["saved_bytes"]
    modl = {k: measure_step_memory("modl", k, **size)["saved_bytes"] for k in (1, 2, 4)}
    a, b, r2 = linear_fit(list(modl), list(modl.values()))
    assert b > 0.5 * modl[1] and r2 > 0.999
    assert modl[4] > 3 * few["saved_bytes"]


def test_saved_tensor_meter_counts_storages_once_and_releases_freed_graphs():
    from molrecon.bench.saved import SavedTensorMeter

    w = torch.randn(256, requires_grad=True)
    with SavedTensorMeter() as meter:
        h = w * 2.0                     # saves nothing of size (a scalar factor)
        y = (h * h).sum()               # saves h twice: one storage
        assert meter.live_bytes == 256 * 4
        tmp = (w.exp() * w).sum()       # saves exp(w) (its output) and w
        assert meter.live_bytes == 256 * 4 * 3
        del tmp                         # that graph is freed: its tensors no longer count
        assert meter.live_bytes == 256 * 4 and meter.peak_bytes == 256 * 4 * 3
    y.backward()
    assert meter.live_bytes == 0


def test_allocation_trace_peak_is_the_most_live_at_once_per_phase():
    from molrecon.bench.memory import AllocationTrace

    mib = 2 ** 20
    with AllocationTrace(True) as trace:
        a = torch.empty(mib // 4)          # 1 MiB of float32
        b = torch.empty(2 * mib // 4)      # 2 MiB: 3 live
        trace.mark("first")
        del a
        c = torch.empty(mib // 8)          # 0.5 MiB: 2.5 live, the peak stays 3
        trace.mark("second")
        d = torch.empty(2 * mib // 4)      # 4.5 live: a new peak
        del b, c, d
        trace.mark("third")
        e = torch.empty(5 * mib // 4)      # after the last mark: counts for the overall peak only
        del e
    peak, phases = trace.peaks()
    assert peak == 5 * mib
    assert phases == {"first": 3 * mib, "second": 3 * mib, "third": int(4.5 * mib)}
    off = AllocationTrace(False)
    with off:
        off.mark("nothing")
    assert not off.enabled


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_allocated_peak_is_repeatable_and_grows_with_modl_k_not_mol_max_iter():
    """The exact peak of live tensor memory: the same bytes in every run, at least what the graph keeps, and
    linear in MoDL's K while MOL's stays flat in max_iter."""
    from molrecon.bench.memory import measure_step_memory

    size = dict(shape=(32, 32), coils=2, channels=8, layers=3, in_process=True, allocated=True)
    first, again = (measure_step_memory("modl", 2, **size) for _ in range(2))
    assert first["allocated_peak_bytes"] == again["allocated_peak_bytes"]
    assert first["allocated_peak_bytes"] >= first["saved_bytes"] > 0
    assert set(first["allocated_phase_peaks_bytes"]) == {"forward", "loss", "backward", "step"}
    modl = {k: measure_step_memory("modl", k, **size)["allocated_peak_bytes"] for k in (1, 4)}
    assert modl[4] > 2.5 * modl[1]
    few, many = (measure_step_memory("mol-sn", k, model_kwargs={"tol": 1e-12, "solver": "plain"}, **size)
                 for k in (5, 50))
    assert abs(many["allocated_peak_bytes"] - few["allocated_peak_bytes"]) <= 0.05 * few["allocated_peak_bytes"]



@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_penalty_after_data_lowers_mol_lr_allocated_peak():
    """MOL-LR's penalty backpropagated after the data term (``train.penalty_backward: after_data``): its graphs and
    the recorded block are never live together, so the step's exact peak is lower, at the same loss."""
    from molrecon.bench.memory import measure_step_memory

    size = dict(shape=(32, 32), coils=2, channels=64, layers=3, in_process=True, allocated=True,
                model_kwargs={"tol": 1e-12, "lr_jacobian_steps": 2})
    joint, after = (measure_step_memory("mol-lr", 5, penalty_backward=mode, **size) for mode in ("joint", "after_data"))
    assert after["loss"] == pytest.approx(joint["loss"], rel=1e-5)
    assert set(after["allocated_phase_peaks_bytes"]) == {"forward", "loss", "backward", "penalty",
                                                         "penalty backward", "step"}
    assert after["allocated_peak_bytes"] < 0.9 * joint["allocated_peak_bytes"]
    for method in ("modl", "mol-sn"):  # no penalty: the ordering has nothing to reorder, and must still run
        tiny = dict(shape=(16, 16), coils=2, channels=4, layers=2, in_process=True, penalty_backward="after_data")
        assert measure_step_memory(method, 2, **tiny)["loss"] > 0


def _with_and_without_recompute(model, estimate):
    """``{recompute: (value, weight gradients, bytes autograd keeps after the forward)}`` of ``estimate(recompute)``."""
    from molrecon.bench.saved import SavedTensorMeter

    out = {}
    for recompute in (False, True):
        model.zero_grad()
        with SavedTensorMeter() as meter:
            value = estimate(recompute)
        kept = meter.live_bytes
        value.sum().backward()
        out[recompute] = (value.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], kept)
    assert torch.equal(out[False][0], out[True][0]) and len(out[True][1]) == len(out[False][1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(out[False][1], out[True][1]))
    return out


def test_lipschitz_penalty_recompute_same_value_and_gradient_without_the_graphs():
    """The MOL-LR penalty's CNN graphs are recomputed in backward: bitwise the same estimate and gradient,
    and only the two input images are kept."""
    from molrecon.models import MOL
    from molrecon.models.lipschitz import adversarial_lipschitz

    model = MOL(constraint="lr", dims="2d", channels=8, layers=4)
    u = torch.randn(2, 48, 48, dtype=torch.complex64)

    def estimate(recompute: bool) -> torch.Tensor:
        w = model._weights((48, 48))
        return adversarial_lipschitz(lambda v: model._h(v, w), u, steps=3, recompute=recompute,
                                     generator=torch.Generator().manual_seed(1))

    out = _with_and_without_recompute(model, estimate)
    assert out[True][2] < 0.25 * out[False][2]
    # the backward rebuilds the two CNN graphs one at a time: its peak stays below the two graphs kept without
    # recomputation (rebuilding both at once, as one checkpoint, went above them)
    from molrecon.bench.memory import AllocationTrace

    value = estimate(True)
    with AllocationTrace(True) as trace:
        value.sum().backward()
    assert trace.peaks()[0] < out[False][2]


def test_jacobian_penalty_recompute_same_value_and_gradient_without_the_graph():
    """The Jacobian term's forward-mode JVP is recomputed in backward: bitwise the same norm and gradient, and
    a small part of the bytes kept (the meter also counts forward-mode AD's storage-less zero tangents)."""
    from molrecon.models import MOL
    from molrecon.models.lipschitz import jacobian_norm_along, jacobian_spectral_norm

    torch.manual_seed(0)
    model = MOL(constraint="lr", dims="2d", channels=8, layers=4, architecture="residual", residual_init_gain=1.0)
    u = torch.randn(2, 24, 24, dtype=torch.complex64)
    w = model._weights((24, 24))
    h = lambda v: model._h(v, w)  # noqa: E731
    _, vec = jacobian_spectral_norm(h, u, n_iter=3, return_vector=True)
    out = _with_and_without_recompute(model, lambda recompute: jacobian_norm_along(h, u, vec, recompute=recompute))
    assert out[True][2] < 0.25 * out[False][2]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bench_train_smoke_rows_ratios_and_time_to_target(tmp_path):
    from molrecon.cli import main

    rc = main(["bench", "train", "--out", str(tmp_path), "--synthetic", "16", "2", "--steps", "3", "--val-every",
               "1", "--limit-val", "1", "--channels", "4", "--layers", "3", "--methods", "modl-k1", "modl-k10",
               "mol-lr", "mol-lr@cg_iter=2", "--set", "max_iter=6"])
    assert rc == 0
    data = json.loads((tmp_path / "train.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert data["complete"] and set(rows) == {"modl-k1", "modl-k10", "mol-lr", "mol-lr@cg_iter=2"}
    assert rows["mol-lr@cg_iter=2"]["model"]["cg_iter"] == 2 and rows["mol-lr"]["model"]["cg_iter"] == 5
    assert rows["modl-k10"]["step_over_modl-k10"] == 1.0
    assert rows["mol-lr"]["model"]["max_iter"] == 6 and "max_iter" not in rows["modl-k1"]["model"]
    target = min(r["best_val_psnr"] for r in rows.values())
    for r in rows.values():
        assert len(r["step_times_s"]) == 3 and len(r["val_curve"]) == 3
        assert r["step_time_median_s"] > 0 and r["target_psnr"] == target
        # every method reached the default target (the best PSNR all of them reached), within its training time
        assert 0 < r["time_to_target_s"] <= sum(r["step_times_s"]) + 1e-9
    assert "| 2d | mol-lr |" in (tmp_path / "train.md").read_text()
    assert (tmp_path / "train.png").stat().st_size > 1000


def test_bench_train_rejects_unknown_methods_before_training():
    from molrecon.bench.train import parse_method, run_train_bench

    assert parse_method("mol-lr@cg_iter=15,tol=1e-5") == ("mol-lr", {"cg_iter": 15, "tol": 1e-5})
    with pytest.raises(InputError, match="unknown method"):
        run_train_bench(["modl-k10", "mol-xx"], ["2d"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_method("mol-lr@cg_iter")


def test_shipped_recipe_entries_follow_the_shipped_models_training_configs():
    from molrecon.bench.train import _model_section
    from molrecon.weights.pretrained import pretrained_info

    for name, shipped, changed in (("mol-lr-orthogonal", "mol-lr-2d-4x", {}),
                                   ("mol-sn-orthogonal", "mol-sn-2d-4x", {"cg_iter": 15})):
        config = pretrained_info(shipped)["training"]["config"]
        model, train = _model_section(name, "2d", None, None, None)
        assert model == {**config["model"], **changed}  # the bench's 2D size is the shipped CNN
        assert train == {"fixed_point_cache": True}
    model, _ = _model_section("mol-lr-residual@lr_jacobian_steps=null", "2d", None, None, None)
    assert model["lr_jacobian_steps"] is None and model["lr_threshold"] == 0.9
    # the SLL MOL-SN and the residual MOL-LR shipped before are their config files' model sections (the SLL one at
    # 15 CG steps), with the cache
    from molrecon.train import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    sll = load_config(configs / "mol_sn_2d_sll.yaml")["model"]
    model, train = _model_section("mol-sn-sll", "2d", None, None, None)
    assert model == {**sll, "cg_iter": 15} and train == {"fixed_point_cache": True}
    residual = load_config(configs / "mol_lr_2d.yaml")["model"]
    model, train = _model_section("mol-lr-residual", "2d", None, None, None)
    assert model == residual and train == {"fixed_point_cache": True}


def test_time_to_psnr_first_crossing():
    from molrecon.bench.train import time_to_psnr

    curve = [{"train_seconds": 1.0, "val_psnr": 20.0}, {"train_seconds": 2.0, "val_psnr": 25.0},
             {"train_seconds": 3.0, "val_psnr": 24.0}]
    assert time_to_psnr(curve, 24.5) == 2.0 and time_to_psnr(curve, 19.0) == 1.0
    assert time_to_psnr(curve, 26.0) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bench_train_side_by_side_runs_are_the_runs_alone():
    """Interleaving swaps each trainer's random state in for its step: MOL-LR (random penalty start) trained
    beside MoDL learns exactly what it learns alone; the cached variant warm-starts revisited slices."""
    from molrecon.bench.train import train_side_by_side

    data = {"source": "synthetic", "shape": [12, 12], "num_coils": 2, "num_train": 2, "num_val": 1,
            "limit_val": 1}
    kw = dict(steps=3, val_every=3, channels=4, layers=3, data=data, model_overrides={"max_iter": 8})
    alone = train_side_by_side(["mol-lr"], "2d", **kw)
    beside = train_side_by_side(["modl-k1", "mol-lr", "mol-lr-cached"], "2d", **kw)
    psnrs = [[c["val_psnr"] for c in r["val_curve"]] for r in (alone[0], beside[1])]
    assert psnrs[0] == psnrs[1]
    cached = beside[2]
    # step 3 revisits a slice: its x and its Lipschitz point are found
    assert cached["train_settings"]["fixed_point_cache"] is True and cached["cache_hits"] == 2
    assert cached["model"]["lr_warm_steps"] == 2 and beside[1]["cache_hits"] is None


def test_spectral_norm_sigma_keeps_no_image_sized_tensor_and_same_gradient():
    """MOL-SN's σ = ‖K u‖ is recomputed in backward: only the weight is saved, the gradient is bitwise that of
    the direct graph."""
    import torch.nn.functional as F

    from molrecon.bench.saved import SavedTensorMeter
    from molrecon.models.cnn import conv_power_iteration

    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    u0 = torch.randn(1, 4, 32, 32)
    with SavedTensorMeter() as meter:
        sigma, u = conv_power_iteration(w, u0 / u0.norm(), 2)
    assert meter.live_bytes == w.numel() * 4
    sigma.backward()
    grad = w.grad.clone()
    w.grad = None
    direct = F.conv2d(u, w, padding=(1, 1)).norm()
    direct.backward()
    assert torch.equal(sigma.detach(), direct.detach()) and torch.equal(grad, w.grad)
