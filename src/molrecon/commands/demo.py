"""``molrecon demo``: every method on the built-in test slices, with the shipped pretrained models.

Builds the built-in data if absent, reconstructs the test slices with zero-filled, CG-SENSE, CS-wavelet
(CS-TV with ``--cs-tv``), MoDL, the DEQ, MOL-SN and MOL-LR (the ``<method>-2d-4x`` pretrained models), prints
the table and writes ``OUT/metrics.json`` (means over the test slices), ``OUT/report.md`` and
``OUT/figure.png``. A pretrained model that is not shipped is reported as skipped, never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..data.builtin import builtin_dataset, ensure_builtin
from ..data.slice_dataset import collate, physics_from_batch
from ..evaluate.evaluation import SUMMARY_COLUMNS, classical_runner, evaluate, model_runner, summary_rows, write_report
from ..evaluate.report import markdown_table
from ..names import LEARNED_METHODS
from ..weights.pretrained import available_names, load_pretrained

DEMO_CLASSICAL = ["zero-filled", "sense", "cs-wavelet"]
DEMO_LEARNED = LEARNED_METHODS
DEMO_TAG = "2d-4x"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="reconstruct the built-in test slices with every method and report",
                       description="Build the built-in data if absent, reconstruct its test slices at 4x with "
                       "every method (classical and the shipped pretrained models), print the table and write "
                       "OUT/metrics.json, OUT/report.md and OUT/figure.png.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="built-in data folder (default: molrecon.data's; built there if absent)")
    p.add_argument("--max-slices", type=int, default=None, help="use only the first N test slices")
    p.add_argument("--cs-tv", action="store_true", help="also run CS with total variation (slower)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def resolve_demo_methods(include_cs_tv: bool = False, pretrained_root: str | os.PathLike | None = None,
                         device: str = "cpu") -> tuple[list[Any], dict[str, str]]:
    """Runners for the demo and ``{method: reason}`` for the learned methods that are not shipped."""

    runners = [classical_runner(m) for m in DEMO_CLASSICAL + (["cs-tv"] if include_cs_tv else [])]
    shipped = set(available_names(pretrained_root))
    skipped: dict[str, str] = {}
    for method in DEMO_LEARNED:
        name = f"{method}-{DEMO_TAG}"
        if name not in shipped:
            skipped[method] = f"pretrained model {name} is not shipped in this installation"
            continue
        model = load_pretrained(name, device=device, root=pretrained_root)
        runners.append(model_runner(model, name=method, source=f"pretrained:{name}"))
    return runners, skipped


def add_certificates(results: dict[str, Any], runners: list[Any], dataset: Any, device: str = "cpu") -> None:
    """Attach ``model.certificate(physics)`` (MOL's theorem constants: L, m, contraction, robustness constant,
    certified or estimated) on the first slice's acquisition to each MOL/DEQ entry of ``results``."""

    physics = physics_from_batch(collate([dataset[0]])).to(device)
    for r in runners:
        if r.model is not None and callable(getattr(r.model, "certificate", None)):
            results["methods"][r.name]["certificate"] = r.model.certificate(physics)


def run_demo(out: str | os.PathLike, dataset: Any = None, data_root: str | os.PathLike | None = None,
             max_slices: int | None = None, include_cs_tv: bool = False,
             pretrained_root: str | os.PathLike | None = None, device: str = "cpu",
             data_description: str | None = None) -> dict[str, Any]:
    """Run the demo and write its report; returns the metrics dict written to ``out/metrics.json``.

    ``dataset`` replaces the built-in test split (tests use a tiny one); ``pretrained_root`` replaces the
    package's shipped-weights folder.
    """
    if dataset is None:
        print("preparing the built-in data (built on first use)...", flush=True)
        ensure_builtin("2d", data_root)
        # mask_func=None: the files' stored 4x fastMRI-style masks (seeded by file name), as in training
        dataset = builtin_dataset("2d", "test", data_root, mask_func=None)
        data_description = data_description or ("built-in 2D test split, stored 4x fastMRI-style random column "
                                                "masks (k-space simulated from images: optimistic, not "
                                                "comparable with raw fastMRI figures)")
    runners, skipped = resolve_demo_methods(include_cs_tv, pretrained_root, device)
    for method, reason in skipped.items():
        print(f"skipping {method}: {reason}", flush=True)
    print(f"reconstructing with {', '.join(r.name for r in runners)}", flush=True)
    results = evaluate(runners, dataset, device=device, max_slices=max_slices, average_over="slices",
                       progress=True)
    add_certificates(results, runners, dataset, device)
    notes = [f"{m} skipped: {r}" for m, r in skipped.items()]
    paths = write_report(results, out, title="molrecon demo", data_description=data_description or "",
                         json_name="metrics.json", extra={"skipped": skipped, "notes": notes})
    print()
    print(markdown_table(summary_rows(results), SUMMARY_COLUMNS))
    if skipped:
        print("not run (not shipped): " + ", ".join(skipped))
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['figure']}")
    return json.loads(Path(paths["json"]).read_text())


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, data_root=args.data_root, max_slices=args.max_slices, include_cs_tv=args.cs_tv,
             device=args.device)
    return 0
