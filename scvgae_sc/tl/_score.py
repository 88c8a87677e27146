from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import CELL_TYPE, MASKED, NORMALIZED, mask_key
from .._utils import check_adata, check_finite, get_layer, keep_torch_threads, rows_vary, to_dense_array

if TYPE_CHECKING:
    from collections.abc import Callable

_PROTOCOLS = ("paper", "leiden")
#: Seed the seed notebooks use for every clusterer of the paper protocol.
PAPER_SEED = 42
#: Spectral-clustering affinities of the paper protocol (kernels of :func:`sklearn.metrics.pairwise_kernels`).
PAPER_AFFINITIES = ("cosine", "linear", "poly")
#: The paper protocol builds dense n_cells × n_cells affinities; refused above this many cells.
PAPER_MAX_CELLS = 20_000
#: Leiden resolution search interval and number of bisection steps.
LEIDEN_RESOLUTION_RANGE = (0.01, 5.0)
LEIDEN_MAX_STEPS = 30
_MASK_LAYER = mask_key(MASKED)


# --------------------------------------------------------------------------------------------------
# score_imputation
# --------------------------------------------------------------------------------------------------


def _mask_coordinates(M, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the ``True`` entries of a (sparse or dense) boolean mask."""
    if sparse.issparse(M):
        coo = sparse.coo_matrix(M)
        values, rows, cols = np.asarray(coo.data), coo.row, coo.col
    elif isinstance(M, np.ndarray):
        values = M
        rows = cols = None
    else:
        raise TypeError(f"{name} is a {type(M).__name__}; a boolean NumPy array or SciPy sparse matrix is needed.")
    if values.dtype != bool:
        if not np.issubdtype(values.dtype, np.number) or not np.isin(values, (0, 1)).all():
            raise ValueError(
                f"{name} is not a boolean mask (dtype {values.dtype}, values other than 0/1). Pass the "
                f"{_MASK_LAYER!r} layer written by `scvgae_sc.pp.mask_dropouts` (mask_layer=...)."
            )
    if rows is None:
        rows, cols = np.nonzero(values)
    else:
        keep = values != 0
        rows, cols = rows[keep], cols[keep]
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def _values_at(X, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``X[rows[i], cols[i]]`` for all i as float64, without densifying a sparse ``X``."""
    if sparse.issparse(X):
        X = X if X.format in ("csr", "csc") else sparse.csr_matrix(X)
        return np.asarray(X[rows, cols], dtype=np.float64).ravel()
    return np.asarray(X, dtype=np.float64)[rows, cols]


def score_imputation(
    adata: AnnData,
    layer: str | None,
    *,
    truth_layer: str = NORMALIZED,
    mask_layer: str = _MASK_LAYER,
) -> dict[str, float | int]:
    """Score an imputation on the entries hidden by :func:`scvgae_sc.pp.mask_dropouts`.

    All masked entries are pooled (flattened, as the GNNImpute evaluation does) and the imputed
    values are compared with the true ones. Only the masked entries are read (through the mask's
    coordinates), so no matrix is densified. Both layers must be on the same scale; benchmarks use
    a linear layer (``normalize(method="total")``).

    Parameters
    ----------
    adata
        Annotated data matrix.
    layer
        Layer holding the imputed values (``None``: ``X``), e.g. the ``key_added`` of
        :func:`scvgae_sc.tl.impute`.
    truth_layer
        Layer holding the true values (the layer that was masked).
    mask_layer
        Boolean layer, `True` at the hidden entries.

    Returns
    -------
    A dict with keys

    ``"mse"``, ``"mae"``
        Mean squared / absolute error over the masked entries.
    ``"pearson"``
        Pearson correlation of imputed and true values (`nan`, with a warning, if either is constant).
    ``"cosine"``
        Cosine similarity of the imputed and true value vectors (`nan` if either is all 0).
    ``"n"``
        Number of masked entries (an int).

    Examples
    --------
    >>> sv.pp.mask_dropouts(adata, layer="total")
    >>> sv.tl.impute(adata, method="scvgae", layer="masked", counts_layer="masked_counts")
    >>> sv.tl.score_imputation(adata, "scvgae", truth_layer="total")
    {'mse': ..., 'mae': ..., 'pearson': ..., 'cosine': ..., 'n': ...}
    """
    check_adata(adata)
    Y = get_layer(adata, layer, what="layer")
    T = get_layer(adata, truth_layer, what="truth layer")
    M = get_layer(adata, mask_layer, what="mask layer")
    names = {
        "layer": "adata.X" if layer is None else f"adata.layers[{layer!r}]",
        "truth": f"adata.layers[{truth_layer!r}]",
        "mask": f"adata.layers[{mask_layer!r}]",
    }
    for what, X in (("layer", Y), ("truth", T)):
        if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
            raise TypeError(f"{names[what]} is a {type(X).__name__}; a NumPy array or SciPy sparse matrix is needed.")
        if not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"{names[what]} has dtype {X.dtype}; a numeric matrix is needed.")
    for what, X in (("truth", T), ("mask", M)):
        if X.shape != Y.shape:
            raise ValueError(f"{names['layer']} has shape {Y.shape} but {names[what]} has shape {X.shape}.")
    rows, cols = _mask_coordinates(M, names["mask"])
    n = int(rows.size)
    if n == 0:
        raise ValueError(
            f"{names['mask']} masks no entry; nothing to score. Run `scvgae_sc.pp.mask_dropouts` and pass its "
            "mask layer."
        )
    y = _values_at(Y, rows, cols)
    t = _values_at(T, rows, cols)
    for what, v in (("layer", y), ("truth", t)):
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(
                f"{names[what]} has {int(bad.sum())} NaN or infinite values at the {n} masked entries; "
                "the imputation must produce finite values there."
            )

    diff = y - t
    mse = float(np.mean(diff**2))
    mae = float(np.mean(np.abs(diff)))
    yc, tc = y - y.mean(), t - t.mean()
    denom = float(np.sqrt(np.dot(yc, yc) * np.dot(tc, tc)))
    if denom > 0:
        pearson = float(np.clip(np.dot(yc, tc) / denom, -1.0, 1.0))
    else:
        pearson = float("nan")
        logg.warning("imputed or true values are constant on the masked entries; Pearson correlation is undefined.")
    norm = float(np.linalg.norm(y) * np.linalg.norm(t))
    cosine = float(np.clip(np.dot(y, t) / norm, -1.0, 1.0)) if norm > 0 else float("nan")
    return {"mse": mse, "mae": mae, "pearson": pearson, "cosine": cosine, "n": n}


# --------------------------------------------------------------------------------------------------
# score_clustering
# --------------------------------------------------------------------------------------------------


def _scores(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    return {
        "ari": float(adjusted_rand_score(labels, pred)),
        "ami": float(adjusted_mutual_info_score(labels, pred)),
        "nmi": float(normalized_mutual_info_score(labels, pred)),
    }


def _paper_clusterers(X: np.ndarray, k: int) -> dict[str, Callable[[], np.ndarray]]:
    """KMeans and spectral clustering (cosine / linear / poly), as in the seed notebooks.

    The affinity matrices are those :class:`~sklearn.cluster.SpectralClustering` builds itself from a
    kernel name (its defaults ``gamma=1``, ``degree=3``, ``coef0=1`` for ``poly``), clipped at 0 (a
    no-op for non-negative data; keeps the graph a graph when an imputation returns negatives).
    """
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.metrics.pairwise import pairwise_kernels

    def kmeans() -> np.ndarray:
        return KMeans(n_clusters=k, n_init=10, random_state=PAPER_SEED).fit_predict(X)

    def spectral(affinity: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            A = pairwise_kernels(X, metric=affinity, filter_params=True, gamma=1.0, degree=3, coef0=1)
            np.maximum(A, 0, out=A)
            if not np.isfinite(A).all():
                raise ValueError(f"the {affinity} affinity matrix has non-finite values")
            return SpectralClustering(n_clusters=k, affinity="precomputed", random_state=PAPER_SEED).fit_predict(A)

        return run

    return {"kmeans": kmeans, **{f"spectral_{a}": spectral(a) for a in PAPER_AFFINITIES}}


def _paper(X, labels: np.ndarray, k: int) -> dict[str, float | int]:
    Xd = to_dense_array(X, dtype=np.float64)
    best = {"ari": 0.0, "ami": 0.0, "nmi": 0.0}
    for name, run in _paper_clusterers(Xd, k).items():
        try:
            scores = _scores(labels, run())
        except Exception as e:  # noqa: BLE001 - the protocol scores a failed clusterer 0
            logg.warning(f"{name} failed ({type(e).__name__}: {e}); it scores 0.")
            continue
        if any(np.isnan(v) for v in scores.values()):
            logg.warning(f"{name} gave NaN scores; it scores 0.")
            scores = {m: (0.0 if np.isnan(v) else v) for m, v in scores.items()}
        logg.debug(f"    {name}: " + ", ".join(f"{m.upper()} {v:.4f}" for m, v in scores.items()))
        best = {m: max(best[m], scores[m]) for m in best}
    return {**best, "n_clusters": int(k)}


def _leiden(X, labels: np.ndarray, k: int, random_state: int | None) -> dict[str, float | int]:
    import scanpy as sc

    n_obs, n_vars = X.shape
    dtype = np.float64 if X.dtype == np.float64 else np.float32
    scratch = AnnData(X.astype(dtype, copy=True))  # never touch the caller's matrix
    n_comps = min(50, n_obs - 1, n_vars - 1)
    n_neighbors = min(15, n_obs - 1)
    quiet = min(int(sc.settings.verbosity), int(sc.Verbosity.warning))
    with sc.settings.verbosity.override(quiet), keep_torch_threads():  # numba's OpenMP start resets torch's
        sc.pp.pca(scratch, n_comps=n_comps, random_state=random_state)
        sc.pp.neighbors(scratch, n_neighbors=n_neighbors, use_rep="X_pca", random_state=random_state)

    def n_clusters_at(resolution: float) -> tuple[int, np.ndarray]:
        with sc.settings.verbosity.override(quiet):
            sc.tl.leiden(
                scratch,
                resolution=resolution,
                flavor="igraph",
                n_iterations=2,
                directed=False,
                random_state=random_state,
                key_added="_leiden",
            )
        pred = scratch.obs["_leiden"].cat.codes.to_numpy()
        return int(pred.max()) + 1, pred

    # bisect in log space: the cluster count grows (roughly monotonically) with the resolution
    lo, hi = LEIDEN_RESOLUTION_RANGE
    resolution = 1.0
    best: tuple[int, float, int, np.ndarray] | None = None  # (|n - k|, resolution, n, pred)
    for _ in range(LEIDEN_MAX_STEPS):
        n, pred = n_clusters_at(resolution)
        if best is None or abs(n - k) < best[0]:
            best = (abs(n - k), resolution, n, pred)
        if n == k:
            break
        if n < k:
            lo = resolution
        else:
            hi = resolution
        resolution = float(np.sqrt(lo * hi))
        if hi / lo < 1 + 1e-6:
            break
    _, resolution, n, pred = best
    if n != k:
        logg.warning(
            f"Leiden found no resolution giving {k} clusters; using the closest: {n} at resolution {resolution:.4g}."
        )
    return {**_scores(labels, pred), "n_clusters": int(n), "resolution": float(resolution)}


def score_clustering(
    adata: AnnData,
    layer: str | None,
    *,
    labels_key: str = CELL_TYPE,
    protocol: Literal["paper", "leiden"] = "paper",
    random_state: int | None = 0,
    key_added: str | None = None,
) -> dict[str, float | int]:
    """Score how well clustering a layer recovers known cell-type labels (ARI, AMI, NMI).

    ``k``, the number of clusters asked for, is the number of distinct labels present.

    ``protocol="paper"``
        The scVGAE paper's protocol (the seed notebooks'): KMeans(k, ``n_init=10``) and spectral
        clustering(k) with cosine, linear and poly affinities, all with ``random_state=42``; for each
        metric the maximum over the four. A clusterer that fails (an exception or NaN scores) scores
        0, with a warning. Runs on the dense matrix and builds dense n_cells × n_cells affinities:
        O(n_cells²) memory and time by nature, so it is refused above 20,000 cells.
    ``protocol="leiden"``
        What a Scanpy user sees: on a scratch copy of the layer, PCA (50 components) → neighbors
        (15) → Leiden (igraph flavor, 2 iterations), with the resolution bisected (in log space,
        between 0.01 and 5) until the number of clusters equals k; if no resolution gives exactly
        k, the closest is used and a warning says so. Scales to large data (no dense matrix).

    Parameters
    ----------
    adata
        Annotated data matrix.
    layer
        Layer to cluster (``None``: ``X``).
    labels_key
        Column of ``adata.obs`` holding the true labels.
    protocol
        ``"paper"`` or ``"leiden"``.
    random_state
        Seed of PCA, neighbors and Leiden in the ``"leiden"`` protocol. The ``"paper"`` protocol
        always uses 42, as published.
    key_added
        If given, the returned dict is also stored in ``adata.uns[key_added]``.

    Returns
    -------
    A dict with keys ``"ari"``, ``"ami"``, ``"nmi"`` (floats) and ``"n_clusters"`` (int: k for
    ``"paper"``, the number Leiden found for ``"leiden"``), plus ``"resolution"`` (the Leiden
    resolution used) for ``"leiden"``. If ``key_added`` is given, sets ``adata.uns[key_added]`` to it.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.normalize(adata)
    >>> sv.tl.score_clustering(adata, "normalized")
    {'ari': ..., 'ami': ..., 'nmi': ..., 'n_clusters': 10}
    """
    check_adata(adata, inplace=key_added is not None)
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}.")
    if key_added is not None and (not isinstance(key_added, str) or not key_added):
        raise TypeError(f"key_added must be a non-empty str or None, got {key_added!r}.")
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral)):
        raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}.")
    if not isinstance(labels_key, str) or labels_key not in adata.obs:
        have = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise ValueError(f"adata.obs has no column {labels_key!r} (columns present: {have}). Pass labels_key=...")
    raw_labels = adata.obs[labels_key]
    n_missing = int(raw_labels.isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs[{labels_key!r}] has {n_missing} missing labels (NaN); drop those cells or label them first."
        )
    labels, uniques = pd.factorize(raw_labels)
    k = len(uniques)
    if k < 2:
        raise ValueError(
            f"adata.obs[{labels_key!r}] has {k} distinct label(s); at least 2 are needed to score a clustering."
        )
    if adata.n_obs <= k:
        raise ValueError(
            f"adata has {adata.n_obs} cells for {k} distinct labels in adata.obs[{labels_key!r}]; "
            "clustering needs more cells than clusters."
        )
    if protocol == "paper" and adata.n_obs > PAPER_MAX_CELLS:
        gib = 4 * adata.n_obs**2 * 8 / 2**30
        raise ValueError(
            f"protocol='paper' builds dense {adata.n_obs} × {adata.n_obs} affinity matrices (about {gib:.0f} GiB "
            f"at peak), refused above {PAPER_MAX_CELLS} cells. Use protocol='leiden', or score a subsample."
        )
    X = get_layer(adata, layer)
    name = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        raise TypeError(f"{name} is a {type(X).__name__}; a NumPy array or SciPy sparse matrix is needed.")
    check_finite(X, name)
    if protocol == "leiden" and X.shape[1] < 2:
        raise ValueError(f"{name} has {X.shape[1]} gene(s); protocol='leiden' needs at least 2 for PCA.")
    if protocol == "leiden" and not rows_vary(X):
        raise ValueError(f"Every cell of {name} has the same values; protocol='leiden' (PCA) needs them to differ.")

    start = logg.info(f"scoring clustering of {name} against {labels_key!r} ({protocol!r} protocol, k={k})")
    if protocol == "paper":
        result = _paper(X, labels, k)
    else:
        result = _leiden(X, labels, k, random_state)
    if key_added is not None:
        adata.uns[key_added] = dict(result)
    logg.info(
        "    finished",
        time=start,
        deep=", ".join(f"{m.upper()} {result[m]:.4f}" for m in ("ari", "ami", "nmi"))
        + (f"\n    added {key_added!r} (adata.uns)" if key_added is not None else ""),
    )
    return result
