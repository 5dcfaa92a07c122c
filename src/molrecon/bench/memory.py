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
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InputError, MolreconError
from ..names import LEARNED_METHODS
from ..precision import use_ieee_float32
from .saved import SavedTensorMeter

#: what the last line of a child that ran out of memory says (CUDA's caching allocator; PyTorch's CPU allocator)
OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory")


class StepOutOfMemory(MolreconError):
    """The measured step did not fit in the device's memory (or the kernel killed its process)."""


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


def step_problem(shape: Sequence[int], coils: int, dims: str, acceleration: float = 4.0, batch: int = 1,
                 seed: int = 0, device: str = "cpu") -> tuple[Any, Any, Any]:
    """``(physics, target, y)`` of the measured step: simulated coil maps, the default mask of ``dims``
    (:func:`~molrecon.physics.mask_for`) and a random complex target, all from ``seed``."""
    import torch

    from ..physics import MultiCoilMRI, mask_for, simulate_coil_maps

    dev = torch.device(device)
    shape = tuple(shape)
    maps = simulate_coil_maps(shape, coils, dims=dims)[None]
    maps = maps.repeat(batch, *([1] * (len(shape) + 1)))
    mask = mask_for(dims, acceleration)(shape, seed=seed, dims=dims)
    physics = MultiCoilMRI(maps.to(dev), mask.to(dev), dims=dims)
    g = torch.Generator().manual_seed(seed)
    target = torch.randn((batch, *shape), generator=g, dtype=torch.complex64).to(dev)
    return physics, target, physics.A(target)


def _child(spec: dict) -> dict:
    """Run in the fresh process: build data + model, measure one training step."""
    import torch

    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec.get("threads", 1))
    dev = torch.device(spec["device"])
    physics, target, y = step_problem(spec["shape"], spec["coils"], spec["dims"], spec["acceleration"],
                                      spec["batch"], spec["seed"], spec["device"])
    shape = tuple(spec["shape"])
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
        penalty_after = spec.get("penalty_backward", "joint") == "after_data" and callable(extra)
        if callable(extra) and not penalty_after:
            loss = loss + extra(x, target)[0]
        phases["loss"] = high_water()
        allocations.mark("loss")
        saved = {"saved_bytes": meter.live_bytes, "saved_forward_bytes": saved_forward,
                 "saved_peak_bytes": meter.peak_bytes, "saved_by_producer_bytes": meter.breakdown()}
        opt.zero_grad()
        loss.backward()
        phases["backward"] = high_water()
        allocations.mark("backward")
        if penalty_after:  # as the trainer's train.penalty_backward: after_data
            penalty = extra(x.detach(), target)[0]
            saved["saved_penalty_bytes"] = meter.live_bytes
            phases["penalty"] = high_water()
            allocations.mark("penalty")
            if penalty.requires_grad:  # MoDL, MOL-SN and the DEQ return a constant zero
                penalty.backward()
            loss = loss.detach() + penalty.detach()
            phases["penalty backward"] = high_water()
            allocations.mark("penalty backward")
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

    ``mark(name)`` ends a phase; :meth:`peaks` returns the peak (bytes above the start) over the whole trace and
    the running peak at the end of each phase. Disabled, it does nothing (the RSS child runs without the
    profiler's own overhead).
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
        for end, name in [*ends, (None, None)]:  # the records after the last mark count for the overall peak
            while pending is not None and (end is None or pending[0] <= end):
                live += pending[1]
                peak = max(peak, live)
                pending = next(events, None)
            if name is not None:
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
        message = f"memory benchmark child failed for {spec['method']}: {tail[0]}"
        if proc.returncode == -signal.SIGKILL or any(s in tail[0] for s in OUT_OF_MEMORY_MESSAGES):
            raise StepOutOfMemory(message)
        raise MolreconError(message)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise MolreconError(f"memory benchmark child for {spec['method']} printed no result")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    use_ieee_float32()  # the arithmetic of the command line that starts this child
    print(json.dumps(_child(spec)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
