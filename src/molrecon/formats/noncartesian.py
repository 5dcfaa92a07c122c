"""Non-Cartesian multicoil HDF5: k-space samples on a trajectory (``docs/formats.md``, "Non-Cartesian HDF5").

Layout (told apart from fastMRI by its ``trajectory`` dataset, :func:`molrecon.formats.detect.detect_format`):

- ``kspace`` ``[S, C, K]`` (2D and 3D) or ``[S, C, T, K]`` (2D+time, one trajectory per frame), complex;
- ``trajectory`` in pixels, k-space edge at ``±N/2`` (sigpy's and BART's convention, ``docs/noncartesian.md``):
  ``[K, ndim]`` shared by all slices, ``[S, K, ndim]`` one per slice, or ``[T, K, 2]`` for 2D+time;
- ``dcf`` (optional, real, ``>= 0``) of the shape ``trajectory.shape[:-1]``, or ``[K]`` (``[T, K]``) shared;
- ``maps`` (optional) ``[S or 1, C, *spatial]``; without them ESPIRiT runs on the gridded k-space centre;
- the image size: root attribute ``matrix`` (the ``ndim`` encoded axes, e.g. ``[128, 128]``), else the last
  ``ndim`` axes of ``maps``; root attribute ``dims`` (else ``3d`` for a 3-column trajectory, ``2d+t`` for a
  4-axis k-space, ``2d`` otherwise). Other datasets (e.g. the built-in sets' ``target``) are ignored.

Every check happens on read, before any computation, and fails with one line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import open_h5, write_h5_atomic
from ..names import DIMS
from .cfl import SLICE, _base, molrecon_to_bart, write_cfl
from .problem import RawProblem

#: relative slack on the ``±N/2`` edge (float32 trajectories written by other tools land a few ulp outside)
EDGE_SLACK = 1e-5


def _read(f, key: str, path: Path) -> np.ndarray | None:
    if key not in f:
        return None
    try:
        value = np.asarray(f[key][()])
    except (OSError, TypeError) as exc:
        raise InputError(f"{path}: cannot read {key!r}: truncated or corrupted ({exc})") from None
    if value.dtype.kind not in "biufc":
        raise InputError(f"{path}: {key!r} holds {value.dtype} values, expected numbers")
    if not np.isfinite(value).all():
        raise InputError(f"{path}: {key!r} contains NaN or Inf values")
    return value


def _attr(attrs: dict, key: str):
    value = attrs.get(key)
    return value.decode() if isinstance(value, bytes) else value


def _dims_of(path: Path, kspace: np.ndarray, traj: np.ndarray, dims: str | None) -> str:
    if dims is None:
        ndim = traj.shape[-1]
        dims = "3d" if ndim == 3 else ("2d+t" if kspace.ndim == 4 else "2d")
    if dims not in DIMS:
        raise InputError(f"{path}: unknown dims {dims!r} (choose {', '.join(DIMS)})")
    want = 4 if dims == "2d+t" else 3
    if kspace.ndim != want:
        layout = "[S, C, T, K]" if dims == "2d+t" else "[S, C, K]"
        raise InputError(f"{path}: non-Cartesian {dims} 'kspace' must be {layout}, got shape {kspace.shape}")
    return dims


def _check_trajectory(path: Path, kspace: np.ndarray, traj: np.ndarray, dims: str) -> None:
    ndim = 3 if dims == "3d" else 2
    s, k = kspace.shape[0], kspace.shape[-1]
    if traj.dtype.kind == "c" or traj.shape[-1:] != (ndim,):
        raise InputError(f"{path}: 'trajectory' must be real [..., K, {ndim}] for {dims} data, got shape "
                         f"{traj.shape} {traj.dtype}")
    if dims == "2d+t":
        frames = kspace.shape[2]
        ok = traj.shape == (frames, k, 2)
        layout = f"[T={frames}, K={k}, 2]"
    else:
        ok = traj.shape in ((k, ndim), (s, k, ndim))
        layout = f"[K={k}, {ndim}] or [S={s}, K={k}, {ndim}]"
    if not ok:
        raise InputError(f"{path}: 'trajectory' has shape {traj.shape}, expected {layout} to match 'kspace' "
                         f"{kspace.shape}")


def _matrix(path: Path, attrs: dict, maps: np.ndarray | None, ndim: int) -> tuple[int, ...]:
    matrix = attrs.get("matrix")
    if matrix is not None:
        m = np.asarray(matrix).ravel()
        if m.size != ndim or m.dtype.kind not in "iuf" or not np.all(m >= 1) or not np.all(m == np.round(m)):
            raise InputError(f"{path}: attribute 'matrix' must hold {ndim} positive integers (the image size), "
                             f"got {matrix!r}")
        return tuple(int(v) for v in m)
    if maps is not None and maps.ndim >= 2 + ndim:
        return tuple(int(v) for v in maps.shape[-ndim:])
    raise InputError(f"{path}: missing image size: give the root attribute 'matrix' (e.g. [128, 128]) or 'maps'")


def read_noncartesian(path: str | os.PathLike, dims: str | None = None) -> RawProblem:
    """Read and check a non-Cartesian file (module docstring) into a :class:`RawProblem` with ``trajectory``,
    ``dcf`` and ``matrix`` set; its ``mask`` is all ones (every stored sample is measured)."""
    path = Path(path)
    with open_h5(path) as f:
        kspace = _read(f, "kspace", path)
        traj = _read(f, "trajectory", path)
        dcf = _read(f, "dcf", path)
        maps = _read(f, "maps", path)
        attrs = dict(f.attrs)
    if kspace is None or traj is None:
        raise InputError(f"{path}: a non-Cartesian file needs both 'kspace' and 'trajectory'")
    if not np.iscomplexobj(kspace):
        raise InputError(f"{path}: 'kspace' must be complex, got dtype {kspace.dtype}")
    if kspace.size == 0:
        raise InputError(f"{path}: 'kspace' is empty (shape {kspace.shape})")
    dims = _dims_of(path, kspace, traj, dims if dims is not None else _attr(attrs, "dims"))
    _check_trajectory(path, kspace, traj, dims)
    ndim = traj.shape[-1]
    matrix = _matrix(path, attrs, maps, ndim)
    edge = np.asarray(matrix, np.float64) / 2
    reach = np.abs(traj.reshape(-1, ndim)).max(axis=0)
    over = np.nonzero(reach > edge * (1 + EDGE_SLACK))[0]
    if over.size:
        a = int(over[0])
        raise InputError(f"{path}: 'trajectory' axis {a} reaches {reach[a]:.4g}, outside the k-space edge "
                         f"±{edge[a]:g} of the {'x'.join(map(str, matrix))} matrix (coordinates in pixels, edge ±N/2)")
    if dcf is not None:
        if np.iscomplexobj(dcf) or (dcf < 0).any():
            raise InputError(f"{path}: 'dcf' must be real and >= 0")
        shared = traj.shape[:-1] if traj.ndim == 2 or dims == "2d+t" else traj.shape[1:-1]
        if dcf.shape not in (traj.shape[:-1], shared):
            raise InputError(f"{path}: 'dcf' has shape {dcf.shape}, expected {traj.shape[:-1]} (the trajectory "
                             f"without its last axis)")
        dcf = dcf.astype(np.float32)
    spatial = (kspace.shape[2], *matrix) if dims == "2d+t" else matrix
    if maps is not None:
        want = (kspace.shape[1], *spatial)
        if not np.iscomplexobj(maps) or maps.ndim != 2 + len(spatial) or maps.shape[1:] != want or \
                maps.shape[0] not in (1, kspace.shape[0]):
            raise InputError(f"{path}: 'maps' {maps.shape} {maps.dtype} do not fit: expected complex [S or 1, "
                             f"{', '.join(map(str, want))}] for 'kspace' {kspace.shape} on a "
                             f"{'x'.join(map(str, matrix))} matrix")
        maps = maps.astype(np.complex64)
    return RawProblem(kspace=kspace.astype(np.complex64), mask=np.ones(kspace.shape[2:], np.float32), dims=dims,
                      source=path, maps=maps, attrs=attrs, trajectory=traj.astype(np.float32), dcf=dcf,
                      matrix=matrix)


def write_noncartesian(path: str | os.PathLike, problem: RawProblem) -> Path:
    """Write a non-Cartesian ``problem`` (``trajectory`` and ``matrix`` set) in the layout above, atomically."""
    path = Path(path)
    if problem.trajectory is None or problem.matrix is None:
        raise InputError(f"{path}: the non-Cartesian layout needs a trajectory; {problem.source} is Cartesian "
                         f"(write it as fastMRI .h5, ISMRMRD .mrd or BART .cfl)")
    datasets: dict = {"kspace": problem.kspace.astype(np.complex64),
                      "trajectory": np.asarray(problem.trajectory, np.float32)}
    if problem.dcf is not None:
        datasets["dcf"] = np.asarray(problem.dcf, np.float32)
    if problem.maps is not None:
        datasets["maps"] = problem.maps.astype(np.complex64)
    attrs = {k: v for k, v in problem.attrs.items() if isinstance(v, (str, int, float, bool, np.generic, np.ndarray))}
    attrs.update({"dims": problem.dims, "source": str(problem.source),
                  "matrix": np.asarray(problem.matrix, np.int64)})
    write_h5_atomic(path, datasets, attrs)
    return path


def problem_from_arrays(kspace: np.ndarray, trajectory: np.ndarray, matrix: tuple[int, ...], dims: str,
                        source: str | os.PathLike = "<memory>", maps: np.ndarray | None = None,
                        dcf: np.ndarray | None = None, attrs: dict | None = None) -> RawProblem:
    """A non-Cartesian :class:`RawProblem` from arrays (for :func:`write_noncartesian`; checked on read)."""
    return RawProblem(kspace=np.asarray(kspace, np.complex64), mask=np.ones(np.shape(kspace)[2:], np.float32),
                      dims=dims, source=Path(source), maps=maps, attrs=dict(attrs or {}),
                      trajectory=np.asarray(trajectory, np.float32), dcf=dcf, matrix=tuple(int(m) for m in matrix))


def to_bart_noncartesian(kspace: np.ndarray, trajectory: np.ndarray, readout: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """One 2D slice in BART's non-Cartesian layout: k-space ``[C, K]`` → ``[1, R, K/R, C]`` and trajectory
    ``[K, 2]`` (spoke-major, ``R = readout`` samples per spoke; ``None``: one spoke of ``K``) → ``[3, R, K/R]``.

    Both use pixels with the edge at ``±N/2``; molrecon's axis ``d`` of the trajectory is BART's dimension ``d``
    (molrecon's ``(H, W)`` image is BART's ``(READ, PHS1)``, :mod:`molrecon.formats.cfl`). BART's NUFFT then
    has the scale of :class:`~molrecon.physics.NonCartesianMRI` (measured: 1.0009, ``docs/noncartesian.md``).
    """
    kspace, trajectory = np.asarray(kspace), np.asarray(trajectory)
    if kspace.ndim != 2 or trajectory.shape != (kspace.shape[1], 2):
        raise InputError(f"expected k-space [C, K] and a 2D trajectory [K, 2], got {kspace.shape} and "
                         f"{trajectory.shape}")
    k = kspace.shape[1]
    r = k if readout is None else int(readout)
    if r < 1 or k % r:
        raise InputError(f"{k} samples are not a whole number of spokes of {r}")
    spokes = k // r
    traj = np.zeros((3, r, spokes), np.complex64)
    t = trajectory.reshape(spokes, r, 2)
    traj[0], traj[1] = t[..., 0].T, t[..., 1].T
    ksp = kspace.reshape(kspace.shape[0], spokes, r).transpose(2, 1, 0)[None].astype(np.complex64)
    return ksp, traj


def _readout(problem: RawProblem) -> int | None:
    """Samples per spoke: the file's ``readout`` attribute when it divides ``K``, else ``None`` (one spoke)."""
    r = problem.attrs.get("readout")
    k = problem.kspace.shape[-1]
    try:
        r = int(np.asarray(r).ravel()[0]) if r is not None else None
    except (TypeError, ValueError, IndexError):
        return None
    return r if r and r > 0 and k % r == 0 else None


def _with_slices(a: np.ndarray) -> np.ndarray:
    """BART arrays ``[S, *dims]`` → slices on BART's SLICE dimension (13)."""
    a = np.moveaxis(a, 0, -1)
    return a.reshape(*a.shape[:-1], *([1] * (SLICE - (a.ndim - 1))), a.shape[-1])


def write_noncartesian_cfl(path: str | os.PathLike, problem: RawProblem) -> Path:
    """Write a 2D non-Cartesian ``problem`` for ``bart pics -t``: ``NAME`` (k-space ``[1, R, spokes, C]``),
    ``NAME_traj`` (``[3, R, spokes]``) and, with maps, ``NAME_maps`` (``[H, W, 1, C]``); slices on BART's SLICE
    dimension (:func:`to_bart_noncartesian`; ``R`` is the file's ``readout`` attribute, else one spoke of ``K``)."""
    base = _base(path)
    if problem.dims != "2d" or problem.trajectory is None:
        raise InputError(f"{base}.cfl: BART export of non-Cartesian data is for 2D files (this one is "
                         f"{problem.dims})")
    r, traj = _readout(problem), np.asarray(problem.trajectory)
    per_slice = traj.ndim == 3
    pairs = [to_bart_noncartesian(problem.kspace[s], traj[s] if per_slice else traj, r)
             for s in range(problem.kspace.shape[0])]
    out = write_cfl(base, _with_slices(np.stack([k for k, _ in pairs])), command="molrecon convert")
    trajectories = np.stack([t for _, t in pairs]) if per_slice else pairs[0][1][None]
    write_cfl(base.with_name(base.name + "_traj"), _with_slices(trajectories), command="molrecon convert")
    if problem.maps is not None:
        write_cfl(base.with_name(base.name + "_maps"), molrecon_to_bart(problem.maps, "2d"),
                  command="molrecon convert")
    return out


__all__ = ["read_noncartesian", "write_noncartesian", "write_noncartesian_cfl", "problem_from_arrays",
           "to_bart_noncartesian"]
