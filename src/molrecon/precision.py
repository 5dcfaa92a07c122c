"""IEEE float32 arithmetic for convolutions and matrix products on CUDA (TF32 off).

PyTorch runs float32 convolutions on NVIDIA GPUs from Ampere on in TF32 by default
(``torch.backends.cudnn.allow_tf32`` is true): a 10-bit mantissa, as float16 has. MOL's forward
stops at a relative residual of ``tol`` = 1e-4, and a CNN in float16 keeps it from getting there
(``benchmarks/mixed-precision/``); its certificates and a-posteriori error bounds also assume the
map that is iterated is the float32 one. So the command line runs every method, MoDL included, in IEEE float32;
a program that uses the library on a GPU calls :func:`use_ieee_float32` once for the same arithmetic.
Nothing changes on CPU, where PyTorch has no TF32 path.

Example
-------
>>> use_ieee_float32()
>>> torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
(False, False)
"""

from __future__ import annotations

import torch


def use_ieee_float32() -> None:
    """Make float32 convolutions (cuDNN) and matrix products (cuBLAS) use IEEE float32 for this process.

    Through the ``allow_tf32`` flags: in PyTorch 2.13, setting only the newer per-operator ``fp32_precision``
    makes every later read of ``torch.backends.cudnn.allow_tf32`` raise.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


__all__ = ["use_ieee_float32"]
