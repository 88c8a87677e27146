"""GNNImpute: a graph-attention autoencoder whose output is scaled by per-cell size factors.

Torch only: tensors in, tensors out. Sparse message passing (PyG ``GATConv``) replaces the published
dense ``n × n`` attention. On CPU and CUDA a whole-graph pass computes each ``GATConv`` with the layer's own
parameters but aggregates with one sparse product per head (:class:`AttentionGraph`), so the per-edge messages
(edges × heads × channels, the largest tensors of PyG's edge-wise path) are never stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import add_self_loops as _add_self_loops
from torch_geometric.utils import remove_self_loops, softmax

from ._sparse import csr_tensor, sparse_mm_supported
from ._zinb import masked_mean

__all__ = ["AttentionGraph", "GNNImputeModule"]

#: Edges per piece when the attention gradient is computed (bounds its temporaries to a few MB).
_EDGE_CHUNK_ELEMENTS = 1 << 22


class AttentionGraph:
    """A graph's edges sorted for sparse-product attention (both directions), built once per graph.

    The edge set is the one ``GATConv`` attends over: with ``add_self_loops=True`` existing self loops are
    removed and one per node added, as ``GATConv`` does. Edges are sorted by target (rows of the CSR
    attention matrix) and, through :attr:`perm_t`, by source (rows of its transpose).

    Parameters
    ----------
    edge_index
        ``(2, n_edges)``, PyG convention (``[0]`` sources, ``[1]`` targets).
    num_nodes
        Number of nodes.
    add_self_loops
        As the ``GATConv`` layers that will use the graph.
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, *, add_self_loops: bool = True) -> None:
        ei = edge_index.long()
        if add_self_loops:
            ei, _ = remove_self_loops(ei)
            ei, _ = _add_self_loops(ei, num_nodes=num_nodes)
        src, dst = ei[0], ei[1]
        order = torch.argsort(dst * num_nodes + src)
        self.num_nodes = int(num_nodes)
        self.add_self_loops = bool(add_self_loops)
        self.src, self.dst = src[order].contiguous(), dst[order].contiguous()
        self.ptr = self._ptr(self.dst)
        self.perm_t = torch.argsort(self.src * num_nodes + self.dst)
        self.dst_t = self.dst[self.perm_t].contiguous()
        self.ptr_t = self._ptr(self.src[self.perm_t])

    def _ptr(self, sorted_rows: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(sorted_rows, minlength=self.num_nodes)
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    @property
    def num_edges(self) -> int:
        """Number of edges (self loops included)."""
        return int(self.src.numel())


class _AttentionSum(torch.autograd.Function):
    """``out[i, h] = Σ_e:dst=i alpha[e, h] · x[src_e, h]`` with sparse products, float32.

    Backward: ``grad_x`` by the transposed products; ``grad_alpha[e, h] = <grad_out[dst_e, h], x[src_e, h]>``
    computed over pieces of edges, so no edges × heads × channels tensor exists at once.
    """

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, x: torch.Tensor, graph: AttentionGraph) -> torch.Tensor:  # noqa: D102
        alpha32, x32 = alpha.float(), x.float()
        n, heads, _ = x32.shape
        out = torch.empty_like(x32)
        for h in range(heads):
            attention = csr_tensor(graph.ptr, graph.src, alpha32[:, h].contiguous(), (n, n))
            out[:, h] = torch.sparse.mm(attention, x32[:, h].contiguous())
        ctx.graph = graph
        ctx.dtypes = (alpha.dtype, x.dtype)
        ctx.save_for_backward(alpha32, x32)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        alpha32, x32 = ctx.saved_tensors
        graph: AttentionGraph = ctx.graph
        g = grad_out.float().contiguous()  # the heads' mean gives an expanded (stride-0) gradient
        n, heads, channels = x32.shape
        grad_alpha = grad_x = None
        if ctx.needs_input_grad[1]:
            alpha_t = alpha32[graph.perm_t]
            grad_x = torch.empty_like(x32)
            for h in range(heads):
                attention_t = csr_tensor(graph.ptr_t, graph.dst_t, alpha_t[:, h].contiguous(), (n, n))
                grad_x[:, h] = torch.sparse.mm(attention_t, g[:, h].contiguous())
            grad_x = grad_x.to(ctx.dtypes[1])
        if ctx.needs_input_grad[0]:
            grad_alpha = torch.empty_like(alpha32)
            step = max(1, _EDGE_CHUNK_ELEMENTS // (heads * channels))
            for start in range(0, graph.num_edges, step):
                sl = slice(start, start + step)
                grad_alpha[sl] = (g.index_select(0, graph.dst[sl]) * x32.index_select(0, graph.src[sl])).sum(-1)
            grad_alpha = grad_alpha.to(ctx.dtypes[0])
        return grad_alpha, grad_x, None


def _shared_lin(conv: GATConv) -> nn.Module | None:
    """The layer's one linear map for sources and targets, or ``None`` where :func:`gat_sparse` does not apply.

    ``lin`` in recent PyG, ``lin_src`` (the same module as ``lin_dst``) in older versions; ``None`` for separate
    source / target maps, a residual or edge features.
    """
    if getattr(conv, "res", None) is not None or getattr(conv, "lin_edge", None) is not None:
        return None
    lin = getattr(conv, "lin", None)
    if lin is None and getattr(conv, "lin_src", None) is not None and conv.lin_src is getattr(conv, "lin_dst", None):
        lin = conv.lin_src
    return lin


def gat_sparse(conv: GATConv, x: torch.Tensor, graph: AttentionGraph) -> torch.Tensor:
    """``conv(x, edge_index)`` for a whole graph, aggregated by sparse products (see :class:`AttentionGraph`).

    The layer's own parameters and settings (heads, ``concat``, ``negative_slope``, attention ``dropout``,
    ``bias``) — the same function as PyG's ``GATConv.forward`` for a non-bipartite layer without edge features
    or residual; only the order of floating-point sums (and which edge each attention-dropout draw falls on)
    differs. The aggregation runs in float32 (sparse kernels have no bfloat16), also under autocast.
    """
    lin = _shared_lin(conv)
    if lin is None:
        raise ValueError("gat_sparse supports GATConv layers with a shared linear map, no residual, no edge features.")
    if conv.add_self_loops != graph.add_self_loops:
        raise ValueError(
            f"The graph was built with add_self_loops={graph.add_self_loops}, the layer has {conv.add_self_loops}."
        )
    heads, channels = conv.heads, conv.out_channels
    xw = lin(x).view(-1, heads, channels)
    a_src = (xw * conv.att_src).sum(-1)
    a_dst = (xw * conv.att_dst).sum(-1)
    alpha = a_src.index_select(0, graph.src) + a_dst.index_select(0, graph.dst)
    alpha = F.leaky_relu(alpha, conv.negative_slope)
    alpha = softmax(alpha, graph.dst, num_nodes=graph.num_nodes)
    alpha = F.dropout(alpha, p=conv.dropout, training=conv.training)
    with torch.autocast(device_type=xw.device.type, enabled=False):
        out = _AttentionSum.apply(alpha, xw, graph)
    out = out.reshape(-1, heads * channels) if conv.concat else out.mean(dim=1)
    return out + conv.bias if conv.bias is not None else out


class GNNImputeModule(nn.Module):
    """The GNNImpute network.

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
            nn.ReLU(inplace=True),  # (neither BatchNorm1d nor Linear needs its output for the gradient)
            nn.Linear(hidden, self.n_genes),
            nn.ReLU(inplace=True),
        )

    def attention_graph(self, edge_index: torch.Tensor, num_nodes: int) -> AttentionGraph | None:
        """The :class:`AttentionGraph` of ``edge_index`` for this model's layers (``None`` where unsupported).

        On devices without sparse products :meth:`encode` uses PyG's edge-wise path. Build the graph once and pass
        it instead of ``edge_index`` to save re-sorting the edges at every call.
        """
        if not sparse_mm_supported(edge_index.device):
            return None
        if any(_shared_lin(conv) is None for conv in (self.conv1, self.conv2)):  # another PyG's GATConv layout
            return None
        return AttentionGraph(edge_index, num_nodes, add_self_loops=self.conv1.add_self_loops)

    def _conv(self, conv: GATConv, h: torch.Tensor, graph: torch.Tensor | AttentionGraph | None) -> torch.Tensor:
        return gat_sparse(conv, h, graph) if isinstance(graph, AttentionGraph) else conv(h, graph)

    def encode(self, x: torch.Tensor, edge_index: torch.Tensor | AttentionGraph) -> torch.Tensor:
        """Return the latent representation ``Z`` ``(n, latent)``.

        ``edge_index`` is the graph over the rows of ``x`` (an :class:`AttentionGraph` from
        :meth:`attention_graph`, or an edge index, sorted into one here on CPU and CUDA).
        """
        graph = edge_index
        if isinstance(graph, torch.Tensor):
            graph = self.attention_graph(graph, x.shape[0]) or graph
        h = self.dropout(torch.relu(self.bn1(self._conv(self.conv1, x, graph))))
        return self.dropout(torch.relu(self.bn2(self._conv(self.conv2, h, graph))))

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor | AttentionGraph, size_factors: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the network.

        Parameters
        ----------
        x
            ``(n, n_genes)`` input (the published preprocessing: log1p then z-score per gene).
        edge_index
            ``(2, n_edges)`` graph over the ``n`` rows, or its :class:`AttentionGraph`.
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

    @staticmethod
    def imputation_loss(
        out: dict[str, torch.Tensor],
        rows: torch.Tensor,
        rows_target: torch.Tensor,
        hidden: torch.Tensor | None = None,
        hidden_target: torch.Tensor | None = None,
        *,
        hidden_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """The training objective: MSE over the entries of ``rows`` plus ``hidden_weight`` × MSE over hidden entries.

        Parameters
        ----------
        out
            Output of :meth:`forward` (``recon`` times the size factors).
        rows
            The cells the first term covers (indices, a boolean mask or a slice of ``out["recon"]``'s rows).
        rows_target
            ``(len(rows), n_genes)`` target of those rows (the input layer times the size factors).
        hidden
            The entries hidden from the input: flat indices into ``out["recon"]`` (a 1-d integer tensor) or a
            boolean mask of its shape; ``None`` leaves the second term out.
        hidden_target
            Their targets, in the same order.
        hidden_weight
            Weight of the hidden entries' term.

        Returns
        -------
        ``{"loss", "mse"}``, and ``"masked"`` with ``hidden``. A term over no entry is 0 (with a gradient).
        """
        recon = out["recon"].float()
        comps = {"mse": F.mse_loss(recon[rows], rows_target)}
        comps["loss"] = comps["mse"]
        if hidden is not None:
            if hidden.dtype == torch.bool:
                masked = F.mse_loss(recon[hidden], hidden_target) if bool(hidden.any()) else recon.sum() * 0
            elif hidden.numel():
                masked = F.mse_loss(recon.reshape(-1)[hidden], hidden_target)
            else:
                masked = recon.sum() * 0
            comps["masked"] = masked
            comps["loss"] = comps["loss"] + hidden_weight * masked
        return comps
