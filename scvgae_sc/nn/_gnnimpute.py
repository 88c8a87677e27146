"""GNNImpute: a graph-attention autoencoder whose output is scaled by per-cell size factors.

Torch only: tensors in, tensors out. Sparse message passing (PyG ``GATConv``) replaces the published
dense ``n × n`` attention.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATConv

from ._zinb import masked_mean

__all__ = ["GNNImputeModule"]


class GNNImputeModule(nn.Module):
    """The GNNImpute network (DESIGN section 2).

    Encoder: ``GATConv(n_genes → hidden, heads, concat=False) → BatchNorm1d → ReLU → Dropout →
    GATConv(hidden → latent, heads, concat=False) → BatchNorm1d → ReLU → Dropout`` gives ``Z``; the heads are
    averaged (``concat=False``). Decoder: ``Linear(latent → hidden) → BatchNorm1d → ReLU → Linear(hidden →
    n_genes) → ReLU``, multiplied by the per-cell size factors.

    Edge weights are not used: GAT attention computes its own weights from the features of the two ends of
    each edge, so only the graph's structure (``edge_index``, PyG convention: ``[0]`` sources, ``[1]``
    targets) matters.

    Parameters
    ----------
    n_genes
        Number of input (and output) genes.
    hidden
        Width of the first GAT layer and of the decoder's hidden layer.
    latent
        Width of ``Z``.
    heads
        Attention heads per GAT layer (averaged).
    dropout
        Dropout rate after each encoder block.
    attention_dropout
        Dropout on the attention coefficients (the published code uses 0.6).
    add_self_loops
        Whether the GAT layers add a self loop to every node. The published graph
        (``kneighbors_graph(include_self=True)``) already contains them: pass ``False`` for such a graph.
        (With ``True``, ``GATConv`` first removes existing self loops, so none is ever counted twice.)
    """

    def __init__(
        self,
        n_genes: int,
        *,
        hidden: int = 512,
        latent: int = 50,
        heads: int = 3,
        dropout: float = 0.5,
        attention_dropout: float = 0.6,
        add_self_loops: bool = True,
    ) -> None:
        super().__init__()
        self.n_genes = int(n_genes)
        self.conv1 = GATConv(
            self.n_genes, hidden, heads=heads, concat=False, dropout=attention_dropout, add_self_loops=add_self_loops
        )
        self.bn1 = nn.BatchNorm1d(hidden)
        self.conv2 = GATConv(
            hidden, latent, heads=heads, concat=False, dropout=attention_dropout, add_self_loops=add_self_loops
        )
        self.bn2 = nn.BatchNorm1d(latent)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.n_genes),
            nn.ReLU(),
        )

    def encode(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Return the latent representation ``Z`` ``(n, latent)``."""
        h = self.dropout(torch.relu(self.bn1(self.conv1(x, edge_index))))
        return self.dropout(torch.relu(self.bn2(self.conv2(h, edge_index))))

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, size_factors: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the network.

        Parameters
        ----------
        x
            ``(n, n_genes)`` input (the published preprocessing: log1p then z-score per gene).
        edge_index
            ``(2, n_edges)`` graph over the ``n`` rows.
        size_factors
            ``(n,)`` or ``(n, 1)`` library size / median library size; ``None`` means 1.

        Returns
        -------
        ``{"recon": (n, n_genes), "z": (n, latent)}``; ``recon`` is the decoder output times each cell's size
        factor, on the scale of whatever target the caller trains it against.
        """
        z = self.encode(x, edge_index)
        recon = self.decoder(z).float()
        if size_factors is not None:
            sf = size_factors.to(recon.dtype)
            recon = recon * (sf.unsqueeze(1) if sf.dim() == 1 else sf)
        return {"recon": recon, "z": z}

    @staticmethod
    def loss(
        out: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean squared error of ``out["recon"]`` against ``target`` over ``mask``.

        ``mask`` is a boolean or weight tensor broadcastable to ``target`` — ``(n, 1)`` selects training cells,
        ``(n, n_genes)`` selects entries. Returns ``{"loss", "mse"}``.
        """
        mse = masked_mean((out["recon"].float() - target.float()).pow(2), mask)
        return {"loss": mse, "mse": mse}
