"""Tools: imputation (the one entry point) and scoring of imputation and clustering."""

from ._gnnimpute import gnnimpute_options
from ._impute import impute
from ._model import ImputationModel
from ._score import score_clustering, score_imputation
from ._score_denoising import score_denoising
from ._scvgae import scvgae_options

__all__ = [
    "ImputationModel",
    "gnnimpute_options",
    "impute",
    "score_clustering",
    "score_denoising",
    "score_imputation",
    "scvgae_options",
]
