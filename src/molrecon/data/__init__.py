"""Data: the built-in offline multi-coil set (SIMULATED from the real MNI152 2009 anatomy), a loader for
fastMRI-layout HDF5 files (built-in and real fastMRI multicoil), and NIfTI export. See ``docs/data.md``."""

from .builtin import (
    DEFAULTS,
    KINDS,
    build_2d,
    build_3d,
    build_builtin,
    build_dynamic,
    builtin_dataset,
    builtin_test_example,
    default_root,
    ensure_builtin,
    load_manifest,
    plan_axial_splits,
    verify_builtin,
)
from .builtin_radial import RadialDataset, build_radial, build_radial_dynamic
from .header import EncodingInfo, make_header, parse_header
from .nifti import axial_affine, export_nifti
from .slice_dataset import SliceDataset, collate, physics_from_batch
from .transforms import center_crop, fname_seed, rss

__all__ = [
    "DEFAULTS", "KINDS", "build_2d", "build_3d", "build_dynamic", "build_builtin", "builtin_dataset",
    "builtin_test_example", "default_root", "ensure_builtin", "load_manifest", "plan_axial_splits",
    "verify_builtin", "EncodingInfo", "make_header", "parse_header", "axial_affine", "export_nifti",
    "SliceDataset", "RadialDataset", "build_radial", "build_radial_dynamic",
    "collate", "physics_from_batch", "center_crop", "fname_seed", "rss",
]
