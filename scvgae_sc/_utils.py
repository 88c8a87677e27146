"""Shared input validation and small helpers used by every public function.

Every check raises a :class:`ValueError` or :class:`TypeError` whose message names the problem and
the fix, before anything in the caller's AnnData is modified.
"""

from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "available_memory",
    "batch_labels",
    "check_adata",
    "check_memory",
    "memory_budget",
    "check_counts",
    "check_finite",
    "check_nonnegative",
    "get_layer",
    "keep_torch_threads",
    "rows_vary",
    "seed_everything",
    "to_dense_array",
    "uns_entry",
]


def check_adata(adata: Any, *, inplace: bool = False, min_obs: int = 1, min_vars: int = 1) -> AnnData:
    """Refuse what is not an in-memory, non-empty :class:`~anndata.AnnData`.

    Parameters
    ----------
    adata
        The object passed by the user.
    inplace
        Whether the caller is going to write into ``adata``. Views cannot be written into without
        anndata silently turning them into copies, so an in-place call on a view is refused.
    min_obs, min_vars
        Minimum shape.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}. Wrap your matrix: `AnnData(X)`.")
    if adata.isbacked:
        raise ValueError(
            "adata is backed (opened with backed='r'); this function needs the data in memory. "
            "Load it with `adata = adata.to_memory()`."
        )
    if adata.n_obs < min_obs or adata.n_vars < min_vars:
        raise ValueError(
            f"adata has shape {adata.n_obs} × {adata.n_vars}; at least {min_obs} cells and {min_vars} genes are "
            "needed. Check your filtering."
        )
    if inplace and adata.is_view:
        raise ValueError(
            "adata is a view (a subset such as `adata[mask]`); writing into it would silently copy it. "
            "Pass `adata[mask].copy()`, or use `copy=True`."
        )
    return adata


def get_layer(adata: AnnData, layer: str | None, *, what: str = "layer") -> np.ndarray | sparse.spmatrix:
    """Return ``adata.layers[layer]`` (or ``X`` when ``layer is None``) with a helpful error if missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is None; pass `layer=` naming a layer that holds the data.")
        return adata.X
    if not isinstance(layer, str):
        raise TypeError(f"`{what}` must be a layer name (str) or None, got {type(layer).__name__}.")
    if layer not in adata.layers:
        have = ", ".join(repr(k) for k in adata.layers) or "none"
        hint = ""
        if layer in ("normalized", "counts", "total", "sqrt", "log1p"):
            hint = " Run `scvgae_sc.pp.normalize(adata)` first (it writes 'counts' and 'normalized')."
        elif layer.startswith("masked"):
            hint = " Run `scvgae_sc.pp.mask_dropouts(adata)` first."
        raise ValueError(f"adata.layers has no {what} {layer!r} (layers present: {have}).{hint}")
    return adata.layers[layer]


def batch_labels(adata: AnnData, batch_key: str | None) -> np.ndarray | None:
    """Each cell's batch from ``adata.obs[batch_key]`` as a 1-d object array (``None`` when ``batch_key`` is).

    Refuses a key that is not a str, a missing column and missing labels (NaN / None), naming the first such cell.
    """
    if batch_key is None:
        return None
    if not isinstance(batch_key, str):
        raise TypeError(f"batch_key must be the name (str) of an adata.obs column or None, got {batch_key!r}.")
    if batch_key not in adata.obs.columns:
        have = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise ValueError(
            f"adata.obs has no column {batch_key!r} (batch_key); columns present: {have}. "
            "Store each cell's batch there, e.g. `adata.obs['batch'] = ...` (anndata.concat(..., label='batch') "
            "writes one)."
        )
    column = adata.obs[batch_key]
    missing = np.flatnonzero(column.isna().to_numpy())
    if missing.size:
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {missing.size} missing label(s) (NaN / None; first: cell "
            f"{str(adata.obs_names[missing[0]])!r}). Every cell needs a batch: fill them in or drop those cells."
        )
    return np.asarray(column.to_numpy(), dtype=object)


def _values(X: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """The stored values of a matrix (``.data`` for sparse input)."""
    if sparse.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def check_finite(X: np.ndarray | sparse.spmatrix, name: str) -> None:
    """Refuse NaN or infinite values."""
    v = _values(X)
    if not np.issubdtype(v.dtype, np.number) and v.dtype != bool:
        raise TypeError(f"{name} has dtype {v.dtype}; a numeric matrix is needed.")
    if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
        n_bad = int((~np.isfinite(v)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite values. Remove or replace them before calling this.")


def check_nonnegative(X: np.ndarray | sparse.spmatrix, name: str) -> None:
    """Refuse negative (or non-finite) values."""
    check_finite(X, name)
    v = _values(X)
    if v.size and v.min() < 0:
        raise ValueError(
            f"{name} contains negative values (min {v.min():g}); expected non-negative expression. "
            "Did you pass a scaled (z-scored) matrix? Use counts or a normalized layer instead."
        )


def check_counts(X: np.ndarray | sparse.spmatrix, name: str) -> None:
    """Refuse anything that is not a matrix of non-negative integers (raw counts).

    A full vectorized pass over the stored values: O(nnz), cheap next to anything we do with them.
    """
    check_nonnegative(X, name)
    v = _values(X)
    if np.issubdtype(v.dtype, np.floating) and v.size and not np.array_equal(v, np.round(v)):
        frac = v[v != np.round(v)][:3]
        raise ValueError(
            f"{name} must hold raw counts (non-negative integers) but contains non-integer values "
            f"(e.g. {', '.join(f'{x:g}' for x in frac)}). Pass the raw UMI counts, e.g. "
            "`adata.layers['counts'] = raw_counts`, or recover them from `adata.raw`."
        )


def rows_vary(X: np.ndarray | sparse.spmatrix) -> bool:
    """Whether the rows of ``X`` are not all identical (some column has max > min); PCA needs them to vary."""
    if sparse.issparse(X):
        return bool(np.asarray((X.max(axis=0) - X.min(axis=0)).toarray()).any()) if X.shape[0] else False
    X = np.asarray(X)
    return bool(np.ptp(X, axis=0).any()) if X.size else False


def to_dense_array(X: np.ndarray | sparse.spmatrix, dtype: Any = np.float32) -> np.ndarray:
    """A dense C-contiguous copy-if-needed of ``X`` as ``dtype``."""
    if sparse.issparse(X):
        X = X.toarray()
    return np.ascontiguousarray(np.asarray(X), dtype=dtype)


def seed_everything(random_state: int | None) -> np.random.Generator:
    """Seed Python, NumPy and torch (if imported) from ``random_state``; return a NumPy generator.

    ``None`` leaves the global seeds alone and returns an unseeded generator.
    """
    if random_state is None:
        return np.random.default_rng()
    if not isinstance(random_state, int | np.integer) or isinstance(random_state, bool):
        raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}.")
    random.seed(int(random_state))
    np.random.seed(int(random_state) % 2**32)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(int(random_state))
    return np.random.default_rng(int(random_state))


def uns_entry(adata: AnnData, section: str) -> dict:
    """``adata.uns["scvgae_sc"][section]``, created if missing."""
    from ._constants import UNS_KEY

    root = adata.uns.setdefault(UNS_KEY, {})
    return root.setdefault(section, {})


def params_for_uns(params: Mapping[str, Any]) -> dict:
    """Drop ``None`` values and turn tuples into lists, so ``write_h5ad`` can store the dict."""
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def available_memory() -> float | None:
    """Bytes of memory available now: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the physical memory.

    ``None`` when neither can be read (the memory check is then skipped).
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def memory_budget(max_memory: float | None) -> float | None:
    """``max_memory`` validated, or :func:`available_memory` when it is ``None``."""
    if max_memory is not None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, int | float | np.integer | np.floating):
            raise TypeError(f"max_memory must be a number of bytes or None, got {type(max_memory).__name__}.")
        if not max_memory > 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}.")
        return float(max_memory)
    return available_memory()


def check_memory(need: float, *, what: str, max_memory: float | None = None, hint: str = "") -> None:
    """Refuse, with the figures, work that needs ``need`` bytes when fewer are available.

    Parameters
    ----------
    need
        Estimated peak bytes.
    what
        What needs them, for the message (``"imputing 700 × 765 cells × genes"``).
    max_memory
        Bytes allowed; ``None``: :func:`available_memory` (the check is skipped when that is unknown).
    hint
        Another way out, appended to the message.
    """
    if max_memory is not None:
        limit = memory_budget(max_memory)
        have = f"max_memory is {limit / 1e9:.2f} GB"
    else:
        avail = available_memory()
        if avail is None:
            return
        limit = avail
        have = f"only {limit / 1e9:.2f} GB are available"
    if need > limit:
        raise ValueError(
            f"{what} needs about {need / 1e9:.2f} GB of memory, but {have}. Use fewer cells or genes (e.g. highly "
            "variable genes), or pass max_memory= (bytes) if you know better than the estimate." + hint
        )


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore PyTorch's intra-op thread count after code that changes it behind the caller's back.

    numba's OpenMP threading layer (used by pynndescent and UMAP, hence by ``sc.pp.neighbors``) sets the shared
    OpenMP runtime to all cores the first time it starts in a process — which is also ``torch``'s thread count: a
    ``torch.set_num_threads(1)`` made before would silently become 2 on a 2-core machine. Wrap graph and
    embedding calls in this. Does nothing (and imports nothing) when ``torch`` is not imported.
    """
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)


def counts_source(adata: AnnData, counts_layer: str) -> tuple[np.ndarray | sparse.spmatrix, bool]:
    """The raw counts, checked: ``layers[counts_layer]``, else ``X`` (then ``True``: copy them into that layer)."""
    if counts_layer in adata.layers:
        counts = get_layer(adata, counts_layer, what="counts layer")
        check_counts(counts, f"adata.layers[{counts_layer!r}]")
        return counts, False
    if adata.X is None:
        raise ValueError(f"adata.X is None and there is no layer {counts_layer!r}; put raw counts in X.")
    check_counts(adata.X, f"adata.X (copied to layers[{counts_layer!r}])")
    return adata.X, True


def median_positive(values: np.ndarray) -> float:
    """Median of the positive entries (1 when there are none): the target library of ``pp.normalize``."""
    positive = values[values > 0]
    return float(np.median(positive)) if positive.size else 1.0
