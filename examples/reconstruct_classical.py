"""Reconstruct one built-in test slice with the classical methods and score it as fastMRI does.

Run: ``python examples/reconstruct_classical.py`` (builds the built-in data on first use, ~20 s).
The k-space of the built-in set is SIMULATED from images: the figures are optimistic compared with raw data.
"""

from molrecon.data import builtin_test_example
from molrecon.metrics import nmse, object_support, psnr, ssim
from molrecon.recon import reconstruct

# y: masked k-space [1, C, H, W]; physics: the MultiCoilMRI operator (maps + 4x mask); target: [1, H, W]
y, physics, target = builtin_test_example(0)
print(physics)

support = object_support(target[0])         # metrics inside the object, as fastMRI-style evaluation
data_range = float(target.abs().max())      # the target volume's maximum (one slice per test file here)
for method in ("zero-filled", "sense", "cs-wavelet"):
    x = reconstruct(method, y, physics)     # complex image [1, H, W]
    print(f"{method:12s} PSNR {psnr(x[0], target[0], data_range, support):6.2f} dB   "
          f"SSIM {ssim(x[0], target[0], data_range, support):.4f}   "
          f"NMSE {nmse(x[0], target[0], support):.4f}")
