from __future__ import annotations

from typing import Literal

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import CELL_GRAPH, NORMALIZED, connectivities_key, distances_key
from .._utils import check_adata, check_finite, get_layer, params_for_uns, rows_vary, seed_everything

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


def _knn_graph(
    X: np.ndarray, n_neighbors: int, *, self_loops: bool, symmetric: bool, random_state: int | None
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    n = X.shape[0]
    idx, dist = knn_search(X, n_neighbors, random_state=random_state)
    # adaptive Gaussian weights: sigma_i = distance to the farthest of i's neighbours
    sigma = np.maximum(dist[:, -1], np.finfo(np.float32).eps)
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
) -> tuple[sparse.csr_matrix, sparse.csr_matrix | None]:
    """The graph of :func:`cell_graph` from a matrix (no AnnData): ``(connectivities, distances or None)``.

    Arguments are validated by :func:`cell_graph`.
    """
    n = X.shape[0]
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
    """
    check_adata(adata, inplace=not copy)
    if method not in ("knn", "kernel"):
        raise ValueError(f"method must be 'knn' or 'kernel', got {method!r}.")
    if normalize not in (None, "row"):
        raise ValueError(f"normalize must be None or 'row', got {normalize!r}.")
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
