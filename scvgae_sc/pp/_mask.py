from __future__ import annotations

import numbers

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import COUNTS, MASKED, NORMALIZED, mask_counts_key, mask_key
from .._utils import (
    check_adata,
    check_finite,
    check_nonnegative,
    get_layer,
    params_for_uns,
    seed_everything,
    uns_entry,
)

#: A gene needs more than this many non-zero counts to have any of them hidden.
MIN_NONZERO = 3
#: Tolerance added before flooring ``rate * nnz`` so that e.g. ``0.29 * 100`` gives 29, not 28.
_FLOOR_EPS = 1e-9


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"rate must be a number in (0, 1), got {type(rate).__name__}.")
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must lie strictly between 0 and 1 (a fraction of each gene's non-zeros), got {rate}.")
    return rate


def _check_matrix(X, name: str) -> None:
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        raise TypeError(
            f"{name} is a {type(X).__name__}; a NumPy array or SciPy sparse matrix is needed. "
            "Load the data into memory first."
        )


def n_to_mask(nnz: np.ndarray, rate: float) -> np.ndarray:
    """How many non-zeros :func:`mask_dropouts` hides in a gene with ``nnz`` non-zeros.

    ``floor(rate · nnz)`` for genes with more than :data:`MIN_NONZERO` non-zeros, else 0.
    """
    nnz = np.asarray(nnz, dtype=np.int64)
    n = np.floor(rate * nnz + _FLOOR_EPS).astype(np.int64)
    return np.where(nnz > MIN_NONZERO, n, 0)


def _nonzero_pattern(C) -> sparse.csc_matrix:
    """Boolean CSC pattern of the non-zeros of ``C``: canonical (sorted indices, no explicit zeros).

    Dense and sparse input give the same pattern, so the draw below is the same for both.
    """
    P = (C != 0) if sparse.issparse(C) else sparse.csc_matrix(np.asarray(C) != 0)
    P = sparse.csc_matrix(P, dtype=bool)
    P.eliminate_zeros()
    P.sort_indices()
    return P


def _draw(P: sparse.csc_matrix, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick ``n_to_mask(nnz_j)`` non-zeros of every column ``j`` of ``P`` uniformly without replacement.

    Vectorized: every non-zero gets a uniform random key; within each column the non-zeros with the
    smallest keys are taken. O(nnz log nnz), no loop over genes.
    """
    nnz_per_gene = np.diff(P.indptr).astype(np.int64)
    k_per_gene = n_to_mask(nnz_per_gene, rate)
    cols = np.repeat(np.arange(P.shape[1], dtype=np.int64), nnz_per_gene)
    keys = rng.random(P.nnz)
    order = np.lexsort((keys, cols))  # by column, then by key within the column
    cols_sorted = cols[order]
    rank = np.arange(P.nnz, dtype=np.int64) - P.indptr[cols_sorted]
    chosen = np.sort(order[rank < k_per_gene[cols_sorted]])
    rows = P.indices[chosen].astype(np.int64)
    return rows, cols[chosen], nnz_per_gene


def _zero_entries(X, M: sparse.csr_matrix, rows: np.ndarray, cols: np.ndarray):
    """Return a copy of ``X`` with the entries of mask ``M`` set to 0 (same format and dtype; no explicit zeros)."""
    if sparse.issparse(X):
        out = X - X.multiply(M)  # exact: x - x == 0 for finite x, x - 0 == x
        out = out.asformat(X.format).astype(X.dtype, copy=False)
        out.eliminate_zeros()
        return out
    out = np.array(X, copy=True)
    out[rows, cols] = 0
    return out


def _check_keys(key_added: object, counts_layer: object, random_state: object) -> None:
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"key_added must be a non-empty str, got {key_added!r}.")
    if not isinstance(counts_layer, str):
        raise TypeError(f"counts_layer must be a layer name (str), got {type(counts_layer).__name__}.")
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral)):
        raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}.")


def mask_dropouts(
    adata: AnnData,
    *,
    rate: float = 0.1,
    layer: str | None = NORMALIZED,
    counts_layer: str = COUNTS,
    random_state: int | None = 0,
    key_added: str = MASKED,
    copy: bool = False,
) -> AnnData | None:
    """Hide a fraction of the observed non-zeros, to score how well an imputation recovers them.

    For every gene with more than 3 non-zero counts, ``floor(rate · nnz)`` of its non-zero entries
    (``nnz`` = its number of non-zero counts) are drawn uniformly at random and set to 0, both in
    the expression layer and in the counts, so a model never sees the hidden values through its
    counts layer. Genes with 3 or fewer non-zeros are left alone. Normalization is not recomputed
    (the seed's protocol: the small change in library size is the same for every method).

    The entries are drawn from the non-zeros of ``counts_layer``. The expression layer normally has
    the same sparsity pattern (any normalization of counts that maps 0 to 0). If it does not, a
    warning says so; masked entries where the layer is already 0 stay 0 (and count as masked), and
    non-zeros of the layer where the counts are 0 are never masked.

    The draw is vectorized (a random key per non-zero, ranked within each gene), deterministic given
    ``random_state``, and the same for sparse and dense input.

    Typical use::

        sv.pp.mask_dropouts(adata, layer="total")
        sv.tl.impute(adata, method="scvgae", layer="masked", counts_layer="masked_counts")
        sv.tl.score_imputation(adata, "scvgae", truth_layer="total")

    Parameters
    ----------
    adata
        Annotated data matrix.
    rate
        Fraction of each gene's non-zeros to hide, in (0, 1).
    layer
        Expression layer to mask (``None``: ``X``).
    counts_layer
        Layer with the raw counts; its non-zeros are the candidates.
    random_state
        Seed of the draw (``None``: not reproducible).
    key_added
        Name of the layers written (see below).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`. Sets the following fields:

    ``adata.layers[key_added]``
        ``layer`` with the hidden entries set to 0 (same dtype; sparse CSR/CSC kept, explicit zeros
        removed).
    ``adata.layers[f"{key_added}_counts"]``
        ``counts_layer`` with the same entries set to 0.
    ``adata.layers[f"{key_added}_mask"]``
        Boolean :class:`~scipy.sparse.csr_matrix`, `True` at the hidden entries.
    ``adata.uns['scvgae_sc']['mask_dropouts'][key_added]``
        ``rate``, ``layer``, ``counts_layer``, ``random_state``, ``min_nonzero``, ``n_masked`` (number
        of hidden entries) and ``n_genes_masked``.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.normalize(adata, method="total", key_added="total")
    >>> sv.pp.mask_dropouts(adata, layer="total")
    >>> adata.layers["masked_mask"].sum()  # number of hidden entries
    """
    # --- validate everything before touching adata ---
    check_adata(adata, inplace=not copy)
    rate = _check_rate(rate)
    _check_keys(key_added, counts_layer, random_state)
    out_keys = (key_added, mask_counts_key(key_added), mask_key(key_added))
    for name, what in ((layer, "layer"), (counts_layer, "counts_layer")):
        if name in out_keys:
            raise ValueError(
                f"{what}={name!r} would be overwritten by the output layers {list(out_keys)}; choose another key_added."
            )
    X = get_layer(adata, layer)
    C = get_layer(adata, counts_layer, what="counts layer")
    layer_name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    counts_name = f"adata.layers[{counts_layer!r}]"
    _check_matrix(X, layer_name)
    _check_matrix(C, counts_name)
    if X.shape != C.shape:
        raise ValueError(f"{layer_name} has shape {X.shape} but {counts_name} has shape {C.shape}; they must match.")
    check_finite(X, layer_name)
    check_nonnegative(C, counts_name)

    P = _nonzero_pattern(C)
    rng = seed_everything(random_state)
    rows, cols, nnz_per_gene = _draw(P, rate, rng)
    if rows.size == 0:
        max_nnz = int(nnz_per_gene.max()) if nnz_per_gene.size else 0
        need = max(MIN_NONZERO + 1, int(np.ceil((1 - _FLOOR_EPS) / rate)))
        raise ValueError(
            f"Nothing to mask with rate={rate}: a gene needs more than {MIN_NONZERO} non-zero counts and "
            f"floor(rate · nnz) ≥ 1, i.e. at least {need} non-zeros, but the most any gene has in {counts_name} "
            f"is {max_nnz}. The data is too sparse or too small: use more cells, filter genes "
            "(`scvgae_sc.pp.filter`), or raise rate."
        )

    # --- compute everything, then write ---
    if copy:
        adata = adata.copy()
        X = get_layer(adata, layer)
        C = get_layer(adata, counts_layer)
    start = logg.info(f"masking {rate:.0%} of the non-zeros of genes with > {MIN_NONZERO} non-zeros")
    M = sparse.csr_matrix((np.ones(rows.size, dtype=bool), (rows, cols)), shape=C.shape, dtype=bool)
    M.sort_indices()
    X_masked = _zero_entries(X, M, rows, cols)
    C_masked = _zero_entries(C, M, rows, cols)

    # sparsity-pattern agreement between the layer and the counts (cheap: O(nnz))
    nnz_layer = X.count_nonzero() if sparse.issparse(X) else int(np.count_nonzero(X))
    hit = X.multiply(M) if sparse.issparse(X) else np.asarray(X)[rows, cols]
    n_zero_hit = rows.size - (hit.count_nonzero() if sparse.issparse(hit) else int(np.count_nonzero(hit)))
    if nnz_layer != P.nnz or n_zero_hit:
        logg.warning(
            f"{layer_name} ({nnz_layer} non-zeros) and {counts_name} ({P.nnz} non-zeros) have different sparsity "
            f"patterns; entries were drawn from the counts' non-zeros ({n_zero_hit} of the {rows.size} masked "
            "entries are already 0 in the layer). Is the layer a normalization of these counts?"
        )

    n_genes_masked = int(np.count_nonzero(n_to_mask(nnz_per_gene, rate)))
    adata.layers[key_added] = X_masked
    adata.layers[mask_counts_key(key_added)] = C_masked
    adata.layers[mask_key(key_added)] = M
    uns_entry(adata, "mask_dropouts")[key_added] = params_for_uns(
        {
            "rate": rate,
            "layer": layer,
            "counts_layer": counts_layer,
            "random_state": None if random_state is None else int(random_state),
            "min_nonzero": MIN_NONZERO,
            "n_masked": int(rows.size),
            "n_genes_masked": n_genes_masked,
        }
    )
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"hid {rows.size} entries in {n_genes_masked} genes and added\n"
            f"    {key_added!r}, {mask_counts_key(key_added)!r}, {mask_key(key_added)!r} (adata.layers)"
        ),
    )
    return adata if copy else None
