from __future__ import annotations

from typing import Literal

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import CELL_GRAPH, NORMALIZED, connectivities_key, distances_key
from .._utils import (
    batch_labels,
    check_adata,
    check_finite,
    get_layer,
    keep_torch_threads,
    params_for_uns,
    rows_vary,
    seed_everything,
)

#: Below this many cells neighbours are exact (brute force, as Scanpy does); above, pynndescent.
EXACT_KNN_MAX_CELLS = 4096
#: Default memory limit of the kernel graph, in bytes.
KERNEL_MAX_MEMORY = 4e9
_KERNEL_BLOCK = 1024


def knn_search(X: np.ndarray, n_neighbors: int, *, random_state: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of each row's ``n_neighbors`` nearest rows, the row itself first.

    Exact below :data:`EXACT_KNN_MAX_CELLS` rows, approximate (pynndescent) above.
    """
    n = X.shape[0]
    if n <= EXACT_KNN_MAX_CELLS:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(X)
        dist, idx = nn.kneighbors(X)
    else:
        from pynndescent import NNDescent

        with keep_torch_threads():  # numba's OpenMP start would reset torch's thread count
            index = NNDescent(
                X,
                n_neighbors=n_neighbors,
                metric="euclidean",
                random_state=random_state,
                n_jobs=None,
                low_memory=True,
            )
            idx, dist = index.neighbor_graph
    # make sure every row starts with itself (duplicated cells can swap places with it)
    rows = np.arange(n)
    has_self = idx == rows[:, None]
    no_self = ~has_self.any(axis=1)
    if no_self.any():
        idx[no_self, -1] = rows[no_self]
        dist[no_self, -1] = 0.0
        has_self = idx == rows[:, None]
    order = np.argsort(~has_self, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    dist[:, 0] = 0.0
    return idx.astype(np.int64), dist.astype(np.float32)


def knn_query(
    index: np.ndarray, queries: np.ndarray, n_neighbors: int, *, random_state: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``index``) and Euclidean distances of each query row's ``n_neighbors`` nearest ``index`` rows.

    Exact below :data:`EXACT_KNN_MAX_CELLS` index rows, approximate (pynndescent) above.
    """
    if index.shape[0] <= EXACT_KNN_MAX_CELLS:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(index)
        dist, idx = nn.kneighbors(queries)
    else:
        from pynndescent import NNDescent

        with keep_torch_threads():
            nnd = NNDescent(
                index,
                n_neighbors=max(n_neighbors, 15),
                metric="euclidean",
                random_state=random_state,
                n_jobs=None,
                low_memory=True,
            )
            idx, dist = nnd.query(queries, k=n_neighbors)
    return idx.astype(np.int64), dist.astype(np.float32)


def batch_codes(batch, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, names)`` of per-cell batch labels: ``names[codes[i]]`` is cell ``i``'s batch.

    Names are in order of first appearance. Refuses a wrong length and missing labels (NaN / None).
    """
    import pandas as pd

    labels = np.asarray(batch, dtype=object)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"batch labels must be one per cell: expected {n}, got shape {labels.shape}.")
    codes, names = pd.factorize(labels)
    missing = np.flatnonzero(codes < 0)
    if missing.size:
        raise ValueError(
            f"{missing.size} cell(s) have no batch label (NaN or None; first: cell {int(missing[0])}). Every cell "
            "needs a batch: fill the missing labels or drop those cells."
        )
    return codes.astype(np.int64), np.asarray(names, dtype=object)


def balanced_per_batch(n_neighbors: int, n_batches: int) -> int:
    """Neighbours per batch with ``batch_mode="balanced"``: ``max(1, (n_neighbors - 1) // n_batches)``."""
    return max(1, (int(n_neighbors) - 1) // int(n_batches))


def check_batches(codes: np.ndarray, names: np.ndarray, n_neighbors: int, batch_mode: str) -> None:
    """Refuse batches too small for the neighbour search of ``batch_mode`` (naming the batch and its size)."""
    sizes = np.bincount(codes, minlength=len(names))
    if batch_mode == "within":
        need, why = int(n_neighbors) + 1, f"n_neighbors={n_neighbors} neighbours are searched within each batch"
    else:
        k = balanced_per_batch(n_neighbors, len(names))
        need, why = k + 1, f"batch_mode='balanced' takes {k} neighbours from every batch, its own included"
    small = np.flatnonzero(sizes < need)
    if small.size:
        listed = ", ".join(f"{names[b]!r} ({sizes[b]} cells)" for b in small[:5])
        more = f" and {small.size - 5} more" if small.size > 5 else ""
        raise ValueError(
            f"Batch {listed}{more} {'is' if small.size == 1 else 'are'} too small: {why}, so every batch needs at "
            f"least {need} cells. Lower n_neighbors, merge or drop small batches"
            + (", or use batch_mode='balanced'." if batch_mode == "within" else ".")
        )


def _batch_neighbors(
    X: np.ndarray, n_neighbors: int, codes: np.ndarray, n_batches: int, mode: str, *, random_state: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices and distances, the cell itself first, searched per batch (see :func:`cell_graph`)."""
    n = X.shape[0]
    rows = np.arange(n)
    if mode == "within":
        idx = np.empty((n, n_neighbors), dtype=np.int64)
        dist = np.empty((n, n_neighbors), dtype=np.float32)
        for b in range(n_batches):
            cells = np.flatnonzero(codes == b)
            i, d = knn_search(X[cells], n_neighbors, random_state=random_state)
            idx[cells], dist[cells] = cells[i], d
        return idx, dist
    k = balanced_per_batch(n_neighbors, n_batches)
    idx = np.empty((n, 1 + n_batches * k), dtype=np.int64)
    dist = np.empty(idx.shape, dtype=np.float32)
    idx[:, 0], dist[:, 0] = rows, 0.0
    for b in range(n_batches):
        cols = slice(1 + b * k, 1 + (b + 1) * k)
        cells = np.flatnonzero(codes == b)
        i, d = knn_search(X[cells], k + 1, random_state=random_state)  # own batch: itself first, then k others
        idx[cells, cols], dist[cells, cols] = cells[i[:, 1:]], d[:, 1:]
        others = np.flatnonzero(codes != b)
        if others.size:
            i, d = knn_query(X[cells], X[others], k, random_state=random_state)
            idx[others, cols], dist[others, cols] = cells[i], d
    order = np.argsort(dist[:, 1:], axis=1, kind="stable") + 1  # nearest first, the cell itself stays first
    idx[:, 1:] = np.take_along_axis(idx, order, axis=1)
    dist[:, 1:] = np.take_along_axis(dist, order, axis=1)
    return idx, dist


def _knn_graph(
    X: np.ndarray,
    n_neighbors: int,
    *,
    self_loops: bool,
    symmetric: bool,
    random_state: int | None,
    batch: tuple[np.ndarray, int, str] | None = None,
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    n = X.shape[0]
    if batch is None:
        idx, dist = knn_search(X, n_neighbors, random_state=random_state)
    else:
        codes, n_batches, mode = batch
        idx, dist = _batch_neighbors(X, n_neighbors, codes, n_batches, mode, random_state=random_state)
    # adaptive Gaussian weights: sigma_i = distance to the farthest of i's neighbours
    sigma = np.maximum(dist.max(axis=1), np.finfo(np.float32).eps)
    w = np.exp(-(dist**2) / (sigma[:, None] * sigma[idx]))
    if not self_loops:
        idx, dist, w = idx[:, 1:], dist[:, 1:], w[:, 1:]
    rows = np.repeat(np.arange(n), idx.shape[1])
    shape = (n, n)
    conn = sparse.csr_matrix((w.ravel().astype(np.float32), (rows, idx.ravel())), shape=shape)
    dists = sparse.csr_matrix((dist.ravel(), (rows, idx.ravel())), shape=shape)
    if symmetric:
        conn = conn.maximum(conn.T).tocsr()
        dists = dists.maximum(dists.T).tocsr()
    return conn, dists


def _kernel_graph(
    X, percentile: float, *, self_loops: bool, max_memory: float, block: int = _KERNEL_BLOCK
) -> sparse.csr_matrix:
    """The scVGAE paper's graph: linear kernel S = X Xᵀ, top (100 - percentile) % of all entries, weights S."""
    n = X.shape[0]
    keep_frac = 1 - percentile / 100
    # all n² kernel values (float32) to find the exact global percentile, plus the kept edges (CSR: 4 + 4 bytes)
    need = n * n * 4 + keep_frac * n * n * 8 + block * n * 8
    if need > max_memory:
        raise ValueError(
            f"The kernel graph of {n} cells needs about {need / 1e9:.1f} GB (it keeps {keep_frac:.0%} of all "
            f"{n}² cell pairs; O(n²) by nature), above max_memory={max_memory / 1e9:.1f} GB. "
            "Use method='knn' (scales linearly), or raise max_memory if you have the memory."
        )
    Xs = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)

    def block_of(start: int) -> np.ndarray:
        S = Xs[start : start + block] @ Xs.T
        return np.asarray(S.toarray() if sparse.issparse(S) else S, dtype=np.float32)

    values = np.empty(n * n, dtype=np.float32)
    for start in range(0, n, block):
        S = block_of(start)
        values[start * n : start * n + S.size] = S.ravel()
    threshold = np.percentile(values, percentile)
    del values
    pieces = []
    for start in range(0, n, block):
        S = block_of(start)
        S[S <= threshold] = 0
        if not self_loops:
            r = np.arange(S.shape[0])
            S[r, start + r] = 0
        pieces.append(sparse.csr_matrix(S))
    A = sparse.vstack(pieces, format="csr")
    A.eliminate_zeros()
    return A


def _kernel_batch_message(method: str) -> str:
    return (
        f"batch_key needs method='knn' (scVGAE's option graph='knn'): the {method!r} graph keeps a global "
        "percentile of the linear kernel and has no per-batch form. Use a knn graph, or drop batch_key."
    )


def compute_graph(
    X,
    *,
    method: Literal["knn", "kernel"] = "knn",
    n_neighbors: int = 15,
    n_pcs: int | None = 50,
    percentile: float = 85,
    self_loops: bool = False,
    normalize: Literal["row"] | None = None,
    random_state: int | None = 0,
    max_memory: float = KERNEL_MAX_MEMORY,
    batch=None,
    batch_mode: Literal["within", "balanced"] = "within",
) -> tuple[sparse.csr_matrix, sparse.csr_matrix | None]:
    """The graph of :func:`cell_graph` from a matrix (no AnnData): ``(connectivities, distances or None)``.

    Arguments are validated by :func:`cell_graph`, except ``batch`` (one label per cell, or ``None``) and
    ``batch_mode``, checked here: the method runners of :func:`~scvgae_sc.tl.impute` call this directly.
    """
    n = X.shape[0]
    batch_info = None
    if batch is not None:
        if batch_mode not in ("within", "balanced"):
            raise ValueError(f"batch_mode must be 'within' or 'balanced', got {batch_mode!r}.")
        if method != "knn":
            raise ValueError(_kernel_batch_message(method))
        codes, names = batch_codes(batch, n)
        check_batches(codes, names, n_neighbors, batch_mode)
        if len(names) > 1:  # one batch: the same graph as without batches
            batch_info = (codes, len(names), batch_mode)
    seed_everything(random_state)
    if method == "knn":
        n_comps = min(int(n_pcs or 0), n - 1, X.shape[1] - 1)
        if n_pcs and n_comps >= 1 and rows_vary(X):  # PCA (ARPACK) fails on a matrix of identical rows
            import scanpy as sc

            Xf = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
            rep = sc.pp.pca(Xf, n_comps=n_comps, random_state=random_state)
        else:
            rep = np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float32)
        conn, dists = _knn_graph(
            np.ascontiguousarray(rep, dtype=np.float32),
            int(n_neighbors),
            self_loops=self_loops,
            symmetric=normalize != "row",
            random_state=random_state,
            batch=batch_info,
        )
    else:
        conn = _kernel_graph(X, percentile, self_loops=self_loops, max_memory=max_memory)
        dists = None
        if conn.nnz == 0:
            raise ValueError("The kernel graph has no edges: every kernel entry is at or below the percentile.")
    if normalize == "row":
        deg = np.asarray(conn.sum(axis=1)).ravel()
        inv = np.zeros_like(deg)
        np.divide(1.0, deg, out=inv, where=deg > 0)
        conn = sparse.diags(inv.astype(np.float32)) @ conn
    conn = sparse.csr_matrix(conn, dtype=np.float32)
    conn.sort_indices()
    return conn, dists


def cell_graph(
    adata: AnnData,
    *,
    method: Literal["knn", "kernel"] = "knn",
    layer: str | None = NORMALIZED,
    n_neighbors: int = 15,
    n_pcs: int | None = 50,
    percentile: float = 85,
    self_loops: bool = False,
    normalize: Literal["row"] | None = None,
    random_state: int | None = 0,
    key_added: str = CELL_GRAPH,
    max_memory: float = KERNEL_MAX_MEMORY,
    copy: bool = False,
    batch_key: str | None = None,
    batch_mode: Literal["within", "balanced"] = "within",
) -> AnnData | None:
    r"""Build the cell–cell graph a graph neural network propagates over.

    Follows :func:`scanpy.pp.neighbors` in where results go. Two kinds of graph:

    ``"knn"`` (default, scales linearly)
        PCA of ``layer`` (``n_pcs`` components), then each cell's ``n_neighbors`` nearest cells in
        Euclidean distance, **counting the cell itself** (as Scanpy and scikit-learn's
        ``include_self=True`` do). Exact below 4,096 cells, pynndescent above. Edge weights are an
        adaptive Gaussian kernel :math:`\exp(-d_{ij}^2 / (\sigma_i \sigma_j))` with :math:`\sigma_i`
        the distance to the farthest of :math:`i`'s neighbours. The graph is symmetrized (union)
        unless ``normalize="row"``, which keeps each cell's own neighbours and scales its row to sum
        to 1 (GNNImpute's graph: ``n_neighbors=5, self_loops=True, normalize="row"`` gives 5 entries
        per row, the cell itself one of them).
    ``"kernel"`` (the scVGAE paper's, O(n²))
        Linear kernel :math:`S = XX^T` of ``layer``; keeps entries above the ``percentile``-th
        percentile of all :math:`n^2` entries, weighted by :math:`S`. Computed in row blocks and
        refused, with the memory it would need, above ``max_memory``.

    The stored matrix is the adjacency; GCN / GAT layers apply their own normalization.

    **Batches** (``batch_key``, ``"knn"`` only). The PCA stays global (all cells); the neighbour search
    follows ``batch_mode``:

    ``"within"``
        Each cell's ``n_neighbors`` nearest cells (itself included) are searched among the cells of its own
        batch only, so the graph has no edge between batches and message passing never crosses them. Every
        batch needs at least ``n_neighbors + 1`` cells.
    ``"balanced"`` (BBKNN-style)
        Each cell gets ``k = max(1, (n_neighbors - 1) // n_batches)`` nearest cells **from every batch** (in
        its own batch, ``k`` cells other than itself), plus itself: ``1 + k * n_batches`` entries per row, at
        most ``n_neighbors`` when ``n_batches < n_neighbors`` (15 neighbours and 2 batches: 7 from each
        batch + itself). Every batch needs at least ``k + 1`` cells.

    Weights and symmetrization are as without batches (:math:`\sigma_i` is the distance to the farthest of the
    cell's neighbours, whichever batch it is in). With a single batch the graph is exactly the one built
    without ``batch_key``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    method
        ``"knn"`` or ``"kernel"``.
    layer
        Layer to build the graph from (``None``: ``X``). Default: the normalized layer of
        :func:`scvgae_sc.pp.normalize`.
    n_neighbors
        Neighbours per cell, the cell itself included (``"knn"``).
    n_pcs
        Principal components to search neighbours in (``"knn"``); ``None`` or ``0`` uses ``layer``
        directly.
    percentile
        Percentile of kernel entries below which edges are dropped (``"kernel"``; the paper's 85 keeps
        the top 15 %).
    self_loops
        Keep each cell's edge to itself.
    normalize
        ``None`` (weighted adjacency) or ``"row"`` (rows sum to 1; directed for ``"knn"``).
    random_state
        Seed of the PCA and of the approximate neighbour search.
    key_added
        Prefix of the ``obsp`` keys and the ``uns`` key.
    max_memory
        Bytes the ``"kernel"`` graph may use before it is refused.
    copy
        Return a copy instead of writing into ``adata``.
    batch_key
        Column of ``adata.obs`` with each cell's batch (``None``: no batches). Every cell needs a label.
    batch_mode
        ``"within"`` (neighbours only from the cell's own batch) or ``"balanced"`` (neighbours from every
        batch); see above.

    Returns
    -------
    Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`. Sets the following fields:

    ``adata.obsp[f'{key_added}_connectivities']``
        Weighted adjacency (CSR, float32).
    ``adata.obsp[f'{key_added}_distances']``
        Euclidean distances in PCA space to the neighbours (``"knn"`` only).
    ``adata.uns[key_added]``
        ``connectivities_key``, ``distances_key`` (``"knn"``) and ``params``.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.normalize(adata)
    >>> sv.pp.cell_graph(adata)  # 15-NN graph
    >>> sv.pp.cell_graph(adata, n_neighbors=5, self_loops=True, normalize="row", key_added="gnnimpute_graph")
    >>> sv.pp.cell_graph(adata, batch_key="phase", key_added="phase_graph")  # no edges between batches
    """
    check_adata(adata, inplace=not copy)
    if method not in ("knn", "kernel"):
        raise ValueError(f"method must be 'knn' or 'kernel', got {method!r}.")
    if normalize not in (None, "row"):
        raise ValueError(f"normalize must be None or 'row', got {normalize!r}.")
    if batch_mode not in ("within", "balanced"):
        raise ValueError(f"batch_mode must be 'within' or 'balanced', got {batch_mode!r}.")
    if batch_key is not None and method != "knn":
        raise ValueError(_kernel_batch_message(method))
    batch = batch_labels(adata, batch_key)
    X = get_layer(adata, layer)
    check_finite(X, f"layer {layer!r}" if layer else "adata.X")
    n = adata.n_obs
    if method == "knn":
        if not isinstance(n_neighbors, int | np.integer) or isinstance(n_neighbors, bool) or n_neighbors < 2:
            raise ValueError(f"n_neighbors must be an integer >= 2 (it counts the cell itself), got {n_neighbors!r}.")
        if n < n_neighbors + 1:
            raise ValueError(
                f"{n} cells are too few for n_neighbors={n_neighbors}: at least n_neighbors + 1 = {n_neighbors + 1} "
                "cells are needed. Lower n_neighbors."
            )
    elif not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}.")

    if copy:
        adata = adata.copy()
    start = logg.info(f"computing cell graph ({method!r})")
    conn, dists = compute_graph(
        X,
        method=method,
        n_neighbors=n_neighbors,
        n_pcs=n_pcs,
        percentile=percentile,
        self_loops=self_loops,
        normalize=normalize,
        random_state=random_state,
        max_memory=max_memory,
        batch=batch,
        batch_mode=batch_mode,
    )

    ckey, dkey = connectivities_key(key_added), distances_key(key_added)
    adata.obsp[ckey] = conn
    entry = {"connectivities_key": ckey}
    if dists is not None:
        adata.obsp[dkey] = dists
        entry["distances_key"] = dkey
    entry["params"] = params_for_uns(
        {
            "method": method,
            "layer": layer,
            "n_neighbors": int(n_neighbors) if method == "knn" else None,
            "n_pcs": int(n_pcs) if (method == "knn" and n_pcs) else None,
            "percentile": float(percentile) if method == "kernel" else None,
            "self_loops": bool(self_loops),
            "normalize": normalize,
            "random_state": random_state,
            "batch_key": batch_key,
            "batch_mode": batch_mode if batch_key is not None else None,
        }
    )
    adata.uns[key_added] = entry
    logg.info(
        f"    finished: {conn.nnz} edges ({conn.nnz / n:.1f} per cell)",
        time=start,
        deep=f"added {ckey!r}"
        + (f", {dkey!r}" if dists is not None else "")
        + f" (adata.obsp), {key_added!r} (adata.uns)",
    )
    return adata if copy else None
