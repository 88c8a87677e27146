from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pytest
from scipy import sparse

matplotlib.use("Agg")

#: ``../shared/data`` beside the checkout (present in CI); override with SCVGAE_SC_DATA.
SHARED_DATA = Path(os.environ.get("SCVGAE_SC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (the shared data beside the checkout; set SCVGAE_SC_DATA)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test data are tiny: one intra-op thread is fastest, and immune to a busy second core."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def _pbmc68k_cached() -> ad.AnnData:
    import scvgae_sc as sv

    return sv.datasets.pbmc68k()


@pytest.fixture
def pbmc68k(_pbmc68k_cached) -> ad.AnnData:
    """Real offline counts: 700 cells × 765 genes, 10 labeled types (a fresh copy per test)."""
    return _pbmc68k_cached.copy()


@pytest.fixture(scope="session")
def _pbmc3k_cached() -> ad.AnnData:
    return ad.read_h5ad(shared_file("pbmc3k.h5ad"))


@pytest.fixture
def pbmc3k(_pbmc3k_cached) -> ad.AnnData:
    """pbmc3k raw counts from ../shared/data (2638 × 13714, 9 types)."""
    return _pbmc3k_cached.copy()


@pytest.fixture
def toy_counts() -> ad.AnnData:
    """A small seeded counts AnnData (120 cells × 60 genes, 3 groups, sparse int)."""
    rng = np.random.default_rng(0)
    n_cells, n_genes, n_groups = 120, 60, 3
    groups = rng.integers(0, n_groups, n_cells)
    base = rng.gamma(2.0, 1.0, n_genes)
    shift = rng.lognormal(0, 1.0, (n_groups, n_genes))
    mu = base[None, :] * shift[groups]
    X = rng.poisson(mu).astype(np.int32)
    adata = ad.AnnData(sparse.csr_matrix(X))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["cell_type"] = [f"type{g}" for g in groups]
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    return adata


class AnnDataSnapshot:
    """What a failed call must leave as it was: layer values and the keys of obsm, obsp and uns."""

    def __init__(self, adata: ad.AnnData) -> None:
        self.layers = {k: _dense(v).copy() for k, v in adata.layers.items()}
        self.keys = (set(adata.obsm), set(adata.obsp), set(adata.uns))

    def assert_unchanged(self, adata: ad.AnnData) -> None:
        assert set(adata.layers) == set(self.layers)
        assert (set(adata.obsm), set(adata.obsp), set(adata.uns)) == self.keys
        for k, v in self.layers.items():
            np.testing.assert_array_equal(_dense(adata.layers[k]), v)


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


@pytest.fixture
def snapshot():
    """``snap = snapshot(adata)``, later ``snap.assert_unchanged(adata)``."""
    return AnnDataSnapshot
