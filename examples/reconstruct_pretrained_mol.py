"""Reconstruct a built-in test slice with the shipped pretrained MOL models and print their certificates.

Run: ``python examples/reconstruct_pretrained_mol.py``. ``molrecon models`` lists what is shipped; a model that
is not shipped is reported, never replaced by an untrained one.
"""

import molrecon
from molrecon.data import builtin_test_example
from molrecon.metrics import object_support, psnr, ssim
from molrecon.recon import reconstruct
from molrecon.weights.pretrained import available_names

y, physics, target = builtin_test_example(0)
support = object_support(target[0])
data_range = float(target.abs().max())


def score(x) -> str:
    return (f"PSNR {psnr(x[0], target[0], data_range, support):6.2f} dB   "
            f"SSIM {ssim(x[0], target[0], data_range, support):.4f}")


print(f"{'sense':12s} {score(reconstruct('sense', y, physics))}   (classical reference)")

shipped = available_names()
for name in ("mol-lr-2d-4x", "mol-sn-2d-4x"):
    if name not in shipped:
        print(f"{name}: not shipped in this installation (shipped: {', '.join(shipped) or 'none'})")
        continue
    model = molrecon.load_pretrained(name)
    x, info = model.solve(y, physics)           # the fixed point of the MOL iteration and how it got there
    print(f"{name:12s} {score(x)}   iterations {int(info.iterations[0])}, converged {bool(info.converged[0])}, "
          f"a-posteriori error bound {float(info.extra['error_bound'][0]):.2e}")
    cert = model.certificate(physics)           # constants of the convergence and robustness theorems
    print(f"  certificate: L = {cert['L']:.4f} ({cert['estimator']}), m = {cert['m']:.4f}, "
          f"contraction = {cert['contraction']:.4f}, robustness constant C = {cert['robustness_constant']:.3g}, "
          f"certified = {cert['certified']}")
