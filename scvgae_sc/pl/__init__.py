"""Plotting: embeddings of un-imputed vs imputed layers, training curves, benchmark scores, marker heatmaps."""

from ._embedding import embedding_comparison
from ._heatmap import marker_heatmap
from ._history import training_history
from ._scores import scores

__all__ = ["embedding_comparison", "marker_heatmap", "scores", "training_history"]
