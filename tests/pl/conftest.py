from __future__ import annotations

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import sparse

matplotlib.use("Agg")


def smoothed(X: np.ndarray, k: int = 10) -> np.ndarray:
    """A stand-in for an imputed layer: each cell averaged with its k nearest neighbours (on 30 PCs)."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    P = PCA(30, random_state=0).fit_transform(X)
    idx = NearestNeighbors(n_neighbors=k).fit(P).kneighbors(P, return_distance=False)
    return X[idx].mean(axis=1).astype(np.float32)


@pytest.fixture(scope="session")
def _imputed_cached() -> ad.AnnData:
    import scvgae_sc as sv

    adata = sv.datasets.pbmc68k()
    sv.pp.filter(adata)
    sv.pp.normalize(adata)
    sv.pp.normalize(adata, method="total", key_added="total")
    sv.tl.impute(adata, method="scvgae", max_epochs=2)
    sv.tl.impute(adata, method="gnnimpute", layer="total", max_epochs=3, patience=5)  # early stopping: validation
    X = adata.layers["normalized"]
    adata.layers["smooth"] = smoothed(X.toarray() if sparse.issparse(X) else np.asarray(X))
    # the user's own PCA and neighbours, which no plot may touch
    rng = np.random.default_rng(0)
    adata.obsm["X_pca"] = rng.normal(size=(adata.n_obs, 5)).astype(np.float32)
    adata.obsp["connectivities"] = sparse.identity(adata.n_obs, format="csr", dtype=np.float32)
    adata.obsp["distances"] = sparse.identity(adata.n_obs, format="csr", dtype=np.float32)
    adata.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances", "params": {}}
    return adata


@pytest.fixture
def imputed(_imputed_cached) -> ad.AnnData:
    """pbmc68k filtered and normalized ('normalized', 'total'), a 2-epoch 'scvgae', a 3-epoch 'gnnimpute' (on
    'total'), a fake imputed layer 'smooth' (kNN average of 'normalized'), and a user X_pca / neighbours."""
    return _imputed_cached.copy()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
