"""Peak memory of ONE training step (forward + backward + optimiser step), measured in a fresh subprocess.

A fresh interpreter per measurement keeps allocator caches and earlier peaks out of the number.

* CPU: the process's peak resident set size during the step minus its resident size just before it (after
  imports, data and model creation and a garbage collection). On Linux the kernel's high-water mark (VmHWM,
  the quantity behind ``ru_maxrss``) is reset first via ``/proc/self/clear_refs``, so transient set-up peaks
  cannot hide the step's; elsewhere it falls back to the ``ru_maxrss`` delta.
* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus ``memory_allocated`` before it.
* Allocated (exact, both devices): the most tensor memory live at any moment of the step, above what was live
  before it. On CUDA this is the figure above. On CPU it comes from a second fresh child that runs the same step
  under ``torch.profiler`` with ``profile_memory``: every allocation and free of PyTorch's CPU allocator
  (tensors, convolution workspaces) in order, summed. Unlike peak RSS it does not depend on the C allocator's
  caching or on the machine's load: the same step gives the same bytes in every run.

Methods are built by functions registered in :data:`STEP_BUILDERS` (``"mol-sn"``, ``"mol-lr"``, ``"deq"``,
``"modl"`` — for MoDL ``max_iter`` is the number ``K`` of unrolled iterations, with the same CNN as MOL); another
method plugs in with :func:`register_method` — the builder receives the parsed spec and returns
``(model, forward)`` where ``forward(y, physics) -> x`` — or is found in :data:`LAZY_BUILDERS`
(``"module:function"``) and imported in the child process. The child is a fresh interpreter, so a builder
registered at run time in the parent is not seen there: register it at import time of a module named in
:data:`LAZY_BUILDERS`.

Example
-------
>>> row = measure_step_memory("mol-sn", max_iter=2, shape=(32, 32))
>>> row["method"], row["device"], row["peak_bytes"] > 0
('mol-sn', 'cpu', True)
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InputError, MolreconError
from ..evaluate.report import markdown_table
from ..names import DIMS, FIXED_POINT_METHODS, LEARNED_METHODS
from .saved import SavedTensorMeter

# name -> builder(spec) -> (model, forward(y, physics) -> x)
STEP_BUILDERS: dict[str, Callable] = {}
# name -> "module:function" imported in the child (for methods defined in modules not imported here)
LAZY_BUILDERS: dict[str, str] = {}


def register_method(name: str, builder: Callable) -> None:
    """Register ``builder(spec: dict) -> (model, forward)`` for ``method=name``."""
    STEP_BUILDERS[name] = builder


def _build_learned(spec: dict):
    """Any learned method through :func:`molrecon.models.build_method`: ``max_iter`` is MOL's ``max_iter`` and
    MoDL's ``K`` (unrolled iterations, the same CNN ``channels`` × ``layers``); ``model_kwargs`` may set e.g.
    MoDL's ``cg_iter`` (default 10, the authors'), ``lam``."""
    from ..models import build_method

    kw = dict(spec.get("model_kwargs") or {})
    model = build_method(spec["method"], spec["max_iter"], dims=spec["dims"], channels=spec["channels"],
                         layers=spec["layers"], **kw)

    def forward(y, physics):
        return model(y, physics)

    return model, forward


for _m in LEARNED_METHODS:
    register_method(_m, _build_learned)


def _resolve(name: str) -> Callable:
    if name in STEP_BUILDERS:
        return STEP_BUILDERS[name]
    if name in LAZY_BUILDERS:
        mod, fn = LAZY_BUILDERS[name].split(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise InputError(f"memory benchmark: method {name!r} needs {LAZY_BUILDERS[name]} ({e})") from None
    raise InputError(f"memory benchmark: unknown method {name!r}; known: "
                     f"{sorted(set(STEP_BUILDERS) | set(LAZY_BUILDERS))}")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def _reset_hwm() -> bool:
    """Reset the peak-RSS mark (Linux: ``echo 5 > /proc/self/clear_refs``) so that transient set-up peaks
    (imports, coil-map simulation) do not hide the step's own peak; ``False`` where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024
    except OSError:
        return False


def _child(spec: dict) -> dict:
    """Run in the fresh process: build data + model, measure one training step."""
    import torch

    from ..physics import MultiCoilMRI, mask_for, simulate_coil_maps

    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec.get("threads", 1))
    dev = torch.device(spec["device"])
    shape = tuple(spec["shape"])
    maps = simulate_coil_maps(shape, spec["coils"], dims=spec["dims"])[None]
    maps = maps.repeat(spec["batch"], *([1] * (len(shape) + 1)))
    mask = mask_for(spec["dims"], spec["acceleration"])(shape, seed=spec["seed"], dims=spec["dims"])
    physics = MultiCoilMRI(maps.to(dev), mask.to(dev), dims=spec["dims"])
    g = torch.Generator().manual_seed(spec["seed"])
    target = torch.randn((spec["batch"], *shape), generator=g, dtype=torch.complex64).to(dev)
    y = physics.A(target)
    model, forward = _resolve(spec["method"])(spec)
    model = model.to(dev).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        hwm_ok = _reset_hwm()
        base = _status_kib("VmRSS") * 1024 if hwm_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def high_water() -> int:
        """Peak so far in bytes above ``base`` (a running maximum, so successive reads locate the phase)."""
        if dev.type == "cuda":
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated(dev) - base)
        now = (_status_kib("VmHWM") * 1024 if hwm_ok
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return int(now - base)

    # the running peak after each phase tells which phase sets the step's peak (diagnostics for the report)
    phases: dict[str, int] = {}
    allocations = AllocationTrace(spec.get("trace_allocations", False) and dev.type == "cpu")
    t0 = time.perf_counter()
    # the graph's saved tensors are counted exactly (load- and allocator-independent), beside the peaks
    with allocations, SavedTensorMeter() as meter:
        x = forward(y, physics)
        phases["forward"] = high_water()
        allocations.mark("forward")
        saved_forward = meter.live_bytes
        loss = (x.abs() - target.abs()).pow(2).mean()
        extra = getattr(model, "extra_loss", None)
        if callable(extra):
            loss = loss + extra(x, target)[0]
        phases["loss"] = high_water()
        allocations.mark("loss")
        saved = {"saved_bytes": meter.live_bytes, "saved_forward_bytes": saved_forward,
                 "saved_peak_bytes": meter.peak_bytes, "saved_by_producer_bytes": meter.breakdown()}
        opt.zero_grad()
        loss.backward()
        phases["backward"] = high_water()
        allocations.mark("backward")
        opt.step()
        peak = phases["step"] = high_water()
        allocations.mark("step")
    seconds = time.perf_counter() - t0
    if allocations.enabled:
        saved["allocated_peak_bytes"], saved["allocated_phase_peaks_bytes"] = allocations.peaks()
    elif dev.type == "cuda":
        saved["allocated_peak_bytes"], saved["allocated_phase_peaks_bytes"] = int(peak), dict(phases)
    info = getattr(model, "last_info", None)
    iters = info.iterations.tolist() if info is not None else None
    binfo = getattr(model, "last_backward_info", None)
    back_iters = binfo.iterations.tolist() if binfo is not None else None
    return {"method": spec["method"], "max_iter": spec["max_iter"], "shape": list(shape), "dims": spec["dims"],
            "device": dev.type, "peak_bytes": int(peak), "baseline_bytes": int(base),
            "forward_iterations": iters, "backward_iterations": back_iters, "step_seconds": seconds,
            "loss": float(loss.detach()), "phase_peaks_bytes": phases, **saved,
            "measure": "cuda.max_memory_allocated" if dev.type == "cuda"
            else ("VmHWM after reset - VmRSS" if hwm_ok else "ru_maxrss delta")}


class AllocationTrace:
    """The exact peak of live CPU tensor memory over a step, from the profiler's allocation records.

    ``mark(name)`` ends a phase; :meth:`peaks` returns the running peak (bytes above the start) overall and at
    the end of each phase. Disabled, it does nothing (the RSS child runs without the profiler's own overhead).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._profile = None

    def __enter__(self) -> AllocationTrace:
        if self.enabled:
            from torch.profiler import ProfilerActivity, profile

            self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._profile is not None:
            self._profile.__exit__(*exc)

    def mark(self, name: str) -> None:
        if self.enabled:
            import torch

            # a zero-size marker op: its record's timestamp ends the phase on the profiler's own clock
            with torch.profiler.record_function(f"molrecon_phase::{name}"):
                pass

    def peaks(self) -> tuple[int, dict[str, int]]:
        records = self._profile.profiler.kineto_results.events()
        ends = sorted((e.start_ns(), e.name().split("::", 1)[1]) for e in records
                      if e.name().startswith("molrecon_phase::"))
        memory = sorted((e.start_ns(), e.nbytes()) for e in records if e.name() == "[memory]")
        live = peak = 0
        phase_peaks: dict[str, int] = {}
        events = iter(memory)
        pending = next(events, None)
        for end, name in ends:
            while pending is not None and pending[0] <= end:
                live += pending[1]
                peak = max(peak, live)
                pending = next(events, None)
            phase_peaks[name] = peak
        return peak, phase_peaks


def measure_step_memory(method: str = "mol-sn", max_iter: int = 10, shape: Sequence[int] = (64, 64),
                        dims: str | None = None, coils: int = 4, channels: int = 64, layers: int = 5,
                        batch: int = 1, acceleration: float = 4.0, device: str = "cpu", seed: int = 0,
                        threads: int = 1, model_kwargs: dict | None = None, timeout: float = 600.0,
                        repeats: int = 1, in_process: bool = False, allocated: bool = False, **extra) -> dict:
    """Peak memory in bytes of one training step of ``method`` in a fresh Python process.

    ``in_process=True`` runs the step in this interpreter instead: the peak then includes whatever this process
    already holds and means little, but ``saved_bytes`` (the graph's saved tensors) and the allocated peak are
    exact either way — the fast path for tests of the graph's size.

    ``allocated``: also measure the exact peak of live tensor memory, ``allocated_peak_bytes`` (and
    ``allocated_phase_peaks_bytes``); on CPU in a second child under the profiler (module docstring), so that
    the profiler's own records do not enter the peak RSS of the first.

    ``extra`` keys are passed through in the spec (for builders registered by other methods, e.g. MoDL's
    number of unrolled iterations). Returns the child's result dict (``peak_bytes`` etc.); with ``repeats > 1``
    each repeat is a fresh process and ``peak_bytes`` is their median (``peaks`` lists all), which damps the
    noise of ``ru_maxrss`` on a loaded machine.
    """
    if repeats > 1:
        runs = [measure_step_memory(method, max_iter, shape, dims, coils, channels, layers, batch, acceleration,
                                    device, seed, threads, model_kwargs, timeout, 1, in_process,
                                    allocated and i == 0, **extra)
                for i in range(repeats)]  # the allocated peak is the same in every run: measured once
        peaks = sorted(r["peak_bytes"] for r in runs)
        out = dict(runs[0])
        out.update(peak_bytes=peaks[len(peaks) // 2], peaks=[r["peak_bytes"] for r in runs])
        return out
    if dims is None:
        dims = "2d" if len(shape) == 2 else "3d"
    spec = {"method": method, "max_iter": int(max_iter), "shape": [int(s) for s in shape], "dims": dims,
            "coils": int(coils), "channels": int(channels), "layers": int(layers), "batch": int(batch),
            "acceleration": float(acceleration), "device": device, "seed": int(seed), "threads": int(threads),
            "model_kwargs": model_kwargs or {}, **extra}
    if method not in STEP_BUILDERS and method not in LAZY_BUILDERS:
        _resolve(method)  # raises the clear error
    out = _run_child(spec, timeout, in_process)
    if allocated and "allocated_peak_bytes" not in out:
        traced = _run_child({**spec, "trace_allocations": True}, timeout, in_process)
        out["allocated_peak_bytes"] = traced["allocated_peak_bytes"]
        out["allocated_phase_peaks_bytes"] = traced["allocated_phase_peaks_bytes"]
    return out


def _run_child(spec: dict, timeout: float, in_process: bool) -> dict:
    """:func:`_child` in this interpreter (``in_process``) or in a fresh one."""
    if in_process:
        import torch

        threads_before = torch.get_num_threads()
        try:
            return _child(spec)
        finally:
            torch.set_num_threads(threads_before)
    proc = subprocess.run([sys.executable, "-m", "molrecon.bench.memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise MolreconError(f"memory benchmark child failed for {spec['method']}: {tail[0]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise MolreconError(f"memory benchmark child for {spec['method']} printed no result")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    print(json.dumps(_child(spec)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --------------------------------------------------------------------------------------------------------
# the sweep behind `molrecon bench memory`

#: Iterations measured by default (the full grid): MoDL's unrolled K, MOL's forward max_iter.
DEFAULT_ITERS: dict[str, list[int]] = {"modl": [1, 2, 5, 10, 20], "mol-lr": [5, 10, 20, 50],
                                       "mol-sn": [5, 10, 20, 50]}
#: Problem sizes per dims: 2D is 12 coils at 256×256; 3D and 2D+t are sized to run on 2 CPU cores
#: (the built-in dynamic series' 12×96×96; a 32×64×64 slab of the built-in 64³ volumes) with the 16-channel
#: 3×3×3 CNN of ``configs/mol_lr_3d.yaml``/``mol_lr_dynamic.yaml``.
DEFAULT_SIZES: dict[str, dict] = {
    "2d": {"shape": [256, 256], "coils": 12, "channels": 64, "layers": 5},
    "3d": {"shape": [32, 64, 64], "coils": 8, "channels": 16, "layers": 5},
    "2d+t": {"shape": [12, 96, 96], "coils": 8, "channels": 16, "layers": 5},
}
MIB = float(2 ** 20)


def _mol_kwargs(method: str, force_iters: bool) -> dict:
    """MOL: ``tol=1e-12`` makes the forward (and the adjoint solve, tol/10) run all ``max_iter`` iterations —
    otherwise a converged early stop would make "flat in max_iter" trivially true."""
    return {"tol": 1e-12} if force_iters and method != "modl" else {}


def run_memory_sweep(methods: Sequence[str] = ("modl", "mol-lr", "mol-sn"),
                     dims_list: Sequence[str] = DIMS,
                     iters: dict[str, Sequence[int]] | None = None,
                     sizes: dict[str, dict] | None = None, batch: int = 1, acceleration: float = 4.0,
                     device: str = "cpu", seed: int = 0, threads: int = 1, repeats: int = 1,
                     force_iters: bool = True, timeout: float = 3600.0,
                     on_row: Callable[[dict, list[dict]], None] | None = None,
                     model_settings: dict[str, Any] | None = None, allocated: bool = True) -> list[dict]:
    """Measure :func:`measure_step_memory` over ``dims × method × iterations``, sequentially.

    Every row follows the ``memory.json`` contract ``{"method", "iters", "dims", "shape", "peak_mib",
    "device"}`` plus diagnostics (coils, channels, layers, the forward/backward iterations actually run,
    seconds of the step, and the running peak after each phase: forward, loss, backward, optimiser step).
    ``on_row(row, rows_so_far)`` is called after each measurement (the CLI rewrites the JSON there, so a long
    sweep that is interrupted keeps what it measured). ``model_settings``: model keys for every method but MoDL
    (e.g. the shipped MOL-LR recipe's ``architecture``, ``lr_jacobian_steps``). ``allocated``: each row also
    gets the exact peak of live tensor memory, ``allocated_mib`` (and per phase), see the module docstring.
    """
    iters = {**DEFAULT_ITERS, **(iters or {})}
    sizes = {d: {**DEFAULT_SIZES.get(d, {}), **(sizes or {}).get(d, {})} for d in dims_list}
    rows: list[dict] = []
    for dims in dims_list:
        if dims not in DEFAULT_SIZES:
            raise InputError(f"memory benchmark: dims must be among {list(DEFAULT_SIZES)}, got {dims!r}")
        sz = sizes[dims]
        if len(sz["shape"]) != (2 if dims == "2d" else 3):
            raise InputError(f"memory benchmark: shape {sz['shape']} does not fit dims {dims!r}")
        for method in methods:
            if method not in iters:
                raise InputError(f"memory benchmark: no iteration list for method {method!r}")
            for k in iters[method]:
                r = measure_step_memory(method, int(k), shape=sz["shape"], dims=dims, coils=sz["coils"],
                                        channels=sz["channels"], layers=sz["layers"], batch=batch,
                                        acceleration=acceleration, device=device, seed=seed, threads=threads,
                                        model_kwargs={**(model_settings if method != "modl" else {}),
                                                      **_mol_kwargs(method, force_iters)}, timeout=timeout,
                                        repeats=repeats, allocated=allocated)
                row = {"method": method, "iters": int(k), "dims": dims, "shape": list(sz["shape"]),
                       "peak_mib": r["peak_bytes"] / MIB, "device": r["device"], "coils": sz["coils"],
                       "channels": sz["channels"], "layers": sz["layers"], "batch": batch,
                       "forward_iterations": r.get("forward_iterations"),
                       "backward_iterations": r.get("backward_iterations"),
                       "step_seconds": r.get("step_seconds"),
                       "phase_peaks_mib": {p: v / MIB for p, v in (r.get("phase_peaks_bytes") or {}).items()},
                       "measure": r.get("measure"),
                       "saved_mib": r["saved_bytes"] / MIB,
                       "saved_forward_mib": r["saved_forward_bytes"] / MIB,
                       "saved_peak_mib": r["saved_peak_bytes"] / MIB,
                       "saved_by_producer_mib": {k: v / MIB for k, v in r["saved_by_producer_bytes"].items()}}
                if "peaks" in r:
                    row["peaks_mib"] = [p / MIB for p in r["peaks"]]
                if "allocated_peak_bytes" in r:
                    row["allocated_mib"] = r["allocated_peak_bytes"] / MIB
                    row["allocated_phase_peaks_mib"] = {p: v / MIB for p, v in
                                                        r["allocated_phase_peaks_bytes"].items()}
                rows.append(row)
                if on_row is not None:
                    on_row(row, rows)
    return rows


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y ≈ a + b x``; returns ``(a, b, R²)`` (R² = 1 for two points or a constant y)."""
    n = len(xs)
    if n < 2:
        raise InputError("linear fit needs at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise InputError("linear fit needs two different x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return a, b, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def summarize_memory(rows: Sequence[dict], budget_gib: float = 16.0) -> list[dict]:
    r"""Per dims: MoDL's linear model and MOL's flatness, and the acceptance figures.

    MoDL: :math:`\text{peak}(K) \approx a + bK` fitted to the measured K; the K at which it exceeds the budget
    :math:`B` is :math:`K_B = \lceil (B - a)/b \rceil` (an extrapolation, labelled so). MOL: its peak over the
    measured ``max_iter`` (flat: the implicit backward stores one block), the ratio of the largest to the
    smallest max_iter's peak (acceptance: 50 vs 5 within 15 %) and of its largest peak to MoDL's at K=1
    (acceptance: ≤ ~1.5).
    """
    out = []
    budget_mib = budget_gib * 1024.0
    for dims in dict.fromkeys(r["dims"] for r in rows):
        sub = [r for r in rows if r["dims"] == dims]
        s: dict = {"dims": dims, "shape": sub[0]["shape"], "device": sub[0]["device"], "budget_gib": budget_gib}
        modl = sorted((r for r in sub if r["method"] == "modl"), key=lambda r: r["iters"])
        if len(modl) >= 2 and len({r["iters"] for r in modl}) >= 2:
            a, b, r2 = linear_fit([r["iters"] for r in modl], [r["peak_mib"] for r in modl])
            s.update(modl_intercept_mib=a, modl_slope_mib_per_iter=b, modl_fit_r2=r2)
            s["modl_k_exceeding_budget"] = (max(1, math.ceil((budget_mib - a) / b)) if b > 0 else None)
        k1 = next((r["peak_mib"] for r in modl if r["iters"] == 1), None)
        s["modl_k1_mib"] = k1
        has_saved = all("saved_mib" in r for r in sub)
        has_allocated = all("allocated_mib" in r for r in sub)
        if has_saved and len({r["iters"] for r in modl}) >= 2:
            a, b, r2 = linear_fit([r["iters"] for r in modl], [r["saved_mib"] for r in modl])
            s.update(modl_saved_intercept_mib=a, modl_saved_slope_mib_per_iter=b, modl_saved_fit_r2=r2)
        top = modl[-1] if modl else None
        if top is not None:
            s["modl_top_k"] = top["iters"]
        for method in FIXED_POINT_METHODS:
            mol = sorted((r for r in sub if r["method"] == method), key=lambda r: r["iters"])
            if not mol:
                continue
            peaks = [r["peak_mib"] for r in mol]
            s[f"{method}_max_mib"] = max(peaks)
            if len(mol) >= 2:
                s[f"{method}_last_over_first"] = peaks[-1] / peaks[0]
                s[f"{method}_iters_compared"] = [mol[0]["iters"], mol[-1]["iters"]]
            if k1:
                s[f"{method}_over_modl_k1"] = max(peaks) / k1
            if top is not None:
                s[f"modl_top_over_{method}_peak"] = top["peak_mib"] / max(peaks)
            if has_saved:
                saved = [r["saved_mib"] for r in mol]
                s[f"{method}_saved_max_mib"] = max(saved)
                if len(mol) >= 2:
                    s[f"{method}_saved_last_over_first"] = saved[-1] / saved[0]
                if top is not None:
                    s[f"modl_top_over_{method}_saved"] = top["saved_mib"] / max(saved)
            if has_allocated:
                allocated = [r["allocated_mib"] for r in mol]
                s[f"{method}_allocated_max_mib"] = max(allocated)
                if len(mol) >= 2:
                    s[f"{method}_allocated_last_over_first"] = allocated[-1] / allocated[0]
                if top is not None:
                    s[f"modl_top_over_{method}_allocated"] = top["allocated_mib"] / max(allocated)
        out.append(s)
    return out


def memory_markdown(rows: Sequence[dict], summary: Sequence[dict]) -> str:
    """The markdown tables of ``memory.md``: peak MiB per (dims, method, iterations), and the summary."""
    iters = sorted({r["iters"] for r in rows})
    table_rows = []
    for dims in dict.fromkeys(r["dims"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["dims"] == dims):
            sub = {r["iters"]: r for r in rows if r["dims"] == dims and r["method"] == method}
            any_r = next(iter(sub.values()))
            row = {"dims": dims, "shape × coils": "×".join(map(str, any_r["shape"])) + f" × {any_r.get('coils', '?')}c",
                   "method": method}
            for k in iters:
                row[str(k)] = f"{sub[k]['peak_mib']:.0f}" if k in sub else ""
            table_rows.append(row)
    lines = ["Peak memory (MiB) of one training step vs iterations (MoDL: unrolled K; MOL: forward max_iter)\n",
             markdown_table(table_rows, ["dims", "shape × coils", "method", *map(str, iters)])]
    if rows and all("saved_mib" in r for r in rows):
        saved_rows = []
        for row in table_rows:
            sub = {r["iters"]: r for r in rows if r["dims"] == row["dims"] and r["method"] == row["method"]}
            saved_rows.append({**{k: row[k] for k in ("dims", "shape × coils", "method")},
                               **{str(k): f"{sub[k]['saved_mib']:.1f}" if k in sub else "" for k in iters}})
        lines += ["\nSaved for backward (MiB, exact: storages autograd keeps after forward + loss, deduplicated)\n",
                  markdown_table(saved_rows, ["dims", "shape × coils", "method", *map(str, iters)])]
    if rows and all("allocated_mib" in r for r in rows):
        allocated_rows = []
        for row in table_rows:
            sub = {r["iters"]: r for r in rows if r["dims"] == row["dims"] and r["method"] == row["method"]}
            allocated_rows.append({**{k: row[k] for k in ("dims", "shape × coils", "method")},
                                   **{str(k): f"{sub[k]['allocated_mib']:.1f}" if k in sub else "" for k in iters}})
        lines += ["\nPeak allocated (MiB, exact: the most tensor memory live at once during the step)\n",
                  markdown_table(allocated_rows, ["dims", "shape × coils", "method", *map(str, iters)])]
    srows: list[dict] = []
    ratios: list[dict] = []
    for s in summary:
        k_b = s.get("modl_k_exceeding_budget")
        srows.append({
            "dims": s["dims"],
            "MoDL slope (MiB/iter)": "" if "modl_slope_mib_per_iter" not in s else
            f"{s['modl_slope_mib_per_iter']:.1f} (R² {s['modl_fit_r2']:.3f})",
            "MoDL K=1 (MiB)": "" if s.get("modl_k1_mib") is None else f"{s['modl_k1_mib']:.0f}",
            f"MoDL K > {s['budget_gib']:g} GiB (extrapolated)": "" if k_b is None else str(k_b),
            "MOL-LR max (MiB)": f"{s['mol-lr_max_mib']:.0f}" if "mol-lr_max_mib" in s else "",
            "MOL-LR last/first": f"{s['mol-lr_last_over_first']:.3f}" if "mol-lr_last_over_first" in s else "",
            "MOL-LR / MoDL K=1": f"{s['mol-lr_over_modl_k1']:.2f}" if "mol-lr_over_modl_k1" in s else "",
            "MOL-SN max (MiB)": f"{s['mol-sn_max_mib']:.0f}" if "mol-sn_max_mib" in s else "",
            "MOL-SN last/first": f"{s['mol-sn_last_over_first']:.3f}" if "mol-sn_last_over_first" in s else "",
            "MOL-SN / MoDL K=1": f"{s['mol-sn_over_modl_k1']:.2f}" if "mol-sn_over_modl_k1" in s else "",
        })
        top = s.get("modl_top_k")
        for method in FIXED_POINT_METHODS:
            if top is None or f"modl_top_over_{method}_peak" not in s:
                continue
            ratios.append({"dims": s["dims"], "ratio": f"MoDL K={top} / {method}",
                           "peak": f"{s[f'modl_top_over_{method}_peak']:.1f}×",
                           "allocated": (f"{s[f'modl_top_over_{method}_allocated']:.1f}×"
                                         if f"modl_top_over_{method}_allocated" in s else ""),
                           "saved": (f"{s[f'modl_top_over_{method}_saved']:.1f}×"
                                     if f"modl_top_over_{method}_saved" in s else ""),
                           f"{method} saved last/first": (f"{s[f'{method}_saved_last_over_first']:.3f}"
                                                          if f"{method}_saved_last_over_first" in s else "")})
    if srows:
        lines += ["\nSummary (acceptance: MOL last/first ≤ 1.15, MOL / MoDL K=1 ≤ ~1.5; MoDL linear in K)\n",
                  markdown_table(srows, list(srows[0]))]
    if ratios:
        cols = list(dict.fromkeys(k for r in ratios for k in r))
        lines += ["\nMoDL (largest K) over MOL (largest max_iter), by peak RSS, peak allocated and saved bytes; MOL "
                  "flatness by saved bytes (acceptance: ≥ 10× at 2D 256² × 12 coils × 64 channels; last/first "
                  "within 5 %)\n",
                  markdown_table([{c: r.get(c, "") for c in cols} for r in ratios], cols)]
    return "\n".join(lines)
