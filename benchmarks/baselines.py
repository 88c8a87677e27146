r"""Model-free rivals of the imputation methods, used by ``benchmarks/bench.py``.

Never a dependency of the package. Everything here is sparse-friendly: the cell graph is a sparse k-NN graph
(``pp.cell_graph``), never an ``n_cells × n_cells`` dense matrix; the outputs are dense cells × genes.

Masked task (DESIGN section 1, the seeds' protocol)

``knn_fill``
    Observed values kept; each zero filled with the mean of the gene's non-zero values among the cell's 15-NN
    neighbourhood, optionally gated by the neighbourhood's detection rate (scVGAE's ``fill_gate``) and taken
    over a 2-step walk (``fill_hops``).

Denoising task (DESIGN section 3, molecular cross-validation; ``DENOISING_RIVALS``)

``knn_lin_1`` … ``knn_lin_3``, ``knn_log_1`` … ``knn_log_3``
    Every entry replaced by the mean over the cell's neighbourhood in the 15-NN graph (the cell included; the
    graph is ``pp.cell_graph(layer=<log1p of the train half>, n_neighbors=15)``, 50 PCs, as the models build
    theirs), applied 1, 2 or 3 times (a 1-, 2- or 3-step random walk), on the linear ``total`` layer of the train
    half or on its ``log1p`` layer. The output stays on the scale of the layer averaged.
``knn_explog_1`` … ``knn_explog_3``
    The linear neighbourhood mean of ``knn_lin_*`` taken through the mapping of ``tl.impute(output="denoised")``:
    each mean :math:`\mu` becomes ``expm1`` of :math:`E[\log(1 + Y)]`, :math:`Y \sim \mathrm{Poisson}(\mu)` — the
    networks' denoised output with the network replaced by the graph average (their ablation).
``knn_post_2``
    scVGAE's denoised output with the network replaced by the graph: the 2-step neighbourhood mean of the linear
    layer is the prior mean, a negative-binomial dispersion per gene is fitted to the train counts by maximum
    likelihood (``tl._output.NB_THETA_GRID``), and each entry is the posterior mean given the cell's own count
    (``tl._output.nb_posterior``) taken through the ``output="denoised"`` mapping — the ablation
    of ``posterior=True``.
``pca_log``
    Low-rank reconstruction of the ``log1p`` layer (PCA: genes centred, randomized SVD), rank chosen on an inner
    split of the train half: the train counts are split again, ``Binomial(train, 0.5)``; one inner half is
    normalized to ``log1p`` and reconstructed at each candidate rank (``PCA_RANKS``), and the rank whose
    reconstruction best predicts the other inner half under the MCV loss is used on the whole train half. This
    is what a user can do without the test half.

``register`` records a rival's output in ``adata.uns`` the way ``tl.impute`` records its own (input layer,
counts layer, graph), so that ``tl.score_denoising`` maps it back to linear expression through its input
layer's normalization and checks that it saw only the train half.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

#: Candidate ranks of ``pca_log`` (capped at ``min(n_cells, n_genes) - 1``).
PCA_RANKS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100)
#: Denoising rivals: name -> (kind, layer normalization, steps). ``kind`` "knn" (neighbourhood mean) or "pca".
DENOISING_RIVALS = {
    "knn_lin_1": ("knn", "total", 1),
    "knn_lin_2": ("knn", "total", 2),
    "knn_lin_3": ("knn", "total", 3),
    "knn_log_1": ("knn", "log1p", 1),
    "knn_log_2": ("knn", "log1p", 2),
    "knn_log_3": ("knn", "log1p", 3),
    "pca_log": ("pca", "log1p", None),
    "knn_explog_1": ("knn_explog", "total", 1),
    "knn_explog_2": ("knn_explog", "total", 2),
    "knn_explog_3": ("knn_explog", "total", 3),
    "knn_post_2": ("knn_post", "total", 2),
}
#: Candidate per-gene dispersions of ``knn_post_2`` (log-spaced; the maximum-likelihood one is kept).
#: Entries per dense block when scoring (bounds the memory of the loss computation).
_BLOCK_ENTRIES = 1 << 22


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


# --------------------------------------------------------------------------------------------------
# the cell graph and its averaging operator
# --------------------------------------------------------------------------------------------------


def neighbourhood_operator(adata, n_neighbors: int, layer: str, key: str | None = None) -> sparse.csr_matrix:
    """Row-stochastic averaging over each cell's k-NN graph neighbourhood, the cell itself included.

    Builds the graph with ``pp.cell_graph(layer=layer, n_neighbors=n_neighbors)`` into ``obsp[f"{key}_..."]``
    (``key`` default ``f"smooth{n_neighbors}"``); the operator is sparse (``n_neighbors`` entries or so per row).
    """
    import scvgae_sc as sv

    key = key or f"smooth{n_neighbors}"
    sv.pp.cell_graph(adata, layer=layer, n_neighbors=n_neighbors, key_added=key)
    C = (adata.obsp[f"{key}_connectivities"] > 0).astype(np.float32) + sparse.eye(adata.n_obs, dtype=np.float32)
    return sparse.csr_matrix(sparse.diags(1.0 / np.asarray(C.sum(axis=1)).ravel()) @ C)


def log1p_layer(adata, layer: str) -> str:
    """Write ``log1p`` of a sparse linear layer to ``layers[f"{layer}_log1p"]`` and return that key.

    The models build their graph on ``log1p`` of a linear layer (``transform="log1p"``); the baselines do too.
    """
    key = f"{layer}_log1p"
    adata.layers[key] = adata.layers[layer].copy()
    adata.layers[key].data = np.log1p(adata.layers[key].data)
    return key


# --------------------------------------------------------------------------------------------------
# masked task: the k-NN fill
# --------------------------------------------------------------------------------------------------


def neighbourhood_fills(X: np.ndarray, C: sparse.csr_matrix, gate: float, hops: int = 1) -> dict[str, np.ndarray]:
    """``smooth`` (every entry ← neighbourhood mean), ``fill`` (observed kept, zeros ← mean of the neighbourhood's
    non-zeros) and ``gated`` (the fill times ``min(1, detection rate / gate)``) of dense ``X`` under the averaging
    operator ``C`` applied ``hops`` times (the neighbourhood a ``hops``-step walk reaches)."""
    observed = X > 0
    rate, smooth = observed.astype(np.float32), X
    for _ in range(hops):
        rate, smooth = C @ rate, C @ smooth
    fill = smooth / np.maximum(rate, 1e-6)
    return {
        "smooth": smooth,
        "fill": np.where(observed, X, fill),
        "gated": np.where(observed, X, fill * np.minimum(1.0, rate / gate)) if gate > 0 else None,
    }


def knn_fill(
    adata, layer: str, *, n_neighbors: int = 15, gate: float = 0.0, hops: int = 1, graph_layer: str | None = None
):
    """The model-free baseline of the masked task (``bench.py`` methods ``knn_fill`` / ``knn_fill_gated``).

    Observed values of ``layer`` kept; each zero filled with the mean of the non-zero values of that gene among
    the cell's ``n_neighbors``-NN neighbourhood (``pp.cell_graph`` on ``graph_layer``, default ``layer``; the cell
    included), times ``min(1, detection rate / gate)`` when ``gate > 0`` (scVGAE's ``fill_gate``). ``hops > 1``:
    mean and rate over the cells a ``hops``-step random walk on that graph reaches (scVGAE's ``fill_hops``).
    """
    X = _dense(adata.layers[layer])
    fills = neighbourhood_fills(X, neighbourhood_operator(adata, n_neighbors, graph_layer or layer), gate, hops)
    return (fills["gated"] if gate > 0 else fills["fill"]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# denoising task: neighbourhood mean and low-rank reconstruction
# --------------------------------------------------------------------------------------------------


def knn_mean(adata, layer: str, *, steps: int = 1, graph_layer: str, n_neighbors: int = 15, key: str = "knn15"):
    """Every entry of ``layer`` replaced by its mean over a ``steps``-step random walk on the ``n_neighbors``-NN
    graph of ``graph_layer`` (the cell included in its neighbourhood). Sparse products; dense float32 output on
    the scale of ``layer``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    C = neighbourhood_operator(adata, n_neighbors, graph_layer, key=key)
    X = adata.layers[layer]
    X = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    for _ in range(steps):
        X = C @ X
    return _dense(X).astype(np.float32)


def _log1p_normalize(counts) -> tuple[np.ndarray, float]:
    """``log1p`` of counts with rows scaled to the median positive library (``pp.normalize(method="log1p")``):
    dense float32 matrix and the target."""
    X = sparse.csr_matrix(counts, dtype=np.float64) if sparse.issparse(counts) else np.asarray(counts, np.float64)
    lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    target = float(np.median(lib[lib > 0]))
    f = np.divide(target, lib, out=np.zeros_like(lib), where=lib > 0)
    Y = sparse.diags(f) @ X if sparse.issparse(X) else X * f[:, None]
    return np.log1p(_dense(Y)).astype(np.float32), target


class LowRank:
    """Truncated PCA of a dense matrix (genes centred; randomized SVD): reconstructions at every rank up to
    ``max_rank`` from one decomposition."""

    def __init__(self, L: np.ndarray, max_rank: int, seed: int = 0):
        from sklearn.utils.extmath import randomized_svd

        L = np.asarray(L, dtype=np.float32)
        self.max_rank = int(min(max_rank, min(L.shape) - 1))
        self.mean = L.mean(axis=0)
        U, d, Vt = randomized_svd(L - self.mean, n_components=self.max_rank, random_state=seed)
        self.US, self.Vt = (U * d).astype(np.float32), Vt.astype(np.float32)

    def reconstructions(self, ranks):
        """Yield ``(rank, reconstruction)`` for the sorted ``ranks`` (up to ``max_rank``), built incrementally."""
        R = np.broadcast_to(self.mean, (self.US.shape[0], self.mean.size)).copy()
        done = 0
        for k in sorted(r for r in set(ranks) if 1 <= r <= self.max_rank):
            R += self.US[:, done:k] @ self.Vt[done:k]
            done = k
            yield k, R

    def reconstruct(self, rank: int) -> np.ndarray:
        return (self.mean + self.US[:, :rank] @ self.Vt[:rank]).astype(np.float32)


def mcv_loss_log1p(R: np.ndarray, target: float, train_counts, test_counts) -> float:
    """The MCV loss (DESIGN section 3) of a prediction ``R`` on the ``log1p`` scale at row target ``target``, made
    from ``train_counts`` and scored against ``test_counts``: ``t`` = median train library over the cells with
    molecules in both halves, ``P = expm1(R) · t / target`` (negatives → 0), mean of
    ``(log1p(P) − log1p(test / rowsum(test) · t))²`` over all entries of those cells — what
    ``tl.score_denoising`` computes for a ``log1p`` layer."""
    lib1 = np.asarray(train_counts.sum(axis=1), dtype=np.float64).ravel()
    lib2 = np.asarray(test_counts.sum(axis=1), dtype=np.float64).ravel()
    cells = np.flatnonzero((lib1 > 0) & (lib2 > 0))
    t = float(np.median(lib1[cells]))
    Y = sparse.csr_matrix(test_counts) if sparse.issparse(test_counts) else np.asarray(test_counts)
    step = max(1, _BLOCK_ENTRIES // max(R.shape[1], 1))
    total = 0.0
    for a in range(0, cells.size, step):
        rows = cells[a : a + step]
        P = np.maximum(np.expm1(R[rows].astype(np.float64)) * (t / target), 0.0)
        T = np.log1p(_dense(Y[rows]).astype(np.float64) * (t / lib2[rows])[:, None])
        total += float(np.square(np.log1p(P) - T).sum())
    return total / (cells.size * R.shape[1])


def pca_curve(L: np.ndarray, target: float, train_counts, test_counts, ranks=PCA_RANKS, seed: int = 0):
    """MCV loss of the rank-``k`` PCA reconstruction of ``L`` (``log1p`` of ``train_counts`` at row target
    ``target``) against ``test_counts``, for each ``k`` in ``ranks``: ``({rank: loss}, LowRank)``."""
    low = LowRank(L, max(ranks), seed=seed)
    curve = {k: mcv_loss_log1p(R, target, train_counts, test_counts) for k, R in low.reconstructions(ranks)}
    return curve, low


def choose_pca_rank(train_counts, *, ranks=PCA_RANKS, fraction: float = 0.5, seed: int = 0) -> tuple[int, dict]:
    """The rank of ``pca_log`` chosen on an inner split of the train half only: ``A ~ Binomial(train, fraction)``
    (``numpy.random.default_rng(seed)``), ``B = train − A``; the rank whose reconstruction of ``log1p(A)`` best
    predicts ``B`` under the MCV loss. Returns the rank and ``{rank: inner loss}``."""
    C = sparse.csr_matrix(train_counts if sparse.issparse(train_counts) else np.asarray(train_counts), dtype=np.int64)
    A = C.copy()
    A.data = np.random.default_rng(seed).binomial(C.data, fraction)
    B = C - A
    A.eliminate_zeros()
    B.eliminate_zeros()
    L, target = _log1p_normalize(A)
    curve, _ = pca_curve(L, target, A, B, ranks=ranks, seed=seed)
    return min(curve, key=curve.get), curve


def pca_denoise(adata, layer: str, *, counts_layer: str, ranks=PCA_RANKS, seed: int = 0) -> tuple[np.ndarray, dict]:
    """``pca_log``: rank chosen on an inner split of ``counts_layer`` (:func:`choose_pca_rank`), then the PCA
    reconstruction of ``layer`` (``log1p`` of those counts) at that rank, on the ``log1p`` scale. Returns the
    reconstruction (float32, may hold small negatives, which the scorer maps to 0) and
    ``{"rank", "inner_curve", "lowrank"}``."""
    rank, inner = choose_pca_rank(adata.layers[counts_layer], ranks=ranks, seed=seed)
    low = LowRank(_dense(adata.layers[layer]), max(ranks), seed=seed)
    return low.reconstruct(rank), {"rank": rank, "inner_curve": inner, "lowrank": low}


def register(adata, key: str, *, method: str, layer: str, counts_layer: str, graph_key: str | None = None) -> None:
    """Record the output ``adata.layers[key]`` of a rival as ``tl.impute`` records an imputation (its input
    ``layer``, ``counts_layer`` and graph), so ``tl.score_denoising`` maps it through ``layer``'s normalization
    and refuses it unless all of these come from the split's train half."""
    params = {"method": method, "layer": layer, "counts_layer": counts_layer}
    if graph_key is not None:
        params["graph_key"] = graph_key
    adata.uns[key] = {"params": params}


def knn_posterior(M: np.ndarray, counts) -> None:
    """In place: the prior means ``M`` (expected counts at the median library) → the posterior means given each
    cell's ``counts`` (``tl._output.nb_posterior``, the per-gene dispersion of ``tl._output.nb_dispersion``: what
    GNNImpute's ``posterior`` does with its decoder's output)."""
    import torch

    from scvgae_sc._utils import median_positive
    from scvgae_sc.tl._output import Evidence, nb_dispersion, nb_posterior_rows

    Y = sparse.csr_matrix(counts, dtype=np.float32)
    lib = np.asarray(Y.sum(axis=1), dtype=np.float64).ravel()
    sf = (lib / median_positive(lib)).astype(np.float32)
    evidence = Evidence(Y, sf)
    prior = torch.from_numpy(np.ascontiguousarray(M, dtype=np.float32))
    M[...] = nb_posterior_rows(prior, nb_dispersion(prior, evidence), evidence).numpy()


def run_rival(adata, name: str, *, layers: dict, counts_layer: str, seed: int = 0) -> dict:
    """Run denoising rival ``name`` on the job's layers (``layers["total"]``, ``layers["log1p"]``: keys of the
    train half's normalizations); writes ``adata.layers[name]`` (registered) and returns details for the record."""
    kind, norm, steps = DENOISING_RIVALS[name]
    if kind in ("knn", "knn_explog", "knn_post"):
        graph_key = "knn15"
        adata.layers[name] = knn_mean(adata, layers[norm], steps=steps, graph_layer=layers["log1p"], key=graph_key)
        if kind == "knn_post":
            knn_posterior(adata.layers[name], adata.layers[counts_layer])
        if kind in ("knn_explog", "knn_post"):  # the mean taken through tl.impute's output="denoised" mapping
            from scvgae_sc.tl._output import finish_denoised

            finish_denoised(adata.layers[name], {"kind": "total", "source": "counts"})
        register(adata, name, method=name, layer=layers[norm], counts_layer=counts_layer, graph_key=graph_key)
        return {"steps": steps, "input": norm}
    Y, info = pca_denoise(adata, layers["log1p"], counts_layer=counts_layer, seed=seed)
    adata.layers[name] = Y
    register(adata, name, method=name, layer=layers["log1p"], counts_layer=counts_layer)
    return {"input": norm, **info}
