"""Tools: imputation (the one entry point) and scoring of imputation and clustering."""

from ._gnnimpute import gnnimpute_options
from ._impute import impute
from ._model import ImputationModel
from ._score import score_clustering, score_imputation
from ._scvgae import scvgae_options

__all__ = ["ImputationModel", "gnnimpute_options", "impute", "score_clustering", "score_imputation", "scvgae_options"]
