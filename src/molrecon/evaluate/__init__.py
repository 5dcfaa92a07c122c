"""Metrics, reports, robustness tests and plots."""

from ..metrics import evaluate_volume, nmse, object_support, psnr, ssim

__all__ = ["psnr", "ssim", "nmse", "evaluate_volume", "object_support"]
