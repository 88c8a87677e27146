"""Torch modules, losses and the training loop (tensors only; no AnnData in here)."""

from ._distributed import init_from_env, is_distributed, rank, world_size
from ._gnnimpute import AttentionGraph, GNNImputeModule
from ._scvgae import SCVGAE, scvgae_loss
from ._trainer import Trainer, fast_bf16, resolve_device, resolve_precision
from ._zinb import masked_mean, nb_nll, squared_errors, zinb_nll, zinb_nll_heads

__all__ = [
    "AttentionGraph",
    "GNNImputeModule",
    "SCVGAE",
    "Trainer",
    "fast_bf16",
    "init_from_env",
    "is_distributed",
    "masked_mean",
    "nb_nll",
    "rank",
    "resolve_device",
    "resolve_precision",
    "scvgae_loss",
    "squared_errors",
    "world_size",
    "zinb_nll",
    "zinb_nll_heads",
]
