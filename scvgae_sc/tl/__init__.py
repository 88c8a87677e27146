"""Tools: imputation (the one entry point) and scoring of imputation and clustering."""

from ._impute import impute
from ._score import score_clustering, score_imputation

__all__ = ["impute", "score_clustering", "score_imputation"]
