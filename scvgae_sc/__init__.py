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

from importlib.metadata import PackageNotFoundError, version

from . import datasets, pl, pp, tl

try:
    __version__ = version("scvgae-sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "datasets", "pl", "pp", "tl"]
