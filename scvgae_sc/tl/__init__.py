"""Tools: imputation (the one entry point) and scoring of imputation and clustering."""

from ._impute import impute
from ._models import GNNImputeModel, ImputationModel, SCVGAEModel, gnnimpute_options, scvgae_options
from ._score import score_clustering, score_imputation
from ._score_denoising import score_denoising

__all__ = [
    "GNNImputeModel",
    "ImputationModel",
    "SCVGAEModel",
    "gnnimpute_options",
    "impute",
    "score_clustering",
    "score_denoising",
    "score_imputation",
    "scvgae_options",
]
