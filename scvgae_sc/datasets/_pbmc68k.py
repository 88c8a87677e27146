from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

__all__ = ["pbmc68k"]

#: ``scale_factor`` that ``sc.pp.normalize_per_cell`` used when ``pbmc68k_reduced``'s raw was made.
_TARGET_SUM = 1e4
#: Observation columns of ``pbmc68k_reduced`` that are kept (renamed) in our AnnData.
_OBS_KEEP = {
    "bulk_labels": "cell_type",
    "n_counts": "n_counts_original",
    "n_genes": "n_genes_original",
    "percent_mito": "percent_mito",
    "phase": "phase",
}


@lru_cache(maxsize=1)
def _recover() -> tuple[sparse.csr_matrix, pd.DataFrame, pd.Index]:
    """Recover the counts, obs and var_names of ``pbmc68k_reduced`` (once per process)."""
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    raw = reduced.raw
    # float64 throughout: raw.X is float32 and expm1 amplifies its rounding for large counts
    log_norm = sparse.csr_matrix(raw.X, dtype=np.float64)
    library = reduced.obs["n_counts"].to_numpy(dtype=np.float64)
    scale = sparse.diags(library / _TARGET_SUM)
    log_norm.data = np.expm1(log_norm.data)
    counts = sparse.csr_matrix(scale @ log_norm)
    counts.data = np.round(counts.data)
    counts.eliminate_zeros()
    counts = counts.astype(np.float32)
    counts.sort_indices()

    obs = pd.DataFrame(index=pd.Index(reduced.obs_names, name=None))
    for old, new in _OBS_KEEP.items():
        obs[new] = reduced.obs[old].values  # categoricals keep their categories
    return counts, obs, pd.Index(raw.var_names, name=None)


def pbmc68k() -> AnnData:
    """Raw UMI counts of 700 PBMCs × 765 genes with 10 cell types, recovered offline.

    Scanpy bundles :func:`scanpy.datasets.pbmc68k_reduced`, a 700-cell subsample of the 10x
    Genomics Fresh 68k PBMC data (Zheng et al., 2017) whose ``.raw`` holds
    ``log1p(normalize_per_cell(counts, 1e4))`` on 765 genes and whose ``obs["n_counts"]`` holds
    each cell's library size over all genes of the original data. The counts are recovered
    exactly, without a download, as ::

        counts = round(expm1(raw.X) * obs["n_counts"][:, None] / 1e4)

    computed in float64 (the largest distance to the nearest integer before rounding is below
    0.1, from raw.X being stored as float32).

    The work is done once per process; every call returns a new :class:`~anndata.AnnData`, so
    callers may modify it.

    Returns
    -------
    An :class:`~anndata.AnnData` of 700 cells × 765 genes with

    ``X``
        The UMI counts, :class:`scipy.sparse.csr_matrix` of float32 holding non-negative integers.
        Row sums are smaller than ``n_counts_original``: only 765 of the original genes are kept.
    ``obs["cell_type"]``
        The 10 FACS-sorted reference labels (``bulk_labels`` in scanpy), categorical.
    ``obs["n_counts_original"]``
        The library size of each cell over all genes of the original data (``n_counts`` in
        scanpy), used for the recovery above.
    ``obs["n_genes_original"]``, ``obs["percent_mito"]``, ``obs["phase"]``
        Carried over from scanpy (computed on all genes of the original data).
    ``uns["source"]``
        A short description of where the data comes from.

    No layers, ``obsm`` or ``obsp`` are set, and ``raw`` is ``None``.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> adata.shape
    (700, 765)
    >>> adata.obs["cell_type"].nunique()
    10
    """
    start = logg.info("recovering pbmc68k counts from scanpy's bundled pbmc68k_reduced")
    counts, obs, var_names = _recover()
    adata = AnnData(
        X=counts.copy(),
        obs=obs.copy(),
        var=pd.DataFrame(index=var_names.copy()),
    )
    adata.uns["source"] = (
        "10x Genomics Fresh 68k PBMCs (Zheng et al. 2017), 700-cell subsample bundled with scanpy "
        "(scanpy.datasets.pbmc68k_reduced); raw UMI counts recovered as "
        "round(expm1(raw.X) * n_counts / 1e4)."
    )
    logg.info("    finished", time=start)
    return adata
