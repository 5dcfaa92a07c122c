"""The project's vocabulary, defined once: reconstruction methods, MOL constraints, spatial dims and data kinds.

Every other module imports these names instead of spelling them again (``docs/conventions.md`` lists them for
readers). :data:`METHODS` is the one registry of methods: for each, its family (classical or learned), how a
learned one is built (:func:`molrecon.models.build_model` reads ``constraint`` and ``iterations_key``), how it is
shown (label, plot colour and marker) and whether it is a fixed-point model (MOL-SN, MOL-LR, DEQ).

How a method runs or is built lives in the layer that owns it, and one call there registers its name here too:
:func:`molrecon.recon.register_classical` (classical runners) and :func:`molrecon.models.factory.register_model`
(model classes); :func:`molrecon.evaluate.methods.run` runs either. ``CLASSICAL_METHODS``, ``LEARNED_METHODS``
and the other lists are live views of :data:`METHODS` (:class:`MethodNames`), so a registered method is known
to every module that imported them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

#: Spatial layouts of an image ``[B, *spatial]``: ``(H, W)``, ``(D, H, W)`` and ``(T, H, W)``.
DIMS: tuple[str, ...] = ("2d", "3d", "2d+t")
#: The spelling of each dims in pretrained names and command-line flags (``mol-lr-2dt-4x``, ``--shape-2dt``).
DIMS_TAG: dict[str, str] = {"2d": "2d", "3d": "3d", "2d+t": "2dt"}
#: Kinds of the built-in data set and the dims of their images.
DIMS_OF_KIND: dict[str, str] = {"2d": "2d", "3d": "3d", "dynamic": "2d+t", "radial": "2d", "radial-dynamic": "2d+t"}
#: Kinds acquired on a non-Cartesian trajectory (their datasets carry ``trajectory`` instead of ``mask``).
NONCARTESIAN_KINDS: tuple[str, ...] = ("radial", "radial-dynamic")
#: Accepted spellings of a data kind (the dims spellings of ``dynamic`` included).
KIND_ALIASES: dict[str, str] = {"2d": "2d", "3d": "3d", "dynamic": "dynamic", "2d+t": "dynamic", "2dt": "dynamic",
                                "radial": "radial", "radial-dynamic": "radial-dynamic"}


@dataclass(frozen=True)
class MethodSpec:
    """One reconstruction method: how it is identified, built and shown."""

    name: str
    label: str
    family: str  # "classical" or "learned"
    color: str = "k"
    marker: str = "x"
    #: MOL's ``constraint`` argument (``sn``, ``lr``, ``none``); ``None`` for a model that is not MOL
    constraint: str | None = None
    #: the constructor argument that sets the number of iterations (learned methods only)
    iterations_key: str | None = None

    @property
    def fixed_point(self) -> bool:
        """A deep-equilibrium model, solved to a fixed point (MOL-SN, MOL-LR, DEQ)."""
        return self.constraint is not None


_SPECS = (
    MethodSpec("zero-filled", "Zero-filled", "classical", "tab:gray", "."),
    MethodSpec("sense", "SENSE", "classical", "tab:brown", "v"),
    MethodSpec("cs-wavelet", "CS (wavelet)", "classical", "tab:olive", "<"),
    MethodSpec("cs-tv", "CS (TV)", "classical", "tab:cyan", ">"),
    MethodSpec("modl", "MoDL", "learned", "tab:red", "o", iterations_key="K"),
    MethodSpec("deq", "DEQ", "learned", "tab:purple", "d", constraint="none", iterations_key="max_iter"),
    MethodSpec("mol-sn", "MOL-SN", "learned", "tab:green", "^", constraint="sn", iterations_key="max_iter"),
    MethodSpec("mol-lr", "MOL-LR", "learned", "tab:blue", "s", constraint="lr", iterations_key="max_iter"),
)
#: The registry, in the order of every table and figure (classical first).
METHODS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}


class MethodNames(Sequence[str]):
    """The names of the registered methods that pass ``keep``, in registry order, read at each use.

    A live view rather than a tuple frozen at import, so that a method registered later
    (:func:`register_method`) is known to every module that imported the view: command-line choices, the
    evaluation's checks, the demo's lists. It compares equal to the tuple of the same names."""

    def __init__(self, keep: Callable[[MethodSpec], bool]) -> None:
        self._keep = keep

    def _names(self) -> tuple[str, ...]:
        return tuple(n for n, s in METHODS.items() if self._keep(s))

    def __getitem__(self, index):  # type: ignore[override]
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        spec = METHODS.get(name) if isinstance(name, str) else None
        return spec is not None and self._keep(spec)

    def __add__(self, other: Sequence[str]) -> tuple[str, ...]:
        return self._names() + tuple(other)

    def __eq__(self, other: object) -> bool:
        return self._names() == (tuple(other) if isinstance(other, (tuple, list, MethodNames)) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


#: The methods of this release (the registry may hold more, :func:`register_method`).
SHIPPED_METHODS: tuple[str, ...] = tuple(METHODS)
METHOD_ORDER = MethodNames(lambda s: True)
CLASSICAL_METHODS = MethodNames(lambda s: s.family == "classical")
LEARNED_METHODS = MethodNames(lambda s: s.family == "learned")
FIXED_POINT_METHODS = MethodNames(lambda s: s.fixed_point)
#: MOL's constraints (``models/constraints.py``; their estimators: ``models/lipschitz.py``): spectral norm,
#: Lipschitz penalty, none.
CONSTRAINTS: tuple[str, ...] = ("sn", "lr", "none")
#: MOL's constraint of each fixed-point method, and back.
MOL_CONSTRAINTS: dict[str, str] = {n: s.constraint for n, s in METHODS.items() if s.constraint is not None}
CONSTRAINT_METHOD: dict[str, str] = {c: n for c in CONSTRAINTS for n, m in MOL_CONSTRAINTS.items() if m == c}
#: Constraints whose Lipschitz bound is an estimate, not a certificate (training watches it for divergence).
ESTIMATED_CONSTRAINTS: tuple[str, ...] = ("lr",)
#: MOL's parametrisations of H (``model.architecture``, :mod:`molrecon.models.priors`) and the constraints each
#: serves: ``plain`` every one, ``residual`` the estimated and unconstrained ones, ``sll`` the certified one and
#: ``orthogonal`` the certified and the estimated ones (under MOL-LR its proven bound may exceed 1).
ARCHITECTURES: dict[str, tuple[str, ...]] = {"plain": CONSTRAINTS, "residual": ESTIMATED_CONSTRAINTS + ("none",),
                                             "sll": ("sn",), "orthogonal": ("sn",) + ESTIMATED_CONSTRAINTS}
ESTIMATED_LIPSCHITZ_METHODS = MethodNames(lambda s: s.constraint in ESTIMATED_CONSTRAINTS)


def display_name(name: str) -> str:
    """The label of a method in tables and figures (the name itself when it is not a known method)."""
    spec = METHODS.get(name)
    return spec.label if spec else name


def method_color(name: str, default: str = "k") -> str:
    """The one plot colour of a method (the same in every figure)."""
    spec = METHODS.get(name)
    return spec.color if spec else default


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the vocabulary (after the shipped ones; a MOL constraint's method is then its
    ``CONSTRAINT_METHOD`` too). Called by the registries above this one
    (:func:`molrecon.recon.register_classical`, :func:`molrecon.models.factory.register_model`), which also
    say how to run or build it."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.family not in ("classical", "learned"):
        raise ValueError(f"method {spec.name!r}: family must be 'classical' or 'learned', got {spec.family!r}")
    if spec.constraint is not None and spec.constraint not in CONSTRAINTS:
        raise ValueError(f"method {spec.name!r}: unknown constraint {spec.constraint!r} ({', '.join(CONSTRAINTS)})")
    METHODS[spec.name] = spec
    if spec.constraint is not None:
        MOL_CONSTRAINTS[spec.name] = spec.constraint
        CONSTRAINT_METHOD.setdefault(spec.constraint, spec.name)
    return spec


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (the shipped ones stay)."""
    if name in SHIPPED_METHODS:
        raise ValueError(f"method {name!r} is shipped and cannot be removed")
    spec = METHODS.pop(name, None)
    if spec is not None and spec.constraint is not None:
        MOL_CONSTRAINTS.pop(name, None)
        if CONSTRAINT_METHOD.get(spec.constraint) == name:
            del CONSTRAINT_METHOD[spec.constraint]
