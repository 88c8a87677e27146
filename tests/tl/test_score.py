from __future__ import annotations

import importlib
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import scvgae_sc as sv

score_module = importlib.import_module("scvgae_sc.tl._score")


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _snapshot(adata: ad.AnnData) -> dict:
    return {
        "shape": adata.shape,
        "X": _dense(adata.X).copy(),
        "layers": {k: (type(v), _dense(v).copy()) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(),
        "uns": repr(dict(adata.uns)),
        "obsm": list(adata.obsm),
        "obsp": list(adata.obsp),
    }


def _assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    after = _snapshot(adata)
    assert after["shape"] == before["shape"]
    np.testing.assert_array_equal(after["X"], before["X"])
    assert after["layers"].keys() == before["layers"].keys()
    for k, (t, v) in before["layers"].items():
        assert after["layers"][k][0] is t
        np.testing.assert_array_equal(after["layers"][k][1], v)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    assert after["uns"] == before["uns"]
    assert after["obsm"] == before["obsm"]
    assert after["obsp"] == before["obsp"]


# ---------------------------------------------------------------------------------------------------
# score_imputation
# ---------------------------------------------------------------------------------------------------

TRUTH = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
IMPUTED = np.array([[1.5, 2.0, 1.0], [2.0, 0.5, 4.0]])
MASK = np.array([[True, False, False], [True, True, False]])


def _tiny(*, sparse_layers: bool, sparse_mask: bool = True) -> ad.AnnData:
    wrap = sparse.csr_matrix if sparse_layers else np.array
    adata = ad.AnnData(np.zeros((2, 3), dtype=np.float32))
    adata.layers["normalized"] = wrap(TRUTH)
    adata.layers["imputed"] = wrap(IMPUTED)
    adata.layers["masked_mask"] = sparse.csr_matrix(MASK) if sparse_mask else MASK.copy()
    return adata


@pytest.mark.parametrize(("sparse_layers", "sparse_mask"), [(True, True), (False, True), (False, False), (True, False)])
def test_score_imputation_exact(sparse_layers, sparse_mask):
    adata = _tiny(sparse_layers=sparse_layers, sparse_mask=sparse_mask)
    before = _snapshot(adata)
    out = sv.tl.score_imputation(adata, "imputed")
    _assert_unchanged(adata, before)
    assert set(out) == {"mse", "mae", "pearson", "cosine", "n"}
    # masked entries: imputed [1.5, 2, 0.5] vs true [1, 3, 0]
    assert out["n"] == 3 and type(out["n"]) is int
    for key in ("mse", "mae", "pearson", "cosine"):
        assert type(out[key]) is float
    assert out["mse"] == pytest.approx(0.5)
    assert out["mae"] == pytest.approx(2 / 3)
    assert out["pearson"] == pytest.approx(13 / 14)
    assert out["pearson"] == pytest.approx(stats.pearsonr([1.5, 2, 0.5], [1, 3, 0])[0])
    assert out["cosine"] == pytest.approx(7.5 / np.sqrt(65))


def test_score_imputation_other_names_and_perfect():
    adata = _tiny(sparse_layers=True)
    adata.layers["truth"] = adata.layers.pop("normalized")
    adata.layers["m"] = adata.layers.pop("masked_mask").astype(np.int8)  # 0/1 numeric masks are accepted
    out = sv.tl.score_imputation(adata, "truth", truth_layer="truth", mask_layer="m")
    assert out["mse"] == 0.0 and out["mae"] == 0.0
    assert out["pearson"] == pytest.approx(1.0) and out["cosine"] == pytest.approx(1.0)


def test_score_imputation_nan_outside_mask_is_fine():
    adata = _tiny(sparse_layers=False)
    adata.layers["imputed"][0, 2] = np.nan  # not masked
    assert sv.tl.score_imputation(adata, "imputed")["n"] == 3


def test_score_imputation_after_mask_dropouts(toy_counts):
    adata = toy_counts.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.layers["normalized"] = sparse.csr_matrix(np.log1p(adata.X.toarray()).astype(np.float32))
    sv.pp.mask_dropouts(adata)
    out = sv.tl.score_imputation(adata, "masked")  # "imputing" zeros everywhere
    n = adata.layers["masked_mask"].nnz
    truth = adata.layers["normalized"].toarray()[adata.layers["masked_mask"].toarray()]
    assert out["n"] == n
    assert out["mse"] == pytest.approx(float(np.mean(truth.astype(np.float64) ** 2)))
    assert np.isnan(out["cosine"])  # all-zero prediction


@pytest.mark.parametrize(
    ("kwargs", "change", "error", "match"),
    [
        ({"layer": "nope"}, None, ValueError, "no layer 'nope'"),
        ({"layer": "imputed", "truth_layer": "nope"}, None, ValueError, "no truth layer 'nope'"),
        ({"layer": "imputed", "mask_layer": "nope"}, None, ValueError, "no mask layer 'nope'"),
        ({"layer": "imputed", "mask_layer": "normalized"}, None, ValueError, "not a boolean mask"),
        ({"layer": "imputed"}, "empty_mask", ValueError, "masks no entry"),
        ({"layer": "imputed"}, "nan_masked", ValueError, "NaN"),
        ({"layer": "imputed"}, "inf_truth", ValueError, "infinite"),
        ({"layer": "imputed"}, "strings", TypeError, "numeric"),
    ],
)
def test_score_imputation_bad_input(kwargs, change, error, match):
    adata = _tiny(sparse_layers=False)
    if change == "empty_mask":
        adata.layers["masked_mask"] = sparse.csr_matrix((2, 3), dtype=bool)
    elif change == "nan_masked":
        adata.layers["imputed"][1, 1] = np.nan
    elif change == "inf_truth":
        adata.layers["normalized"][0, 0] = np.inf
    elif change == "strings":
        adata.layers["imputed"] = np.full((2, 3), "a", dtype=object)
    before = _snapshot(adata) if change != "strings" else None
    kwargs = dict(kwargs)
    layer = kwargs.pop("layer")
    with pytest.raises(error, match=match):
        sv.tl.score_imputation(adata, layer, **kwargs)
    if before is not None:
        _assert_unchanged(adata, before)


@pytest.mark.parametrize("which", ["normalized", "masked_mask"])
def test_score_imputation_shape_mismatch(monkeypatch, which):
    # anndata keeps layers aligned itself; guard against matrices that bypass it, naming both shapes
    adata = _tiny(sparse_layers=True)
    real = score_module.get_layer

    def fake(adata, layer, **kwargs):
        X = real(adata, layer, **kwargs)
        return X[:, :2] if layer == which else X

    monkeypatch.setattr(score_module, "get_layer", fake)
    with pytest.raises(ValueError, match=rf"shape \(2, 3\).*{which}.*shape \(2, 2\)"):
        sv.tl.score_imputation(adata, "imputed")


# ---------------------------------------------------------------------------------------------------
# score_clustering
# ---------------------------------------------------------------------------------------------------


def _separated(*, dense: bool = False, n_per: int = 30, n_groups: int = 3, n_genes: int = 20) -> ad.AnnData:
    """Well separated groups: each has its own block of highly expressed genes."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(n_groups), n_per)
    mu = np.full((n_groups, n_genes), 0.2)
    block = n_genes // n_groups
    for g in range(n_groups):
        mu[g, g * block : (g + 1) * block] = 20.0
    X = np.sqrt(rng.poisson(mu[groups])).astype(np.float32)
    order = rng.permutation(X.shape[0])  # labels not sorted
    X, groups = X[order], groups[order]
    adata = ad.AnnData(np.zeros_like(X))
    adata.layers["normalized"] = X if dense else sparse.csr_matrix(X)
    adata.obs["cell_type"] = pd.Categorical([f"type{g}" for g in groups])
    return adata


def test_score_clustering_paper_perfect():
    adata = _separated()
    before = _snapshot(adata)
    out = sv.tl.score_clustering(adata, "normalized")
    _assert_unchanged(adata, before)
    assert set(out) == {"ari", "ami", "nmi", "n_clusters"}
    assert out["ari"] == pytest.approx(1.0) and out["ami"] == pytest.approx(1.0) and out["nmi"] == pytest.approx(1.0)
    assert out["n_clusters"] == 3 and type(out["n_clusters"]) is int
    for key in ("ari", "ami", "nmi"):
        assert type(out[key]) is float


def test_score_clustering_paper_sparse_dense_parity():
    rng = np.random.default_rng(1)
    adata = _separated(n_genes=12)
    X = adata.layers["normalized"].toarray() + rng.normal(0, 1.5, adata.shape).clip(0)  # harder: not perfect
    adata.layers["normalized"] = sparse.csr_matrix(X.astype(np.float32))
    adata.layers["dense"] = X.astype(np.float32)
    a = sv.tl.score_clustering(adata, "normalized")
    b = sv.tl.score_clustering(adata, "dense")
    assert a == b


def test_score_clustering_leiden_perfect():
    adata = _separated(dense=True)
    before = _snapshot(adata)
    out = sv.tl.score_clustering(adata, "normalized", protocol="leiden", key_added="scores")
    assert set(out) == {"ari", "ami", "nmi", "n_clusters", "resolution"}
    assert out["n_clusters"] == 3
    assert out["ari"] == pytest.approx(1.0)
    assert 0.01 <= out["resolution"] <= 5.0 and type(out["resolution"]) is float
    assert adata.uns["scores"] == out
    del adata.uns["scores"]
    _assert_unchanged(adata, before)  # no PCA / neighbors / leiden written into the caller's AnnData
    again = sv.tl.score_clustering(adata, "normalized", protocol="leiden")
    assert again == out  # deterministic under random_state


def test_score_clustering_leiden_sparse_and_x():
    adata = _separated()
    adata.X = adata.layers["normalized"].copy()
    out = sv.tl.score_clustering(adata, None, protocol="leiden", random_state=1)
    assert out["ari"] == pytest.approx(1.0)


def test_score_clustering_key_added_paper(tmp_path):
    adata = _separated()
    out = sv.tl.score_clustering(adata, "normalized", key_added="clust")
    assert adata.uns["clust"] == out
    adata.write_h5ad(tmp_path / "s.h5ad")
    assert ad.read_h5ad(tmp_path / "s.h5ad").uns["clust"]["n_clusters"] == 3


def test_score_clustering_failed_clusterer_scores_zero(monkeypatch):
    adata = _separated()

    def broken(X, k):
        def fail():
            raise RuntimeError("boom")

        return {"kmeans": fail, "spectral_cosine": lambda: np.zeros(X.shape[0], dtype=int)}

    monkeypatch.setattr(score_module, "_paper_clusterers", broken)
    out = sv.tl.score_clustering(adata, "normalized")
    assert out["ari"] == 0.0 and out["ami"] == 0.0 and out["nmi"] == 0.0


def _labels_nan(adata):
    labels = adata.obs["cell_type"].astype(object).to_numpy()
    labels[3] = np.nan
    adata.obs["cell_type"] = pd.Categorical(labels)


def _labels_single(adata):
    adata.obs["cell_type"] = pd.Categorical(["a"] * adata.n_obs)


def _layer_nan(adata):
    X = adata.layers["normalized"].toarray()
    X[2, 2] = np.nan
    adata.layers["normalized"] = X


@pytest.mark.parametrize("protocol", ["paper", "leiden"])
@pytest.mark.parametrize(
    ("kwargs", "change", "error", "match"),
    [
        ({}, _labels_nan, ValueError, "missing labels"),
        ({}, _labels_single, ValueError, "at least 2"),
        ({"labels_key": "louvain"}, None, ValueError, "no column 'louvain'"),
        ({"layer": "nope"}, None, ValueError, "no layer 'nope'"),
        ({}, _layer_nan, ValueError, "NaN"),
        ({"random_state": "0"}, None, TypeError, "random_state"),
        ({"key_added": 3}, None, TypeError, "key_added"),
    ],
)
def test_score_clustering_bad_input(protocol, kwargs, change, error, match):
    adata = _separated()
    if change is not None:
        change(adata)
    before = _snapshot(adata)
    kwargs = dict(kwargs)  # shared between the parametrized protocols
    layer = kwargs.pop("layer", "normalized")
    with pytest.raises(error, match=match):
        sv.tl.score_clustering(adata, layer, protocol=protocol, **kwargs)
    _assert_unchanged(adata, before)


def test_score_clustering_fewer_cells_than_labels():
    adata = _separated()[:4].copy()
    adata.obs["cell_type"] = pd.Categorical(["a", "b", "c", "d"])
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="more cells than clusters"):
        sv.tl.score_clustering(adata, "normalized")
    _assert_unchanged(adata, before)


def test_score_clustering_unknown_protocol():
    adata = _separated()
    with pytest.raises(ValueError, match="protocol"):
        sv.tl.score_clustering(adata, "normalized", protocol="louvain")


def test_score_clustering_view_and_too_large(monkeypatch):
    adata = _separated()
    view = adata[:60]
    assert sv.tl.score_clustering(view, "normalized")["n_clusters"] == 3  # reading a view is fine
    with pytest.raises(ValueError, match="view"):
        sv.tl.score_clustering(view, "normalized", key_added="scores")
    monkeypatch.setattr(score_module, "PAPER_MAX_CELLS", 50)
    with pytest.raises(ValueError, match="GiB"):
        sv.tl.score_clustering(adata, "normalized")


# ---------------------------------------------------------------------------------------------------
# real data: pbmc3k (filtered as the paper, sqrt layer)
# ---------------------------------------------------------------------------------------------------


def _paper_sqrt(adata: ad.AnnData) -> ad.AnnData:
    """The paper's filter (masks on the unfiltered matrix) and sqrt normalization, computed here."""
    C = sparse.csr_matrix(adata.X)
    nz = C != 0
    genes = np.asarray(nz.sum(axis=0)).ravel() > int(0.05 * adata.n_obs)
    cells = np.asarray(nz.sum(axis=1)).ravel() > int(0.05 * adata.n_vars)
    adata = adata[cells, genes].copy()
    Y = sparse.csr_matrix(adata.X, dtype=np.float64).log1p()
    totals = np.asarray(Y.sum(axis=1)).ravel()
    Y = sparse.diags(np.median(totals) / totals) @ Y
    adata.layers["sqrt"] = sparse.csr_matrix(Y.sqrt(), dtype=np.float32)
    return adata


def test_pbmc3k_paper_protocol(pbmc3k):
    adata = _paper_sqrt(pbmc3k)
    assert adata.shape == (2024, 3857)
    start = time.perf_counter()
    out = sv.tl.score_clustering(adata, "sqrt", protocol="paper")
    elapsed = time.perf_counter() - start
    print(f"pbmc3k paper protocol: {out} in {elapsed:.1f}s")
    assert out["n_clusters"] == 9
    # reference on this matrix: ARI 0.673, AMI 0.757 (KMeans is the best clusterer)
    assert 0.6 < out["ari"] < 0.75
    assert 0.7 < out["ami"] < 0.8
    assert 0.7 < out["nmi"] < 0.8


def test_keep_torch_threads_restores_the_count():
    import torch

    from scvgae_sc._utils import keep_torch_threads

    before = torch.get_num_threads()
    with keep_torch_threads():
        torch.set_num_threads(before + 1)  # what numba's OpenMP start does to torch
    assert torch.get_num_threads() == before


_THREADS_SCRIPT = """
import numpy as np, anndata as ad, torch
import scvgae_sc as sv
torch.set_num_threads(1)
(torch.randn(256, 256) @ torch.randn(256, 256)).sum()  # torch's OpenMP pool is running with 1 thread
rng = np.random.default_rng(0)
X = rng.poisson(1.0, (120, 30)).astype(np.float32)
a = ad.AnnData(X, layers={"counts": X.copy()})
a.obs["cell_type"] = (np.arange(120) % 3).astype(str)
sv.pp.normalize(a)
sv.tl.score_clustering(a, "normalized", labels_key="cell_type", protocol="leiden")
print("THREADS", torch.get_num_threads())
"""


def test_leiden_protocol_keeps_the_callers_torch_threads(tmp_path):
    """sc.pp.neighbors starts numba's OpenMP layer, which (without the guard) resets torch's thread count to all
    cores. A fresh process, because numba starts that layer once per process."""
    import subprocess
    import sys

    numba_cache = tmp_path / "numba"  # nothing cached: the first start happens in this process
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(numba_cache)}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("NUMBA_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "THREADS 1" in out.stdout, out.stdout + out.stderr[-2000:]
