from __future__ import annotations

import hashlib

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import COUNTS, UNS_KEY
from .._utils import check_adata, counts_source, params_for_uns, uns_entry

#: Default key of a molecule split.
SPLIT = "mcv"


def _canonical_csr(X, dtype) -> sparse.csr_matrix:
    """``X`` as CSR with sorted indices, summed duplicates and no explicit zeros (dense and sparse alike)."""
    M = sparse.csr_matrix(X, dtype=dtype, copy=True)
    M.sum_duplicates()
    M.eliminate_zeros()
    M.sort_indices()
    return M


def matrix_digest(X, dtype=np.int64) -> str:
    """A SHA-1 of a matrix's shape and values that is the same for its dense and sparse forms."""
    M = _canonical_csr(X, dtype)
    h = hashlib.sha1()
    h.update(np.asarray(M.shape, dtype=np.int64).tobytes())
    h.update(np.asarray(M.indptr, dtype=np.int64).tobytes())
    h.update(np.asarray(M.indices, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(M.data).tobytes())
    return h.hexdigest()


def _graph_digests(adata: AnnData) -> dict[str, str]:
    """Digests of every cell × cell matrix in ``obsp`` (the graphs that exist before the split)."""
    out = {}
    for k in adata.obsp:
        A = adata.obsp[k]
        if A.shape == (adata.n_obs, adata.n_obs):
            out[str(k)] = matrix_digest(A, np.float32)
    return out


def _binomial_split(counts, fraction: float, rng: np.random.Generator):
    """Train / test halves of ``counts``: Binomial(counts, fraction) and the rest, as integers.

    A binomial draw with ``n = 0`` consumes no random numbers, so drawing over the non-zeros of a sparse matrix in
    row-major order (CSR with sorted indices) gives exactly the draw over the dense matrix.
    """
    if sparse.issparse(counts):
        C = _canonical_csr(counts, np.float64)
        values = C.data.astype(np.int64)
        dtype = np.int32 if (values.size == 0 or values.max() < np.iinfo(np.int32).max) else np.int64
        drawn = rng.binomial(values, fraction)
        train = sparse.csr_matrix((drawn.astype(dtype), C.indices.copy(), C.indptr.copy()), shape=C.shape)
        test = sparse.csr_matrix(((values - drawn).astype(dtype), C.indices.copy(), C.indptr.copy()), shape=C.shape)
        train.eliminate_zeros()
        test.eliminate_zeros()
        return train, test
    values = np.asarray(counts).astype(np.int64)
    dtype = np.int32 if (values.size == 0 or values.max() < np.iinfo(np.int32).max) else np.int64
    drawn = rng.binomial(values, fraction)
    return drawn.astype(dtype), (values - drawn).astype(dtype)


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def split_counts(
    adata: AnnData,
    *,
    fraction: float = 0.5,
    counts_layer: str = COUNTS,
    random_state: int | None = 0,
    key_added: str = SPLIT,
    copy: bool = False,
) -> AnnData | None:
    r"""Split every count into two disjoint halves for molecular cross-validation.

    Each count :math:`C_{ij}` is split into a train half :math:`X^{(1)}_{ij} \sim \mathrm{Binomial}(C_{ij},
    \text{fraction})` and a test half :math:`X^{(2)}_{ij} = C_{ij} - X^{(1)}_{ij}`: two samples of the same cells
    with independent sampling noise (Batson, Royer & Webber 2019). A method is given only the train half (as its
    counts layer, and layers normalized from it) and its output is scored against the test half with
    :func:`scvgae_sc.tl.score_denoising`. Nothing can score well by copying its input, so smoothing pays only
    where it removes more noise than signal.

    The draw is ``numpy.random.default_rng(random_state).binomial(C, fraction)`` over the dense matrix ``C``.
    Sparse counts are drawn over their non-zeros only, in row-major order; as a binomial draw with zero trials
    consumes no random numbers, the result is the same as for the dense matrix with the same ``random_state``.

    Parameters
    ----------
    adata
        Annotated data matrix; ``X`` holds raw counts unless ``counts_layer`` already exists. Filter cells and genes
        (:func:`scvgae_sc.pp.filter`) first.
    fraction
        Share of the molecules that goes to the train half, in (0, 1). ``0.5`` for molecular cross-validation;
        ``0.9`` reproduces the OpenProblems denoising task's split.
    counts_layer
        Layer holding (or to receive, copied from ``X``) the raw counts.
    random_state
        Seed of the draw; ``None`` draws a different split each call.
    key_added
        Prefix of the layers and the ``obs`` column written, and the key of the record.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`. Sets the following fields:

    ``adata.layers[f'{key_added}_train']``
        The train half: integer counts, sparse if the counts are sparse.
    ``adata.layers[f'{key_added}_test']``
        The test half, ``counts - train``: integer counts, disjoint from the train half.
    ``adata.obs[f'{key_added}_scored']``
        ``False`` for cells with an empty half: they stay in the data but are not scored.
    ``adata.layers[counts_layer]``
        Raw counts, copied from ``X`` if the layer did not exist.
    ``adata.uns['scvgae_sc']['split_counts'][key_added]``
        ``fraction``, ``counts_layer``, ``random_state``, the layer and column names, ``n_scored``, ``shape``, and
        digests of
        the train half and of the cell graphs present at the time of the split (graphs that have seen the test
        half are refused by :func:`scvgae_sc.tl.score_denoising`).

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.filter(adata)
    >>> sv.pp.split_counts(adata)  # layers 'mcv_train', 'mcv_test'
    >>> sv.pp.normalize(adata, method="log1p", counts_layer="mcv_train", key_added="train_log1p")
    >>> sv.tl.score_denoising(adata, "train_log1p")  # no imputation
    """
    check_adata(adata, inplace=not copy)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.integer | np.floating):
        raise TypeError(f"fraction must be a number in (0, 1), got {type(fraction).__name__}.")
    if not 0 < float(fraction) < 1:
        raise ValueError(f"fraction must lie strictly between 0 and 1 (the train half's share), got {fraction!r}.")
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int | np.integer)):
        raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"key_added must be a non-empty str, got {key_added!r}.")
    if not isinstance(counts_layer, str):
        raise TypeError(f"counts_layer must be a layer name (str), got {type(counts_layer).__name__}.")
    train_key, test_key, scored_key = f"{key_added}_train", f"{key_added}_test", f"{key_added}_scored"
    if counts_layer in (train_key, test_key):
        raise ValueError(
            f"counts_layer {counts_layer!r} is a half of the split {key_added!r}; split the full counts, or choose "
            "another key_added."
        )

    counts, copy_counts = counts_source(adata, counts_layer)

    start = logg.info(f"splitting counts into molecule halves (fraction={fraction:g})")
    rng = np.random.default_rng(random_state)
    train, test = _binomial_split(counts, float(fraction), rng)
    scored = (_row_sums(train) > 0) & (_row_sums(test) > 0)
    n_unscored = int((~scored).sum())
    if n_unscored:
        logg.warning(
            f"{n_unscored} cells have an empty half; they are kept but not scored (obs[{scored_key!r}] is False)."
        )
    graphs = _graph_digests(adata)
    digest = matrix_digest(train)

    if copy:
        adata = adata.copy()
    if copy_counts:
        adata.layers[counts_layer] = counts.copy()
    adata.layers[train_key] = train
    adata.layers[test_key] = test
    adata.obs[scored_key] = scored
    record = {
        "fraction": float(fraction),
        "counts_layer": counts_layer,
        "random_state": None if random_state is None else int(random_state),
        "train_layer": train_key,
        "test_layer": test_key,
        "scored_key": scored_key,
        "n_scored": int(scored.sum()),
        "shape": [int(adata.n_obs), int(adata.n_vars)],
        "train_digest": digest,
        "graphs_before": graphs,
    }
    uns_entry(adata, "split_counts")[key_added] = params_for_uns(record)  # random_state=None is left out
    logg.info(
        "    finished",
        time=start,
        deep=f"added {train_key!r}, {test_key!r}"
        + (f", {counts_layer!r}" if copy_counts else "")
        + f" (adata.layers), {scored_key!r} (adata.obs), {UNS_KEY!r}['split_counts'][{key_added!r}] (adata.uns)",
    )
    return adata if copy else None
