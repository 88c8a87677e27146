"""Every AnnData key the package reads or writes, in one place (squidpy's pattern)."""

from __future__ import annotations

#: Key of this package's bookkeeping in ``adata.uns``.
UNS_KEY = "scvgae_sc"
#: Default counts layer.
COUNTS = "counts"
#: Default normalized layer.
NORMALIZED = "normalized"
#: Default cell-graph key.
CELL_GRAPH = "cell_graph"
#: Default masking key.
MASKED = "masked"
#: Default label column.
CELL_TYPE = "cell_type"
#: The ``pp.normalize`` method each imputation method's default layer is made with when ``tl.impute`` (and
#: ``scvgae-sc impute``) finds no default layer, from the counts layer or else the raw counts in ``X`` (scVGAE: the
#: paper's sqrt layer; GNNImpute: the linear layer it models). The one place these defaults are written.
DEFAULT_NORMALIZATION = {"scvgae": "sqrt", "gnnimpute": "total"}


def connectivities_key(key: str) -> str:
    """``obsp`` key of a graph's (weighted) adjacency."""
    return f"{key}_connectivities"


def distances_key(key: str) -> str:
    """``obsp`` key of a graph's distances."""
    return f"{key}_distances"


def latent_key(key: str) -> str:
    """``obsm`` key of an imputation's latent representation."""
    return f"X_{key}"


def mask_counts_key(key: str) -> str:
    """Layer holding the counts with masked entries zeroed."""
    return f"{key}_counts"


def mask_key(key: str) -> str:
    """Layer holding the (sparse, boolean) mask of hidden entries."""
    return f"{key}_mask"
