"""Evaluate several methods over built-in test slices with the Python API and write a report folder.

Run: ``python examples/evaluate_methods.py``; writes ``example_report/report.json``, ``report.md`` and
``figure.png`` (the command-line equivalent is ``molrecon evaluate --data builtin --out example_report``).
"""

from molrecon.evaluate.evaluation import evaluate, load_dataset, resolve_methods, write_report
from molrecon.weights.pretrained import available_names

# classical methods, plus every shipped 2D 4x learned model
pretrained = [n for n in available_names() if n.endswith("-2d-4x")]
runners = resolve_methods(["zero-filled", "sense"], pretrained=pretrained)
dataset = load_dataset("builtin", kind="2d", split="test")
results = evaluate(runners, dataset, max_slices=2, progress=False)
paths = write_report(results, "example_report", title="example evaluation",
                     data_description="first 2 built-in 2D test slices (simulated k-space)")
for name, s in results["methods"].items():
    print(f"{name:12s} PSNR {s['psnr']:6.2f} ± {s['psnr_std']:.2f} dB   SSIM {s['ssim']:.4f}   "
          f"{s['time_per_slice_s']:.2f} s/slice")
print(f"wrote {paths['json']}")
