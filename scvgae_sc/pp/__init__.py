"""Preprocessing: filtering, normalization into layers, cell graphs, dropout masking for evaluation."""

from ._cell_graph import cell_graph
from ._filter import filter
from ._mask import mask_dropouts
from ._normalize import normalize
from ._split import split_counts

__all__ = ["cell_graph", "filter", "mask_dropouts", "normalize", "split_counts"]
