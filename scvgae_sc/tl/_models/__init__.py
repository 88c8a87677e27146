"""The imputation methods, one class each, registered by method name on :class:`ImputationModel`."""

from ._base import ImputationModel, ImputeResult
from ._gnnimpute import GNNImputeModel, gnnimpute_options
from ._options import GNNImputeOptions, MethodOptions, SCVGAEOptions
from ._scvgae import SCVGAEModel, scvgae_options

__all__ = [
    "GNNImputeModel",
    "GNNImputeOptions",
    "ImputationModel",
    "ImputeResult",
    "MethodOptions",
    "SCVGAEModel",
    "SCVGAEOptions",
    "gnnimpute_options",
    "scvgae_options",
]
