from __future__ import annotations

from typing import Literal

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import COUNTS, NORMALIZED
from .._utils import check_adata, counts_source, median_positive, uns_entry

_METHODS = ("sqrt", "log1p", "total")


def _scale_rows(X, factors: np.ndarray):
    """Multiply row i of X by factors[i] (sparse stays sparse)."""
    if sparse.issparse(X):
        return sparse.diags(factors.astype(X.dtype)) @ X
    return X * factors[:, None].astype(X.dtype)


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def _safe_inverse(totals: np.ndarray) -> np.ndarray:
    out = np.zeros_like(totals)
    np.divide(1.0, totals, out=out, where=totals > 0)
    return out


def _apply(method: str, X) -> tuple[np.ndarray | sparse.csr_matrix, float]:
    """Normalize counts ``X`` (float32) with ``method``; return the result and the target row sum."""
    if method == "sqrt":
        # the scVGAE paper: Y = log1p(C); Y <- Y / rowsum(Y) * median(rowsum(Y)); sqrt(Y)
        Y = X.log1p() if sparse.issparse(X) else np.log1p(X)
        totals = _row_sums(Y)
        target = median_positive(totals)
        Y = _scale_rows(Y, target * _safe_inverse(totals))
        Y = Y.sqrt() if sparse.issparse(Y) else np.sqrt(Y)
        return Y, target
    totals = _row_sums(X)
    target = median_positive(totals)
    Y = _scale_rows(X, target * _safe_inverse(totals))
    if method == "log1p":
        Y = Y.log1p() if sparse.issparse(Y) else np.log1p(Y)
    return Y, target


def normalize(
    adata: AnnData,
    *,
    method: Literal["sqrt", "log1p", "total"] = "sqrt",
    counts_layer: str = COUNTS,
    key_added: str = NORMALIZED,
    copy: bool = False,
) -> AnnData | None:
    r"""Normalize raw counts into a layer, keeping the counts.

    Never changes ``X`` or ``raw``. The first call copies the counts from ``X`` into
    ``adata.layers[counts_layer]`` (refusing anything that is not non-negative integers); later calls
    read that layer, so several normalizations can live side by side.

    Methods
    -------
    ``"sqrt"``
        The scVGAE paper's: :math:`Y = \log(1 + C)`; each row scaled to the median row sum of
        :math:`Y`; then :math:`\sqrt{Y}`.
    ``"log1p"``
        Library-size normalization to the median library size, then :math:`\log(1 + x)` (Scanpy's
        ``normalize_total`` + ``log1p``).
    ``"total"``
        Library-size normalization to the median library size, linear (what GNNImpute models and
        what the masked-recovery benchmark scores).

    Cells with no counts stay all-zero (a warning suggests :func:`scvgae_sc.pp.filter`).

    Parameters
    ----------
    adata
        Annotated data matrix; ``X`` holds raw counts unless ``counts_layer`` already exists.
    method
        ``"sqrt"``, ``"log1p"`` or ``"total"``.
    counts_layer
        Layer holding (or to receive) the raw counts.
    key_added
        Layer to write the normalized matrix to.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`. Sets the following fields:

    ``adata.layers[counts_layer]``
        Raw counts (copied from ``X`` if the layer did not exist).
    ``adata.layers[key_added]``
        The normalized matrix (float32; sparse if the counts are sparse).
    ``adata.uns['scvgae_sc']['normalize'][key_added]``
        ``method``, ``counts_layer`` and the ``target_sum`` rows were scaled to.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.normalize(adata)  # sqrt layer for scVGAE
    >>> sv.pp.normalize(adata, method="total", key_added="total")  # linear layer for GNNImpute
    """
    check_adata(adata, inplace=not copy)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    if not isinstance(key_added, str) or not isinstance(counts_layer, str):
        raise TypeError("counts_layer and key_added must be layer names (str).")
    if key_added == counts_layer:
        raise ValueError(f"key_added {key_added!r} would overwrite the counts layer; choose another name.")

    counts, copy_counts = counts_source(adata, counts_layer)

    if copy:
        adata = adata.copy()
    start = logg.info(f"normalizing counts ({method!r})")
    X = sparse.csr_matrix(counts, dtype=np.float32) if sparse.issparse(counts) else np.asarray(counts, np.float32)
    n_empty = int((_row_sums(X) == 0).sum())
    if n_empty:
        logg.warning(f"{n_empty} cells have no counts and stay all-zero; remove them with `scvgae_sc.pp.filter`.")
    Y, target = _apply(method, X)
    if sparse.issparse(Y):
        Y = sparse.csr_matrix(Y, dtype=np.float32)
        Y.eliminate_zeros()
    else:
        Y = np.ascontiguousarray(Y, dtype=np.float32)

    if copy_counts:
        adata.layers[counts_layer] = counts.copy()
    adata.layers[key_added] = Y
    uns_entry(adata, "normalize")[key_added] = {
        "method": method,
        "counts_layer": counts_layer,
        "target_sum": float(target),
    }
    logg.info(
        "    finished",
        time=start,
        deep=f"added {key_added!r} (adata.layers)" + (f", {counts_layer!r} (adata.layers)" if copy_counts else ""),
    )
    return adata if copy else None
