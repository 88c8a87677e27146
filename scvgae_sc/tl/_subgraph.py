"""Mini-batch training over cell subgraphs with historical embeddings (AnnData-free).

Full-batch graph training holds every cell's activations at once, and a full-graph encoder run per batch of
cells costs ``O(n_cells² / batch_size)`` per epoch. Here each optimizer step touches a random batch of cells
and only their neighbourhood, so an epoch costs ``O(n_cells)`` and memory is bounded by the batch:

* the first GCN layer is linear before its normalization, ``Â (X W) + b = (Â X) W + b``: the batch's rows of
  ``Â X`` are computed exactly from sparse rows of ``Â`` (:meth:`SubgraphSampler.propagate`);
* the second propagation (the ZINB heads' ``Â Z``) needs ``Z`` of neighbours outside the batch: their latest
  value is read from a history buffer (historical embeddings, as GNNAutoScale, Fey et al. 2021), refreshed
  whenever a cell is in a batch, and only the batch's own rows carry gradients.

PyG's ``NeighborLoader`` and ``ClusterData`` need ``pyg-lib`` / ``torch-sparse`` (no wheels for every torch
build), and kNN cell graphs are expanders: a batch's two-hop neighbourhood soon covers most cells (30,000
simulated cells, 15 neighbours, 512-cell batches: 12 to 59 × the batch), and graph partitions make batches of
one cell type, which GraphNorm then centres away. Random batches with an exact first layer and a history
for the second keep each cell computed once per epoch and the normalization statistics those of a random
sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    import torch


def gcn_adjacency(A: sparse.spmatrix) -> sparse.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` as a CSR matrix whose row ``i`` lists what cell ``i`` aggregates.

    The same normalization as PyG's ``gcn_norm`` with ``add_remaining_self_loops`` (existing self loops
    keep their weight, missing ones get 1) and the degree of each cell summed over the edges it receives.
    """
    A = sparse.csr_matrix(A, dtype=np.float32)
    diag = A.diagonal()
    A = A + sparse.diags(np.where(diag == 0, 1.0, 0.0).astype(np.float32))
    deg = np.asarray(A.sum(axis=1), dtype=np.float64).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0).astype(np.float32)
    out = sparse.diags(inv) @ A @ sparse.diags(inv)
    out = sparse.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out


class SubgraphSampler:
    """Random batches of cells and their neighbourhoods in a normalized adjacency ``P`` (rows aggregate).

    Parameters
    ----------
    P
        ``(n, n)`` CSR matrix, e.g. from :func:`gcn_adjacency`.
    """

    def __init__(self, P: sparse.csr_matrix) -> None:
        self.P = sparse.csr_matrix(P, dtype=np.float32)
        self.n = self.P.shape[0]
        self._position = np.full(self.n, -1, dtype=np.int64)

    def propagate(self, rows: np.ndarray, X) -> np.ndarray:
        """``(P X)[rows]`` as a dense float32 array (``X`` dense or sparse, ``(n, d)``)."""
        out = self.P[rows] @ X
        return np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float32)

    def neighbourhood(self, rows: np.ndarray, device) -> tuple[np.ndarray, torch.Tensor]:
        """The cells ``rows`` aggregate from, batch first, and ``P[rows]`` on them as a sparse torch tensor.

        Returns ``(nodes, P_local)``: ``nodes[:len(rows)] == rows``, then the other neighbours (the halo);
        ``P_local`` is ``(len(rows), len(nodes))`` (COO, on ``device``) with ``P_local @ Z[nodes] == (P Z)[rows]``.
        """
        import torch

        sub = self.P[rows]
        pos = self._position
        pos[rows] = np.arange(len(rows))
        cols = np.unique(sub.indices)
        halo = cols[pos[cols] < 0]
        pos[halo] = len(rows) + np.arange(len(halo))
        local_cols = pos[sub.indices]
        nodes = np.concatenate([rows, halo])
        pos[nodes] = -1
        coo_rows = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
        index = torch.from_numpy(np.vstack([coo_rows, local_cols]).astype(np.int64))
        P_local = torch.sparse_coo_tensor(
            index, torch.from_numpy(sub.data), size=(len(rows), len(nodes)), check_invariants=False
        ).to(device)
        return nodes, P_local


def write_history(history: torch.Tensor, values: torch.Tensor, step: tuple[torch.Tensor, ...], rows) -> None:
    """Refresh a history buffer's rows of a batch with the batch's ``values`` (detached, float32).

    ``step`` holds every rank's cells of the optimizer step (:func:`~scvgae_sc.tl._common.epoch_steps`), ``rows``
    this rank's, on the history's device. With several ranks the values of all ranks are gathered into every rank's
    history, which thus stays the same on every rank.
    """
    import torch

    from ..nn._distributed import all_gather_rows

    with torch.no_grad():
        if len(step) > 1:
            gathered = all_gather_rows(values.detach().float(), [len(b) for b in step])
            for rows_b, values_b in zip(step, gathered, strict=True):
                history[rows_b.to(history.device)] = values_b
        else:
            history[rows] = values.detach().float()
