"""``molrecon bench memory|fit|speed|train|gradient|quality``: the benchmarks of ``benchmarks/README.md`` (JSON +
markdown + PNG).

Examples
--------
    molrecon bench memory --out benchmarks/memory                       # the full grid
    molrecon bench memory --dims 2d --methods modl mol-lr --modl-iters 1 2 --mol-iters 5 10 --shape-2d 64 64
    molrecon bench memory --dims 2d --methods modl mol-lr --recipe mol-lr-2d-4x --mol-iters 5 50  # the recipe
    molrecon bench fit --device cuda --out /tmp/fit                    # the 3D size at which MoDL stops fitting
    molrecon bench speed --out benchmarks/speed                         # pretrained mol-lr-2d-4x if shipped
    molrecon bench speed --checkpoint runs/mol_lr_2d/last.pt --out /tmp/speed
    molrecon bench train --out benchmarks/train --dims 2d 3d 2d+t      # step time, time to a val PSNR
    molrecon bench gradient --out benchmarks/gradient-2d                # backward modes vs implicit gradient
    molrecon bench quality --out benchmarks/quality --accels 4 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..bench.gradient import DEFAULT_MODELS, DEFAULT_MODES, gradient_markdown, run_gradient_bench
from ..bench.memory_fit import DEFAULT_FIT_SIZES, fit_markdown, run_fit_sweep, summarize_fit
from ..bench.memory_sweep import DEFAULT_ITERS, memory_markdown, run_memory_sweep, summarize_memory
from ..bench.plots import plot_fit, plot_memory, plot_quality, plot_speed, plot_train
from ..bench.quality import quality_markdown, run_quality_bench
from ..bench.recipes import recipe_settings
from ..bench.speed import bench_classical, bench_model, load_examples, random_modl, random_mol, speed_markdown
from ..bench.train import DEFAULT_TRAIN_METHODS, run_train_bench, train_markdown
from ..data.builtin import normalize_kind
from ..errors import InputError
from ..evaluate.report import markdown_table
from ..io import machine_info, write_json_atomic, write_text_atomic
from ..metrics import PSNR_OBJECT_SUPPORT
from ..names import CLASSICAL_METHODS, DIMS, DIMS_OF_KIND, DIMS_TAG, FIXED_POINT_METHODS, LEARNED_METHODS
from ..train.config import PENALTY_BACKWARDS, parse_scalar
from ..weights.loading import resolve_model
from ..weights.pretrained import available_names, pretrained_name


def _positive_ints(values: list[str] | None) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _add_model_settings(parser: argparse.ArgumentParser, set_example: str, recipe_example: str,
                        default_backward: str) -> None:
    """``--set``, ``--recipe`` and ``--penalty-backward`` of the benchmarks that build a training step."""
    parser.add_argument("--set", dest="model_set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"model setting of the MOL/DEQ methods (e.g. {set_example}); over --recipe")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME",
                        help=f"the training recipe of the shipped model NAME (e.g. {recipe_example}) for its "
                        "method: the model settings of its training config, the size excepted (repeatable, one "
                        "per method)")
    parser.add_argument("--penalty-backward", choices=PENALTY_BACKWARDS, default=None,
                        help="MOL-LR: backpropagate the Lipschitz penalty with the data term (joint) or after it "
                        f"(after_data, as train.penalty_backward); default: the MOL-LR recipe's, else "
                        f"{default_backward}")
    parser.set_defaults(default_penalty_backward=default_backward)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: training memory vs iterations, inference speed, quality table",
                       description="Reproducible benchmarks; each writes JSON (with the machine and the command), "
                       "a markdown table and a PNG plot into --out.")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")

    m = bsub.add_parser("memory", help="peak memory of one training step vs iterations (MoDL K, MOL max_iter)",
                        description="Peak memory of ONE training step (forward + backward + Adam step), each in a "
                        "fresh subprocess (CPU: peak RSS above the pre-step RSS; CUDA: max_memory_allocated), and "
                        "the exact peak of live tensor memory (CPU: a second child under the profiler). "
                        "Writes OUT/memory.json, memory.md, memory.png.")
    m.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    m.add_argument("--methods", nargs="+", default=["modl", "mol-lr", "mol-sn"],
                   choices=LEARNED_METHODS)
    m.add_argument("--dims", nargs="+", default=list(DIMS), choices=DIMS)
    m.add_argument("--modl-iters", nargs="+", default=None, metavar="K", help="MoDL K values (default 1 2 5 10 20)")
    m.add_argument("--mol-iters", nargs="+", default=None, metavar="N",
                   help="MOL/DEQ max_iter values (default 5 10 20 50)")
    for dims, flag in DIMS_TAG.items():
        m.add_argument(f"--shape-{flag}", nargs="+", type=int, default=None, metavar="N",
                       help=f"{dims} image shape (default: see molrecon.bench.memory_sweep.DEFAULT_SIZES)")
        m.add_argument(f"--coils-{flag}", type=int, default=None, help=f"{dims} coils")
        m.add_argument(f"--channels-{flag}", type=int, default=None, help=f"{dims} CNN channels")
    m.add_argument("--layers", type=int, default=None, help="CNN layers (default 5)")
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--accel", type=float, default=4.0)
    m.add_argument("--device", default="cpu")
    m.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    m.add_argument("--repeats", type=int, default=1, help="fresh processes per point (median)")
    m.add_argument("--budget-gib", type=float, default=16.0,
                   help="memory budget for the 'MoDL exceeds it at K' extrapolation (default 16 GiB)")
    m.add_argument("--no-force-iters", action="store_true",
                   help="let MOL stop at its tolerance (default: tol 1e-12 so that max_iter iterations run)")
    m.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    m.add_argument("--no-allocated", action="store_true",
                   help="skip the exact allocated peak (on CPU a second, profiled child per point)")
    _add_model_settings(m, "architecture=residual", "mol-lr-2d-4x", "joint")
    m.set_defaults(func=run_memory)

    f = bsub.add_parser("fit", help="the largest 3D volume on which one training step fits on the device",
                        description="One 3D training step per method at each cubic size N³ (ascending, a fresh "
                        "process each) until it runs out of memory; reports where MoDL stops fitting while MOL "
                        "still trains. Writes OUT/fit.json, fit.md, fit.png.")
    f.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    f.add_argument("--methods", nargs="+", default=["modl", "mol-sn", "mol-lr"], choices=LEARNED_METHODS)
    f.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_FIT_SIZES), metavar="N",
                   help=f"volume sides to try (default {' '.join(map(str, DEFAULT_FIT_SIZES))})")
    f.add_argument("--modl-k", type=int, default=10, help="MoDL's unrolled iterations (default 10)")
    f.add_argument("--mol-iters", type=int, default=5, help="MOL/DEQ forward iterations, run in full (default 5; "
                   "MOL's memory does not grow with them)")
    f.add_argument("--coils", type=int, default=8)
    f.add_argument("--channels", type=int, default=16, help="CNN channels (default 16, the 3D configs')")
    f.add_argument("--layers", type=int, default=5)
    f.add_argument("--device", default="cpu")
    f.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    f.add_argument("--timeout", type=float, default=600.0, help="seconds per step")
    _add_model_settings(f, "architecture=orthogonal", "mol-sn-3d-4x", "after_data")
    f.set_defaults(func=run_fit)

    s = bsub.add_parser("speed", help="inference time, iterations to tol (plain vs Anderson), CNN share",
                        description="Inference time per slice/volume, forward iterations to --tol with the plain "
                        "and the Anderson solver, and the share of time in the CNN vs FFT vs CG (explicit "
                        "timers, plus a torch.profiler operator table). Writes OUT/speed.json, speed.md, "
                        "speed.png.")
    s.add_argument("--out", type=Path, default=Path("bench-out"))
    s.add_argument("--pretrained", nargs="*", default=None, metavar="NAME",
                   help="pretrained models (default: <method>-<dims>-4x for mol-lr, mol-sn, modl, deq when shipped)")
    s.add_argument("--checkpoint", action="append", default=[], type=Path, help="training checkpoint (repeatable)")
    s.add_argument("--random-init", nargs="*", default=None, metavar="METHOD",
                   choices=LEARNED_METHODS,
                   help="also time untrained models of these methods (labelled; default when no trained model "
                   "is found: mol-lr mol-sn modl)")
    s.add_argument("--classical", nargs="*", default=["sense", "cs-wavelet"], metavar="METHOD",
                   help="classical methods to time (default: sense cs-wavelet)")
    s.add_argument("--kind", default="2d", choices=list(DIMS_OF_KIND), help="built-in data kind")
    s.add_argument("--accel", type=float, default=4.0)
    s.add_argument("--examples", type=int, default=2, help="test items to average over")
    s.add_argument("--repeats", type=int, default=3, help="timed runs per item (median)")
    s.add_argument("--tol", type=float, default=1e-4)
    s.add_argument("--max-iter", type=int, default=500, help="cap of the iterations-to-tol runs")
    s.add_argument("--channels", type=int, default=32, help="CNN channels of random-init models")
    s.add_argument("--cg-iters", nargs="+", type=int, default=[], metavar="N",
                   help="also sweep the CG steps of each block's data-consistency solve (MOL/DEQ): outer "
                   "iterations and time to --tol, plain and Anderson, e.g. --cg-iters 5 10 15 20 30")
    s.add_argument("--no-torch-profile", action="store_true")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=run_speed)

    t = bsub.add_parser("train", help="training-step time and time to a validation PSNR per method",
                        description="Trains each method with the project's trainer step on the same data, batch, "
                        "CNN, seed and threads for --steps steps, validating every --val-every steps; reports the "
                        "median step time, its ratio to MoDL K=10 and the summed step time to reach the target "
                        "PSNR (default: the best PSNR every method reached). Writes OUT/train.json, train.md, "
                        "train.png.")
    t.add_argument("--out", type=Path, default=Path("bench-out"))
    t.add_argument("--methods", nargs="+", default=list(DEFAULT_TRAIN_METHODS),
                   metavar="METHOD",
                   help="methods, trained side by side (interleaved steps): modl-k1 modl-k5 modl-k10 deq mol-sn "
                   "mol-lr mol-sn-cached mol-lr-cached (*-cached: the per-slice fixed-point cache and, for "
                   "MOL-LR, the amortised Lipschitz estimate) mol-lr-orthogonal mol-sn-orthogonal (the shipped 2D "
                   "recipes) mol-lr-residual mol-sn-sll (the residual MOL-LR and the SLL MOL-SN shipped before); "
                   "METHOD@KEY=VALUE,... gives one its own model "
                   "settings, e.g. mol-lr@cg_iter=15")
    t.add_argument("--dims", nargs="+", default=["2d"], choices=DIMS)
    t.add_argument("--steps", type=int, default=40, help="training steps per method (default 40)")
    t.add_argument("--val-every", type=int, default=10, help="validate every N steps (default 10)")
    t.add_argument("--target-psnr", type=float, default=None, help="validation PSNR to time (dB)")
    t.add_argument("--channels", type=int, default=None, help="CNN channels for every dims (default: the "
                   "shipped configs': 32 in 2D, 16 in 3D and 2D+t)")
    t.add_argument("--layers", type=int, default=None)
    t.add_argument("--limit-train", type=int, default=None, help="use only the first N training slices")
    t.add_argument("--limit-val", type=int, default=4, help="validation slices (default 4)")
    t.add_argument("--synthetic", nargs=2, type=int, default=None, metavar=("N", "COILS"),
                   help="2D only: a synthetic N×N data set with COILS coils instead of the built-in one "
                   "(code-path checks; not for quality)")
    t.add_argument("--set", dest="model_set", action="append", default=[], metavar="KEY=VALUE",
                   help="model setting for every method that has it (e.g. cg_iter=15 for MOL/DEQ)")
    t.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="train-section setting for every run (e.g. lr=1e-3)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(func=run_train)

    g = bsub.add_parser("gradient", help="gradient error of the backward modes (jfb, phantom) vs implicit",
                        description="Parameter gradient of the training data loss under each backward mode, from "
                        "the same fixed point, on the first --slices built-in training slices; cosine similarity "
                        "and relative error against the implicit gradient with a tight adjoint tolerance, and "
                        "the time. Writes OUT/gradient.json and gradient.md.")
    g.add_argument("--out", type=Path, default=Path("bench-out"))
    g.add_argument("--pretrained", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME")
    g.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), metavar="MODE",
                   help="implicit, implicit@tol=T,max_iter=N,cg_iter=K, jfb, phantom@steps=N,damping=D")
    g.add_argument("--slices", type=int, default=4)
    g.add_argument("--reference-tol", type=float, default=1e-7, help="adjoint tolerance of the reference")
    g.add_argument("--threads", type=int, default=1)
    g.set_defaults(func=run_gradient)

    q = bsub.add_parser("quality", help="PSNR/SSIM of all methods at several accelerations",
                        description="PSNR/SSIM/NMSE of the classical methods and the pretrained models on the "
                        "built-in test split at each acceleration (molrecon.evaluate.evaluation). Writes "
                        "OUT/quality.json, quality.md, quality.png and OUT/<accel>x/ (per-acceleration report "
                        "and comparison figure).")
    q.add_argument("--out", type=Path, default=Path("bench-out"))
    q.add_argument("--accels", nargs="+", type=float, default=[4.0, 8.0])
    q.add_argument("--classical", nargs="*", default=list(CLASSICAL_METHODS))
    q.add_argument("--learned", nargs="*", default=list(LEARNED_METHODS),
                   help="learned methods, loaded as pretrained <method>-<dims>-<accel>x (else the 4x model)")
    q.add_argument("--checkpoint", action="append", default=[], type=Path, help="also evaluate a checkpoint")
    q.add_argument("--kind", default="2d", choices=list(DIMS_OF_KIND))
    q.add_argument("--max-volumes", type=int, default=None)
    q.add_argument("--max-slices", type=int, default=None)
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--device", default="cpu")
    q.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    q.set_defaults(func=run_quality)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_memory(args: argparse.Namespace) -> int:
    iters = dict(DEFAULT_ITERS)
    if args.modl_iters:
        iters["modl"] = _positive_ints(args.modl_iters)
    if args.mol_iters:
        iters.update({k: _positive_ints(args.mol_iters) for k in FIXED_POINT_METHODS})
    iters.setdefault("deq", iters["mol-lr"])
    if any(k < 1 for v in iters.values() for k in v):
        raise InputError("bench memory: iterations must be >= 1")
    sizes: dict[str, dict] = {}
    for dims, flag in DIMS_TAG.items():
        sz = {}
        for key in ("shape", "coils", "channels"):
            v = getattr(args, f"{key}_{flag}")
            if v is not None:
                sz[key] = list(v) if key == "shape" else v
        if args.layers is not None:
            sz["layers"] = args.layers
        sizes[dims] = sz
    model_settings = _settings(args.model_set, "--set")
    method_settings, penalty_backward = _recipes(args, "bench memory")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    settings = {"batch": args.batch, "acceleration": args.accel, "threads": args.threads,
                "repeats": args.repeats, "force_iters": not args.no_force_iters, "budget_gib": args.budget_gib,
                "allocated": not args.no_allocated,
                "step": "forward + loss (+ MOL-LR Lipschitz penalty) + backward + Adam step",
                "data": "random complex target, simulated coil maps, default mask of the dims (mask_for)",
                "model_set": model_settings, "recipes": args.recipe, "method_settings": method_settings,
                "penalty_backward": penalty_backward}

    def save(rows: list[dict], final: bool = False) -> None:
        summary = summarize_memory(rows, args.budget_gib)
        plot = (lambda path: plot_memory(rows, path, summary)) if final else None
        _save_sweep(out, "memory", rows, summary, memory_markdown(rows, summary), settings, machine, plot)

    def on_row(row: dict, rows: list[dict]) -> None:
        allocated = f", allocated {row['allocated_mib']:8.1f} MiB" if "allocated_mib" in row else ""
        print(f"  {row['dims']:5s} {row['method']:7s} iters={row['iters']:3d}  peak {row['peak_mib']:8.1f} MiB"
              f"{allocated}  ({row['step_seconds']:.1f} s)", flush=True)
        save(rows)

    rows = run_memory_sweep(args.methods, args.dims, iters, sizes, batch=args.batch, acceleration=args.accel,
                            device=args.device, threads=args.threads, repeats=args.repeats,
                            force_iters=not args.no_force_iters, timeout=args.timeout, on_row=on_row,
                            model_settings=model_settings, allocated=not args.no_allocated,
                            penalty_backward=penalty_backward, method_settings=method_settings)
    save(rows, final=True)
    return 0


def run_speed(args: argparse.Namespace) -> int:
    if any(n < 1 for n in args.cg_iters):
        raise InputError(f"bench speed: --cg-iters must be positive integers, got {args.cg_iters}")
    torch.set_num_threads(args.threads)
    kind = normalize_kind(args.kind)
    dims = DIMS_OF_KIND[kind]
    notes: list[str] = []
    shipped = set(available_names())
    if args.pretrained is None:
        wanted = [pretrained_name(m, dims) for m in LEARNED_METHODS]
        names = [n for n in wanted if n in shipped]
        missing = [n for n in wanted if n not in shipped]
        if missing:
            notes.append(f"not shipped yet, skipped: {', '.join(missing)}")
    else:
        names = list(args.pretrained)
    models = []
    for n in names:
        choice = resolve_model(pretrained=n, device=args.device)
        models.append((choice.label, choice.model, choice.source, ""))
    for ck in args.checkpoint:
        choice = resolve_model(checkpoint=ck, device=args.device)
        models.append((f"{choice.method} ({choice.label})", choice.model, choice.source, ""))
    random_methods = args.random_init if args.random_init is not None else ([] if models else
                                                                             ["mol-lr", "mol-sn", "modl"])
    for meth in random_methods:
        model = (random_modl(dims, channels=args.channels) if meth == "modl"
                 else random_mol(meth, dims, channels=args.channels)).to(args.device)
        models.append((f"{meth} (random init)", model, "random-init",
                       "UNTRAINED weights: timings and the CNN share are representative of the architecture, the "
                       "iteration counts (and so plain vs Anderson) are not those of a trained model"))
    examples = load_examples(kind, args.examples, args.accel, args.device)
    rows = []
    for label, model, source, note in models:
        print(f"  timing {label} ...", flush=True)
        rows.append(bench_model(label, model, examples, source, repeats=args.repeats, tol=args.tol,
                                max_iter=args.max_iter, with_torch_profile=not args.no_torch_profile, note=note,
                                cg_iters=args.cg_iters))
    classical = [bench_classical(m, examples) for m in args.classical]
    results = {"data": f"built-in {kind} test split, {len(examples)} item(s) of shape "
               f"{list(examples[0][1].spatial_shape)} × {examples[0][1].num_coils} coils at {args.accel:g}× "
               "(simulated k-space)", "dims": dims, "device": args.device, "threads": args.threads,
               "tol": args.tol, "max_iter": args.max_iter, "models": rows, "classical": classical,
               "notes": notes, "machine": machine_info()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = speed_markdown(results)
    if classical:
        unit = "slice" if dims == "2d" else "volume"
        md += "\nClassical methods\n\n" + markdown_table(
            [{"method": c["label"], f"time/{unit} (s)": f"{c['time_per_item_s']:.3f}"} for c in classical],
            ["method", f"time/{unit} (s)"])
    _write_report(out, "speed", results, md, lambda path: plot_speed(results, path))
    return 0


def run_fit(args: argparse.Namespace) -> int:
    if args.modl_k < 1 or args.mol_iters < 1:
        raise InputError("bench fit: --modl-k and --mol-iters must be >= 1")
    model_settings = _settings(args.model_set, "--set")
    method_settings, penalty_backward = _recipes(args, "bench fit")
    out = Path(args.out)
    iters = {m: (args.modl_k if m == "modl" else args.mol_iters) for m in args.methods}
    machine = machine_info()
    settings = {"threads": args.threads, "model_set": model_settings, "recipes": args.recipe,
                "method_settings": method_settings, "iters": iters, "penalty_backward": penalty_backward,
                "step": "forward + loss (+ MOL-LR Lipschitz penalty) + backward + Adam step"}

    def save(rows: list[dict], final: bool = False) -> None:
        summary = summarize_fit(rows)
        plot = (lambda path: plot_fit(rows, path)) if final else None
        _save_sweep(out, "fit", rows, summary, fit_markdown(rows, summary), settings, machine, plot)

    def on_row(row: dict, rows: list[dict]) -> None:
        what = f"peak {row['peak_mib']:9.1f} MiB" if row["fits"] else "out of memory"
        print(f"  {row['method']:7s} {row['size']:4d}³  {what}", flush=True)
        save(rows)

    rows = run_fit_sweep(args.methods, args.sizes, iters, coils=args.coils, channels=args.channels,
                         layers=args.layers, device=args.device, threads=args.threads, timeout=args.timeout,
                         model_settings=model_settings, penalty_backward=penalty_backward, on_row=on_row,
                         method_settings=method_settings)
    save(rows, final=True)
    return 0


def _recipes(args: argparse.Namespace, what: str) -> tuple[dict[str, dict], str]:
    """``--recipe`` as model settings per method, and the penalty backward: ``--penalty-backward`` if given, else
    the MOL-LR recipe's, else the benchmark's default (:func:`_add_model_settings`)."""
    method_settings, recipe_backward = recipe_settings(args.recipe, list(args.methods), what)
    return method_settings, args.penalty_backward or recipe_backward or args.default_penalty_backward


def _settings(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"bench: {what} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_scalar(v)
    return out


def run_train(args: argparse.Namespace) -> int:

    if args.steps < 2 or args.val_every < 1:
        raise InputError(f"bench train: need --steps >= 2 and --val-every >= 1, got {args.steps}, {args.val_every}")
    data: dict[str, dict] = {d: {"limit_train": args.limit_train, "limit_val": args.limit_val} for d in args.dims}
    if args.synthetic is not None:
        if args.dims != ["2d"]:
            raise InputError("bench train: --synthetic is 2D only (use --dims 2d)")
        n, coils = args.synthetic
        data["2d"].update(source="synthetic", shape=[n, n], num_coils=coils, num_train=max(4, args.limit_train or 8),
                          num_val=args.limit_val)
    model_overrides = _settings(args.model_set, "--set")
    train_overrides = _settings(args.train_set, "--train-set")
    channels = {d: args.channels for d in args.dims} if args.channels else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"threads": args.threads, "device": args.device, "steps": args.steps, "val_every": args.val_every,
                "batch": 1, "data": "synthetic" if args.synthetic else "built-in", "model_set": model_overrides,
                "train_set": train_overrides}

    def on_row(row: dict, rows: list[dict]) -> None:
        print(f"  {row['dims']:5s} {row['method']:13s} step {row['step_time_median_s']:.3f} s (median), "
              f"best val PSNR {row['best_val_psnr'] or float('nan'):.2f}", flush=True)
        write_json_atomic(out / "train.json", {"rows": rows, "settings": settings, "complete": False,
                                               "machine": machine_info()})

    rows = run_train_bench(args.methods, args.dims, steps=args.steps, val_every=args.val_every,
                           target_psnr=args.target_psnr, channels=channels, layers=args.layers, data=data,
                           model_overrides=model_overrides, train_overrides=train_overrides, threads=args.threads,
                           device=args.device, on_row=on_row)
    md = train_markdown(rows, settings)
    _write_report(out, "train", {"rows": rows, "settings": settings, "complete": True, "machine": machine_info()},
                  md, lambda path: plot_train(rows, path))
    return 0


def run_gradient(args: argparse.Namespace) -> int:
    known = available_names()
    missing = [n for n in args.pretrained if n not in known]
    if missing:
        raise InputError(f"bench gradient: pretrained model(s) not shipped: {', '.join(missing)}")
    result = run_gradient_bench(args.pretrained, slices=args.slices, modes=args.modes, threads=args.threads,
                                reference_tol=args.reference_tol)
    result["machine"] = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = gradient_markdown(result)
    write_json_atomic(out / "gradient.json", result)
    write_text_atomic(out / "gradient.md", md)
    print(md)
    print(f"wrote {out / 'gradient.json'}, {out / 'gradient.md'}")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_quality_bench(args.accels, args.classical, args.learned, args.checkpoint, kind=args.kind,
                                out=out, max_volumes=args.max_volumes, max_slices=args.max_slices,
                                batch_size=args.batch_size, device=args.device)
    results["psnr_definition"] = PSNR_OBJECT_SUPPORT
    results["machine"] = machine_info()
    md = quality_markdown(results)
    _write_report(out, "quality", results, md, lambda path: plot_quality(results["rows"], path))
    return 0


def _save_sweep(out: Path, stem: str, rows: list[dict], summary: dict, md: str, settings: dict, machine: dict,
                plot=None) -> None:
    """A sweep's ``OUT/<stem>.json`` and ``.md`` after each row (``complete`` false); with ``plot``, the final
    report through :func:`_write_report`."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "summary": summary, "settings": settings, "complete": plot is not None,
               "machine": machine}
    if plot is None:
        write_json_atomic(out / f"{stem}.json", payload)
        write_text_atomic(out / f"{stem}.md", md)
    else:
        _write_report(out, stem, payload, md, plot)


def _write_report(out: Path, stem: str, payload: dict, md: str, plot) -> None:
    """``OUT/<stem>.json``, ``.md`` and ``.png`` (each written atomically), then the table on the terminal."""
    write_json_atomic(out / f"{stem}.json", payload)
    write_text_atomic(out / f"{stem}.md", md)
    plot(out / f"{stem}.png")
    print()
    print(md)
    print(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}, {out / (stem + '.png')}")
