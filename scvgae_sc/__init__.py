"""Graph neural network dropout imputation for single-cell RNA-seq, as a Scanpy plugin.

Use it like Scanpy::

    import scanpy as sc
    import scvgae_sc as sv

    adata = sv.datasets.pbmc68k()
    sv.pp.filter(adata)
    sv.pp.normalize(adata)
    sv.tl.impute(adata, method="scvgae")
"""

from __future__ import annotations

from . import datasets, pl, pp, tl
from ._version import __version__

__all__ = ["__version__", "datasets", "pl", "pp", "tl"]
