"""Typed options of the imputation methods: frozen dataclasses, grouped, validated when built.

Each method's options are one :class:`MethodOptions` made of groups (graph, architecture, training, output), each
a frozen dataclass whose ``__post_init__`` validates its own fields. Users keep passing them as flat keyword
arguments of :func:`scvgae_sc.tl.impute`; :meth:`MethodOptions.from_kwargs` sorts them into the groups, and
:meth:`MethodOptions.as_dict` gives back the flat dict written to ``uns[key]["params"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np

from .._common import check_fraction, check_positive_int
from .._output import OUTPUT_KINDS, OutputKind

Batching = Literal["auto", "full", "subgraph"]
Precision = Literal["auto", "32", "bf16"]
BatchMode = Literal["within", "balanced"]
FillScale = Literal["auto", "fit", "none"]


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """Refuse anything but ``True`` / ``False``."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}.")


def check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """A finite non-negative (``positive``: positive) number as a float."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}.")
    return float(value)


def check_split(split: Any) -> tuple[float, float, float]:
    """Three non-negative fractions (train, validation, test) summing to 1."""
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"split must be three non-negative fractions (train, validation, test), got {split!r}.")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {split!r} (sum {sum(fractions):g}).")
    return fractions  # type: ignore[return-value]


def check_common(group: Any, *, choices: dict[str, tuple[Any, ...]]) -> None:
    """Validate the ``choices`` of a group (fields present on it only)."""
    for name, allowed in choices.items():
        if hasattr(group, name):
            check_choice(name, getattr(group, name), allowed)


#: Options read by some outputs only: option -> the outputs that read it (``tl.impute`` warns about the others).
OUTPUT_OPTIONS: dict[str, tuple[str, ...]] = {
    "fill_gate": ("fill",),
    "fill_scale": ("fill",),
    "fill_hops": ("fill",),
    "graph_fill": ("fill",),
    "calibrate": ("recon",),
    "posterior": ("denoised",),
}


@dataclass(frozen=True)
class MethodOptions:
    """A method's options: a frozen dataclass whose fields are groups of options (frozen dataclasses)."""

    #: The method's name in error messages.
    method: ClassVar[str] = ""

    @classmethod
    def _group_types(cls) -> dict[str, type]:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The flat dict of every option and its default."""
        return {f.name: f.default for group in cls._group_types().values() for f in fields(group)}

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> MethodOptions:
        """Options from the flat keyword arguments of :func:`scvgae_sc.tl.impute` (the rest at their defaults).

        Raises
        ------
        TypeError
            For an unknown option.
        ValueError
            For a value out of its range or choices.
        """
        known = cls.defaults()
        unknown = set(kwargs) - set(known)
        if unknown:
            raise TypeError(
                f"Unknown option(s) for method={cls.method!r}: {', '.join(sorted(unknown))}. "
                f"Known: {', '.join(sorted(known))}."
            )
        built = {}
        for name, group in cls._group_types().items():
            names = {f.name for f in fields(group)}
            built[name] = group(**{k: v for k, v in kwargs.items() if k in names})
        return cls(**built)

    def unused(self, given: Iterable[str]) -> list[str]:
        """The options among ``given`` that the chosen ``output`` does not read (:data:`OUTPUT_OPTIONS`)."""
        output = self.as_dict()["output"]
        return [k for k in given if k in OUTPUT_OPTIONS and output not in OUTPUT_OPTIONS[k]]

    def as_dict(self) -> dict[str, Any]:
        """Every option as a flat dict (the keys of :meth:`defaults`)."""
        out = {}
        for name in self._group_types():
            group = getattr(self, name)
            out.update({f.name: getattr(group, f.name) for f in fields(group)})
        return out

    def replace(self, **changes: Any) -> MethodOptions:
        """A copy with some flat options changed (validated again)."""
        return type(self).from_kwargs(**{**self.as_dict(), **changes})


# ---------------------------------------------------------------------------------------------------- scVGAE


@dataclass(frozen=True)
class SCVGAEGraph:
    """The graph scVGAE builds when no ``graph_key`` is given."""

    graph: Literal["knn", "kernel"] = "knn"
    n_neighbors: int = 15
    n_pcs: int | None = 50
    percentile: float = 85
    batch_mode: BatchMode = "within"

    def __post_init__(self) -> None:
        check_common(self, choices={"graph": ("knn", "kernel"), "batch_mode": ("within", "balanced")})
        check_positive_int("n_neighbors", self.n_neighbors, minimum=2)


@dataclass(frozen=True)
class SCVGAEArchitecture:
    """The network: widths, heads, decoder input, add-back, variational latent."""

    hidden: int = 128
    decoder_hidden: int = 256
    decoder_input: Literal["latent", "mean"] = "latent"
    heads: Literal["auto", "gcn", "linear"] = "auto"
    variational: bool = False
    add_back: bool = True
    add_back_init: float = 1.0

    def __post_init__(self) -> None:
        check_common(self, choices={"decoder_input": ("mean", "latent"), "heads": ("auto", "gcn", "linear")})
        for k in ("variational", "add_back"):
            check_bool(k, getattr(self, k))
        for k in ("hidden", "decoder_hidden"):
            check_positive_int(k, getattr(self, k))
        _check_plain_number("add_back_init", self.add_back_init)


@dataclass(frozen=True)
class SCVGAETraining:
    """The objective, the masking and the optimizer steps."""

    objective: Literal["auto", "reconstruct", "molecules"] = "auto"
    alpha: float | Literal["auto"] = "auto"
    lr: float | Literal["auto"] = "auto"
    weight_decay: float = 0.0
    kl_weight: float = 1.0
    zinb_target: Literal["counts", "normalized"] = "counts"
    mask_rate: float | Literal["auto"] = "auto"
    mask_weight: float = 1.0
    transform: Literal["auto", "none", "log1p"] = "auto"
    batch_size: int | None = 512
    batching: Batching = "auto"
    precision: Precision = "32"
    progress_bar: bool | None = None

    def __post_init__(self) -> None:
        check_common(
            self,
            choices={
                "objective": ("auto", "reconstruct", "molecules"),
                "transform": ("auto", "none", "log1p"),
                "zinb_target": ("counts", "normalized"),
                "precision": ("auto", "32", "bf16"),
                "batching": ("auto", "full", "subgraph"),
            },
        )
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size, minimum=2)
        if self.alpha != "auto":
            check_fraction("alpha", self.alpha)
        if self.mask_rate != "auto":
            check_fraction("mask_rate", self.mask_rate, high=1.0, closed=False)
        for k in ("lr", "weight_decay", "kl_weight", "mask_weight"):
            if getattr(self, k) != "auto":
                _check_plain_number(k, getattr(self, k), positive=k == "lr")


@dataclass(frozen=True)
class SCVGAEOutput:
    """What the imputed matrix is made of (see :mod:`scvgae_sc.tl._output`)."""

    output: OutputKind = "denoised"
    posterior: bool = True
    calibrate: bool = True
    fill_scale: FillScale = "auto"
    fill_gate: float = 0.4
    fill_hops: int = 2
    graph_fill: bool = True

    def __post_init__(self) -> None:
        check_positive_int("fill_hops", self.fill_hops)
        for k in ("posterior", "calibrate", "graph_fill"):
            check_bool(k, getattr(self, k))
        check_common(self, choices={"output": tuple(OUTPUT_KINDS), "fill_scale": ("auto", "fit", "none")})
        check_fraction("fill_gate", self.fill_gate)


def _check_plain_number(name: str, value: Any, *, positive: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a non-negative number{' > 0' if positive else ''}, got {value!r}.")


#: What ``"auto"`` training settings of scVGAE become, by output (chosen on the molecular cross-validation and the
#: masked benchmarks; ``max_epochs`` when ``tl.impute(max_epochs=None)``).
SCVGAE_AUTO_TRAINING: dict[str, dict[str, Any]] = {
    "denoised": {"alpha": 0.0, "mask_rate": 0.0, "lr": 3e-3, "max_epochs": 40, "heads": "linear"},
    "fill": {"alpha": 0.05, "mask_rate": 0.1, "lr": 1e-3, "max_epochs": 100, "heads": "gcn"},
    "recon": {"alpha": 0.05, "mask_rate": 0.1, "lr": 1e-3, "max_epochs": 100, "heads": "gcn"},
}


@dataclass(frozen=True)
class SCVGAEOptions(MethodOptions):
    """The options of ``tl.impute(method="scvgae", ...)`` (see :func:`scvgae_sc.tl.scvgae_options`)."""

    method: ClassVar[str] = "scvgae"
    graph: SCVGAEGraph = SCVGAEGraph()
    architecture: SCVGAEArchitecture = SCVGAEArchitecture()
    training: SCVGAETraining = SCVGAETraining()
    output: SCVGAEOutput = SCVGAEOutput()

    @classmethod
    def _group_types(cls) -> dict[str, type]:
        return {
            "graph": SCVGAEGraph,
            "architecture": SCVGAEArchitecture,
            "training": SCVGAETraining,
            "output": SCVGAEOutput,
        }


# ---------------------------------------------------------------------------------------------------- GNNImpute


@dataclass(frozen=True)
class GNNImputeGraph:
    """The k-NN graph GNNImpute builds when no ``graph_key`` is given."""

    n_neighbors: int = 5
    n_pcs: int | None = 50
    batch_mode: BatchMode = "within"

    def __post_init__(self) -> None:
        check_common(self, choices={"batch_mode": ("within", "balanced")})
        check_positive_int("n_neighbors", self.n_neighbors, minimum=2)
        if self.n_pcs is not None:
            check_positive_int("n_pcs", self.n_pcs, minimum=0)


@dataclass(frozen=True)
class GNNImputeArchitecture:
    """Widths, attention heads and dropout of the two GAT layers and the decoder."""

    hidden: int = 512
    latent: int = 50
    heads: int = 3
    dropout: float = 0.5
    attention_dropout: float = 0.6

    def __post_init__(self) -> None:
        for k in ("hidden", "latent", "heads"):
            check_positive_int(k, getattr(self, k))
        check_fraction("dropout", self.dropout, high=1.0, closed=False)
        check_fraction("attention_dropout", self.attention_dropout, high=1.0, closed=False)


@dataclass(frozen=True)
class GNNImputeTraining:
    """Early stopping, the optimizer, the cell split, the masking and the batches."""

    objective: Literal["auto", "reconstruct", "molecules"] = "auto"
    patience: int | Literal["auto"] = "auto"
    lr: float = 2e-3
    weight_decay: float = 5e-4
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    mask_rate: float = 0.1
    mask_weight: float = 1.0
    precision: Precision = "auto"
    batching: Batching = "auto"
    batch_size: int = 512
    progress_bar: bool | None = None

    def __post_init__(self) -> None:
        check_common(
            self,
            choices={
                "objective": ("auto", "reconstruct", "molecules"),
                "precision": ("auto", "32", "bf16"),
                "batching": ("auto", "full", "subgraph"),
            },
        )
        check_positive_int("batch_size", self.batch_size, minimum=2)
        p = self.patience
        if p != "auto" and (not isinstance(p, int | np.integer) or isinstance(p, bool) or p < 1):
            raise ValueError(f"patience must be an integer >= 1 or 'auto', got {p!r}.")
        check_fraction("mask_rate", self.mask_rate, high=1.0, closed=False)
        check_number("lr", self.lr, positive=True)
        check_number("weight_decay", self.weight_decay)
        check_number("mask_weight", self.mask_weight)
        check_split(self.split)


@dataclass(frozen=True)
class GNNImputeOutput:
    """What the imputed matrix is made of (see :mod:`scvgae_sc.tl._output`)."""

    output: OutputKind = "denoised"
    posterior: bool = True
    fill_gate: float = 0.0
    fill_scale: FillScale = "auto"
    fill_hops: int = 3
    graph_fill: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        check_bool("posterior", self.posterior)
        check_common(self, choices={"output": tuple(OUTPUT_KINDS), "fill_scale": ("auto", "fit", "none")})
        check_fraction("fill_gate", self.fill_gate)
        check_positive_int("fill_hops", self.fill_hops)
        if not isinstance(self.graph_fill, bool | np.bool_) and self.graph_fill != "auto":
            raise TypeError(f"graph_fill must be True, False or 'auto', got {self.graph_fill!r}.")


@dataclass(frozen=True)
class GNNImputeOptions(MethodOptions):
    """The options of ``tl.impute(method="gnnimpute", ...)`` (see :func:`scvgae_sc.tl.gnnimpute_options`)."""

    method: ClassVar[str] = "gnnimpute"
    graph: GNNImputeGraph = GNNImputeGraph()
    architecture: GNNImputeArchitecture = GNNImputeArchitecture()
    training: GNNImputeTraining = GNNImputeTraining()
    output: GNNImputeOutput = GNNImputeOutput()

    @classmethod
    def _group_types(cls) -> dict[str, type]:
        return {
            "graph": GNNImputeGraph,
            "architecture": GNNImputeArchitecture,
            "training": GNNImputeTraining,
            "output": GNNImputeOutput,
        }
