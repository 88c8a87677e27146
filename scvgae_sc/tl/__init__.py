"""Tools: imputation (the one entry point) and scoring of imputation and clustering."""

from ._impute import impute
from ._models import ImputationModel, gnnimpute_options, scvgae_options
from ._score import score_clustering, score_imputation

__all__ = ["ImputationModel", "gnnimpute_options", "impute", "score_clustering", "score_imputation", "scvgae_options"]
