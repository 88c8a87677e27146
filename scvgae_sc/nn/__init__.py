"""Torch modules, losses and the training loop (tensors only; no AnnData in here)."""

from ._gnnimpute import GNNImputeModule
from ._scvgae import SCVGAE, scvgae_loss
from ._trainer import Trainer, resolve_device
from ._zinb import masked_mean, nb_nll, zinb_nll

__all__ = ["GNNImputeModule", "SCVGAE", "Trainer", "masked_mean", "nb_nll", "resolve_device", "scvgae_loss", "zinb_nll"]
