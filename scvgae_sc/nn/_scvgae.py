"""scVGAE: a (variational) graph autoencoder with ZINB heads and a reconstruction decoder.

Torch only: tensors in, tensors out. ``scvgae_sc.tl.impute`` is the layer that translates AnnData.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from torch_geometric.nn import GCNConv, GraphNorm, SimpleConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from ._sparse import coo_to_csr, sparse_mm_supported
from ._zinb import masked_mean, squared_errors, zinb_nll, zinb_nll_heads

__all__ = ["SCVGAE", "scvgae_loss"]

#: PyG's edge-wise weighted sum (the propagation on devices without sparse CSR products).
_EDGE_SUM = SimpleConv(aggr="sum")

#: Batches with more entries than this recompute the ZINB terms in backward (activation checkpointing).
CHECKPOINT_MIN_ENTRIES = 4_000_000


class _AddBack(torch.autograd.Function):
    """``recon + x_gene · w + b + x_cell · s + t``: the add-back's affine part in one pass.

    ``x_gene`` / ``x_cell``: the input standardized per gene (BatchNorm1d's normalization) and per cell (each row
    across genes), computed without gradient (the input takes none); ``w, b`` the BatchNorm affine parameters,
    ``s, t`` the ``(n, 1)`` per-cell scale and shift. The gradient of ``recon`` is the incoming one (no copy);
    those of the four parameters are sums of it against the two standardized inputs.
    """

    @staticmethod
    def forward(ctx, recon, x_gene, x_cell, g_weight, g_bias, c_scale, c_shift):  # noqa: D102
        out = torch.addcmul(recon, x_gene, g_weight)
        out.addcmul_(x_cell, c_scale).add_(g_bias).add_(c_shift)
        ctx.save_for_backward(x_gene, x_cell)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x_gene, x_cell = ctx.saved_tensors
        g_weight = g_bias = c_scale = c_shift = None
        if ctx.needs_input_grad[3]:
            g_weight = (grad * x_gene).sum(0)
        if ctx.needs_input_grad[4]:
            g_bias = grad.sum(0)
        if ctx.needs_input_grad[5]:
            c_scale = (grad * x_cell).sum(1, keepdim=True)
        if ctx.needs_input_grad[6]:
            c_shift = grad.sum(1, keepdim=True)
        return grad, None, None, g_weight, g_bias, c_scale, c_shift


class _HeadOutputs(dict):
    """The outputs of :meth:`SCVGAE.decode`: ``"mean"`` and ``"theta"`` are made from ``"heads"`` when first read.

    The ZINB loss works on the raw head output (:func:`~scvgae_sc.nn.zinb_nll_heads`), so in training the
    ``exp(clamp(·))`` of the two ``(n, n_genes)`` blocks is computed only where something reads them.
    """

    def __missing__(self, key: str) -> torch.Tensor:
        if key not in ("mean", "theta"):
            raise KeyError(key)
        heads, c = self["heads"], self["log_clamp"]
        n_genes = heads.shape[1] // 3
        block = heads[:, :n_genes] if key == "mean" else heads[:, 2 * n_genes :]
        value = torch.exp(block.clamp(-c, c))
        self[key] = value
        return value


class SCVGAE(nn.Module):
    r"""The scVGAE network, built on PyG layers and a sparse graph.

    Encoder: ``GCNConv(n_genes → hidden) → GraphNorm → ReLU → Dropout(0.2)`` gives ``Z``. With
    ``variational=True`` two more GCN layers map it to ``mu`` / ``logvar`` (``hidden → n_latent``); ``Z`` is a
    reparameterized sample in training and ``mu`` in evaluation, and a per-cell KL term is returned.

    Three heads map ``Z`` to per-gene ZINB parameters: the normalized mean ``M = exp(·)``, the dropout logits
    ``Π`` (probability ``sigmoid(Π)``) and the inverse dispersion ``Θ = exp(·)``; the exponent's argument is
    clamped to ``[-log_clamp, log_clamp]`` (default 15) so neither can overflow. ``heads="gcn"`` (the paper)
    makes each head a GCN layer; it is computed as one GCN propagation of ``Z`` followed by one linear map per
    head, which is the same function (``Â (Z W) + b = (Â Z) W + b``) but propagates ``hidden`` instead of
    ``3 × n_genes`` channels along the edges. ``heads="linear"`` skips the propagation.

    Decoder: ``Linear(in → 1024) → BatchNorm1d → ReLU → Dropout(0.4) → Linear(1024 → n_genes) → ReLU`` gives
    ``X̂``, where the input is the ZINB mean ``M`` (``decoder_input="mean"``, the paper) or ``Z``
    (``decoder_input="latent"``, cheaper: ``hidden`` instead of ``n_genes`` inputs).

    Add-back (``add_back=True``, the paper): ``recon = X̂ + BatchNorm1d(n_genes)(X) + cellnorm(X)``, where
    ``cellnorm`` standardizes each cell's row across genes and applies a learnable per-cell scale and shift
    (``nn.Embedding(n_cells, 1)`` each, initialized to 1 and 0, indexed by ``cell_index``). This is what the
    published ``BatchNorm1d(n_cells)`` over ``Xᵀ`` computes in training; unlike it, the statistics are always
    those of the cell's own row (a cell's row is complete in every batch), so training and evaluation agree
    and mini-batches work.

    Graph convention (PyG): ``edge_index[0]`` are sources (neighbours), ``edge_index[1]`` targets (the cell
    that aggregates). Normalization is GCNConv's own: self loops added (``add_remaining_self_loops``, weight
    1 where missing) and ``D^-1/2 (A + I) D^-1/2`` with the edge weights; it is computed once per forward and
    shared by all GCN layers. ``cached=True`` keeps it between calls (full-batch training on one fixed graph
    only; leave ``False`` for mini-batches). On CPU and CUDA every propagation is one sparse-matrix product
    with ``Â`` in CSR form, in float32 (also under bfloat16 autocast: sparse kernels have no bfloat16) — the
    same function as PyG's per-edge gather / scatter, 3.6–7× faster per propagation on CPU; other devices use
    PyG's path.

    Parameters
    ----------
    n_genes
        Number of input (and output) genes.
    n_cells
        Number of cells of the training data; needed by the per-cell add-back term (``add_back=True``).
    hidden
        Width of the GCN encoder output ``Z``.
    variational
        Add ``mu`` / ``logvar`` GCN layers, reparameterization and a KL term.
    n_latent
        Latent width of the variational model (default ``hidden``); ignored otherwise.
    decoder_input
        ``"mean"`` (decode from the ZINB mean ``M``, the paper) or ``"latent"`` (decode from ``Z``).
    heads
        ``"gcn"`` (the paper) or ``"linear"``.
    add_back
        Add the gene-wise and cell-wise normalized input to the decoder output.
    decoder_hidden
        Width of the decoder's hidden layer.
    dropout_encoder, dropout_decoder
        Dropout rates after the encoder and inside the decoder.
    log_clamp
        Bound on the log of ``M`` and ``Θ`` (and on ``logvar`` at ``min(log_clamp, 10)``).
    cached
        Cache the GCN normalization of the first graph seen.
    add_back_init
        Initial scale of both add-back terms (the gene-wise BatchNorm weight and the per-cell scale). ``1``
        is the paper's; a small value starts the model near its decoder output, and lets training decide
        how much standardized input to add.
    """

    def __init__(
        self,
        n_genes: int,
        n_cells: int | None = None,
        *,
        hidden: int = 128,
        variational: bool = False,
        n_latent: int | None = None,
        decoder_input: Literal["mean", "latent"] = "mean",
        heads: Literal["gcn", "linear"] = "gcn",
        add_back: bool = True,
        decoder_hidden: int = 1024,
        dropout_encoder: float = 0.2,
        dropout_decoder: float = 0.4,
        log_clamp: float = 15.0,
        cached: bool = False,
        add_back_init: float = 1.0,
    ) -> None:
        super().__init__()
        if decoder_input not in ("mean", "latent"):
            raise ValueError(f"decoder_input must be 'mean' or 'latent', got {decoder_input!r}.")
        if heads not in ("gcn", "linear"):
            raise ValueError(f"heads must be 'gcn' or 'linear', got {heads!r}.")
        if add_back and (n_cells is None or n_cells < 1):
            raise ValueError(
                "add_back=True needs n_cells (the number of training cells) for its per-cell scale and shift; "
                "pass n_cells=adata.n_obs, or add_back=False."
            )
        self.n_genes = int(n_genes)
        self.n_cells = None if n_cells is None else int(n_cells)
        self.hidden = int(hidden)
        self.variational = bool(variational)
        self.n_latent = int(n_latent) if (variational and n_latent is not None) else self.hidden
        self.decoder_input = decoder_input
        self.heads_kind = heads
        self.add_back = bool(add_back)
        self.log_clamp = float(log_clamp)
        self.cached = bool(cached)
        self._cached_graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cached_adj: torch.Tensor | None = None
        #: In training, run the decoder and the add-back (``False`` when the loss does not use ``"recon"``: an
        #: objective of the count model alone, as ``alpha=0`` without masking). Evaluation always runs them.
        self.train_decoder = True

        # Encoder. Normalization is done once in forward (gcn_norm), hence normalize=False here.
        self.gcn = GCNConv(self.n_genes, self.hidden, normalize=False, add_self_loops=False)
        self.graph_norm = GraphNorm(self.hidden)
        self.dropout_encoder = nn.Dropout(dropout_encoder)
        if self.variational:
            self.gcn_mu = GCNConv(self.hidden, self.n_latent, normalize=False, add_self_loops=False)
            self.gcn_logvar = GCNConv(self.hidden, self.n_latent, normalize=False, add_self_loops=False)

        # ZINB heads: mean, dropout logits, dispersion, fused into one (n_latent → 3 · n_genes) map.
        self.propagate = SimpleConv(aggr="sum") if heads == "gcn" else None
        self.zinb_heads = nn.Linear(self.n_latent, 3 * self.n_genes)

        # Reconstruction decoder.
        dec_in = self.n_genes if decoder_input == "mean" else self.n_latent
        self.decoder = nn.Sequential(
            nn.Linear(dec_in, decoder_hidden),
            nn.BatchNorm1d(decoder_hidden),
            nn.ReLU(),
            nn.Dropout(dropout_decoder),
            nn.Linear(decoder_hidden, self.n_genes),
            nn.ReLU(),
        )

        if self.add_back:
            self.gene_norm = nn.BatchNorm1d(self.n_genes)
            if add_back_init != 1.0:
                nn.init.constant_(self.gene_norm.weight, add_back_init)
            self.cell_scale = nn.Embedding(self.n_cells, 1)
            self.cell_shift = nn.Embedding(self.n_cells, 1)
            nn.init.constant_(self.cell_scale.weight, add_back_init)
            nn.init.zeros_(self.cell_shift.weight)

    # ------------------------------------------------------------------ graph
    def normalize_graph(
        self, edge_index: torch.Tensor, edge_weight: torch.Tensor | None, num_nodes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GCN normalization ``D^-1/2 (A + I) D^-1/2`` of a sparse graph (cached when ``cached=True``)."""
        if self.cached and self._cached_graph is not None:
            return self._cached_graph
        if edge_weight is not None:
            edge_weight = edge_weight.float()
        ei, ew = gcn_norm(edge_index, edge_weight, num_nodes, add_self_loops=True)
        if self.cached:
            self._cached_graph = (ei, ew)
        return ei, ew

    def graph_operator(
        self, edge_index: torch.Tensor, edge_weight: torch.Tensor | None, num_nodes: int
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The normalized graph in the form this model propagates with (cached with the normalization).

        On CPU and CUDA the sparse CSR matrix ``Â`` (row = target cell, column = neighbour); elsewhere the
        ``(edge_index, edge_weight)`` pair of :meth:`normalize_graph`. Pass it to :meth:`encode_graph` and
        :meth:`propagate_graph`.
        """
        cached = getattr(self, "_cached_adj", None)  # models saved before the attribute existed
        if self.cached and cached is not None:
            return cached
        ei, ew = self.normalize_graph(edge_index, edge_weight, num_nodes)
        if not sparse_mm_supported(ei.device):
            return ei, ew
        adj = coo_to_csr(ei.flip(0), ew.float(), (num_nodes, num_nodes))
        if self.cached:
            self._cached_adj = adj
        return adj

    @staticmethod
    def _spmm(graph: torch.Tensor | tuple[torch.Tensor, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """``Â h``: one float32 sparse product (autocast off for it), or PyG's edge-wise sum for an edge pair."""
        if isinstance(graph, tuple):
            ei, ew = graph
            return _EDGE_SUM(h, ei, ew)
        with torch.autocast(device_type=h.device.type, enabled=False):
            return torch.sparse.mm(graph, h.float())

    def _gcn(self, layer: nn.Module, h: torch.Tensor, graph) -> torch.Tensor:
        """A ``GCNConv`` layer built with ``normalize=False``: ``Â (h W) + b`` on :meth:`graph_operator`'s graph."""
        out = self._spmm(graph, layer.lin(h))
        return out + layer.bias if layer.bias is not None else out

    def propagate_graph(self, h: torch.Tensor, graph) -> torch.Tensor:
        """``Â h`` (the heads' propagation) on :meth:`graph_operator`'s graph."""
        return self._spmm(graph, h)

    def reset_cache(self) -> None:
        """Forget the cached graph normalization."""
        self._cached_graph = None
        self._cached_adj = None

    # ---------------------------------------------------------------- pieces
    def encode(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the encoder only: ``{"z"}`` plus ``{"z_mu", "z_logvar"}`` when variational."""
        return self.encode_graph(x, self.graph_operator(edge_index, edge_weight, x.shape[0]))

    def encode_graph(self, x: torch.Tensor, graph) -> dict[str, torch.Tensor]:
        """:meth:`encode` on a graph from :meth:`graph_operator`."""
        return self._latent(self._gcn(self.gcn, x, graph), graph)

    def encoder_input(self, ax: torch.Tensor) -> torch.Tensor:
        """The first GCN layer before its normalization, from the already propagated input ``ax = Â x``.

        ``GCNConv`` computes ``Â (x W) + b``, which is ``(Â x) W + b``: a caller that propagates the input itself
        (exactly, e.g. sparse rows of ``Â`` times the input, batch by batch) gets the same layer for any subset
        of cells, without their neighbours' neighbours.
        """
        out = self.gcn.lin(ax)
        return out + self.gcn.bias if self.gcn.bias is not None else out

    def latent_from_input(self, pre: torch.Tensor) -> torch.Tensor:
        """``Z`` of a non-variational model from :meth:`encoder_input`'s output (GraphNorm over these rows)."""
        if self.variational:
            raise ValueError("latent_from_input is for non-variational models (mu / logvar need the graph).")
        return self.dropout_encoder(torch.relu(self.graph_norm(pre)))

    def _latent(self, pre: torch.Tensor, graph) -> dict[str, torch.Tensor]:
        h = self.dropout_encoder(torch.relu(self.graph_norm(pre)))
        if not self.variational:
            return {"z": h}
        mu = self._gcn(self.gcn_mu, h, graph)
        logvar = self._gcn(self.gcn_logvar, h, graph).clamp(-min(self.log_clamp, 10.0), min(self.log_clamp, 10.0))
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return {"z": z, "z_mu": mu, "z_logvar": logvar}

    def _cell_index(self, x: torch.Tensor, cell_index: torch.Tensor | None) -> torch.Tensor:
        if cell_index is None:
            if x.shape[0] != self.n_cells:
                raise ValueError(
                    f"x has {x.shape[0]} rows but the model was built for n_cells={self.n_cells}; pass "
                    "cell_index (the rows' positions among the training cells) for a mini-batch."
                )
            cell_index = torch.arange(x.shape[0], device=x.device)
        return cell_index

    def _add_back(self, recon: torch.Tensor, x: torch.Tensor, cell_index: torch.Tensor | None) -> torch.Tensor:
        """``recon + BatchNorm1d(x) + cellnorm(x)`` (see the class docstring), fused (:class:`_AddBack`)."""
        cell_index = self._cell_index(x, cell_index)
        bn = self.gene_norm
        xf = x.float()
        momentum = 0.0
        if bn.training:
            if xf.shape[0] < 2:
                raise ValueError("the gene-wise BatchNorm of the add-back needs at least 2 rows in training mode.")
            bn.num_batches_tracked.add_(1)  # as BatchNorm1d.forward does
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        with torch.no_grad():  # the input takes no gradient: both standardizations are constants of the step
            # BatchNorm1d's normalization without its affine part (batch statistics in training, updating the
            # running ones exactly as the module does; the running ones in evaluation), and each row's own
            # standardization across genes (layer_norm is that, and far faster than var_mean on CPU)
            x_gene = F.batch_norm(xf, bn.running_mean, bn.running_var, None, None, bn.training, momentum, bn.eps)
            x_cell = F.layer_norm(xf, (xf.shape[1],), eps=1e-5)
        return _AddBack.apply(
            recon.float(), x_gene, x_cell, bn.weight, bn.bias, self.cell_scale(cell_index), self.cell_shift(cell_index)
        )

    # --------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor | None = None,
        cell_index: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the network.

        Parameters
        ----------
        x
            ``(n, n_genes)`` normalized expression (the model input and the MSE target).
        edge_index
            ``(2, n_edges)`` graph over the ``n`` rows (PyG convention).
        edge_weight
            ``(n_edges,)`` edge weights, or ``None`` for 1.
        cell_index
            ``(n,)`` positions of the rows among the ``n_cells`` training cells (for the per-cell add-back);
            ``None`` means ``arange(n)`` and requires ``n == n_cells``.
        rows
            Compute the heads, the decoder and the add-back only for these rows (the encoder always runs on
            the whole graph): a mini-batch of target cells whose ``(len(rows), n_genes)`` outputs cost memory
            and time in proportion to the batch. ``z`` is returned for every row. ``None``: all rows.

        Returns
        -------
        A dict with ``"recon"`` ``(n, n_genes)`` (decoder output after add-back), ``"mean"`` (normalized ZINB
        mean ``M``; multiply by size factors for counts), ``"pi_logits"``, ``"theta"``, ``"z"`` ``(n, latent)``
        and, when variational, ``"z_mu"``, ``"z_logvar"`` and ``"kl"`` (``(n,)``, the KL divergence of each
        cell's posterior from ``N(0, I)``, summed over latent dimensions).
        """
        graph = self.graph_operator(edge_index, edge_weight, x.shape[0])
        encoded = self.encode_graph(x, graph)
        z = encoded["z"]

        h = self.propagate_graph(z, graph) if self.propagate is not None else z
        if rows is not None:
            h, z_rows, x = h[rows], z[rows], x[rows]
            cell_index = rows if cell_index is None else cell_index[rows]
        else:
            z_rows = z
        out = self.decode(h, z_rows, x, cell_index)
        out.update(encoded)
        if self.variational:
            mu, logvar = out["z_mu"].float(), out["z_logvar"].float()
            if rows is not None:
                mu, logvar = mu[rows], logvar[rows]
            out["kl"] = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        return out

    def decode(
        self, h: torch.Tensor, z: torch.Tensor, x: torch.Tensor, cell_index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The heads, the decoder and the add-back for a set of rows.

        Parameters
        ----------
        h
            ``(m, latent)`` input of the heads: ``Â Z`` for ``heads="gcn"``, ``Z`` for ``"linear"``.
        z
            ``(m, latent)`` latent of the same rows (the decoder's input when ``decoder_input="latent"``).
        x
            ``(m, n_genes)`` model input of the same rows (the add-back).
        cell_index
            ``(m,)`` positions of the rows among the training cells (see :meth:`forward`).

        Returns
        -------
        ``{"recon", "mean", "pi_logits", "theta"}``, each ``(m, n_genes)``, plus ``"heads"`` (the
        ``(m, 3 · n_genes)`` float32 head output ``[log M | Π | log Θ]`` before clamping, which the loss uses) and
        ``"log_clamp"`` (a float). ``"mean"`` and ``"theta"`` are computed from ``"heads"`` when first read, so a
        training step that does not read them does not pay for them.
        """
        raw = self.zinb_heads(h).float()
        out = _HeadOutputs(heads=raw, log_clamp=self.log_clamp, pi_logits=raw[:, self.n_genes : 2 * self.n_genes])
        if self.training and not self.train_decoder:
            return out
        recon = self.decoder(out["mean"] if self.decoder_input == "mean" else z).float()
        if self.add_back:
            recon = self._add_back(recon, x, cell_index)
        out["recon"] = recon
        return out

    def loss(
        self,
        out: dict[str, torch.Tensor],
        x: torch.Tensor,
        counts: torch.Tensor | None,
        size_factors: torch.Tensor | None,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        """:func:`scvgae_loss` on this model's output (same arguments)."""
        return scvgae_loss(out, x, counts, size_factors, **kwargs)


def _masked_zinb(counts, mean, theta, pi_logits, mask):
    return masked_mean(zinb_nll(counts, mean, theta, pi_logits, reduction="none"), mask)


def scvgae_loss(
    out: dict[str, torch.Tensor],
    x: torch.Tensor,
    counts: torch.Tensor | None,
    size_factors: torch.Tensor | None,
    *,
    alpha: float = 0.05,
    kl_weight: float = 1.0,
    recon_mask: torch.Tensor | None = None,
    zinb_mask: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
    hidden_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    r"""Compute the scVGAE objective ``alpha · MSE + (1 - alpha) · ZINB-NLL + kl_weight · KL`` (mean-reduced).

    - ``recon``: mean squared error of ``out["recon"]`` against ``x`` (normalized scale).
    - ``zinb``: ZINB negative log-likelihood of the raw ``counts`` given mean ``size_factors · out["mean"]``,
      ``out["theta"]`` and ``out["pi_logits"]``, averaged over entries (the published code's swapped
      arguments, rounding and normalized-scale target are deliberately not reproduced).
    - ``kl`` (variational models): the per-cell KL of :class:`SCVGAE`, averaged over cells and divided by
      ``n_genes``, so that with ``alpha=0`` and ``kl_weight=1`` the objective is the negative ELBO per matrix
      entry.
    - ``masked`` (with ``hidden``): mean squared error of ``out["recon"]`` against ``x`` over the ``hidden``
      entries, weighted by ``hidden_weight`` (self-supervised masking: the values hidden from the input).

    Without ``recon_mask`` / ``zinb_mask`` the two squared-error terms and the ZINB term are computed by the
    fused functions :func:`~scvgae_sc.nn.squared_errors` and :func:`~scvgae_sc.nn.zinb_nll_heads` (same values,
    closed-form gradients, far fewer full-size tensors).

    Parameters
    ----------
    out
        Output of :meth:`SCVGAE.forward` (possibly sliced to a subset of rows).
    x
        ``(n, n_genes)`` reconstruction target (the normalized input).
    counts
        ``(n, n_genes)`` raw counts; may be ``None`` when ``alpha == 1``.
    size_factors
        ``(n,)`` or ``(n, 1)`` per-cell size factors (library size / median library size); ``None`` means 1.
    alpha
        Weight of the MSE term; ``1 - alpha`` weighs the ZINB term. ``alpha=1`` turns ZINB off,
        ``alpha=0`` turns the reconstruction off (ablations). A term with weight 0 is not computed.
    kl_weight
        Weight of the KL term (variational models only); 0 turns it off.
    recon_mask, zinb_mask, kl_mask
        Boolean or weight masks broadcastable to ``(n, n_genes)`` (``kl_mask`` to ``(n,)``) selecting the
        entries each term is averaged over — e.g. the entries hidden from the input in self-supervised
        masking, or ``(n, 1)`` for the training cells. ``None`` averages over everything.
    hidden, hidden_weight
        Boolean ``(n, n_genes)`` mask of entries hidden from the model's input, and the weight of their squared
        error (the ``"masked"`` term); ``None`` or a weight of 0 leaves the term out.

    Returns
    -------
    A dict of scalar tensors: ``"loss"`` and the unweighted components that were computed among
    ``"recon"``, ``"zinb"``, ``"kl"`` and ``"masked"``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    components: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=out["heads"].device if "heads" in out else out["recon"].device)
    use_hidden = hidden is not None and hidden_weight > 0
    if recon_mask is None and (alpha > 0 or use_hidden):
        weighted, mean_all, mean_hidden = squared_errors(
            out["recon"], x, hidden if use_hidden else None, weight=alpha, subset_weight=hidden_weight
        )
        total = total + weighted
        if alpha > 0:
            components["recon"] = mean_all
        if use_hidden:
            components["masked"] = mean_hidden
    elif alpha > 0 or use_hidden:
        se = (out["recon"].float() - x.float()).pow(2)
        if alpha > 0:
            components["recon"] = masked_mean(se, recon_mask)
            total = total + alpha * components["recon"]
        if use_hidden:
            components["masked"] = masked_mean(se, hidden)
            total = total + hidden_weight * components["masked"]
    if alpha < 1:
        if counts is None:
            raise ValueError("counts are needed for the ZINB term; pass them, or alpha=1 to turn ZINB off.")
        if zinb_mask is None and "heads" in out:
            # fused: loss and analytic gradient from the raw heads, weighted here so that its backward needs no
            # copy (see zinb_nll_heads)
            weighted = zinb_nll_heads(out["heads"], counts, size_factors, log_clamp=out["log_clamp"], weight=1 - alpha)
            components["zinb"] = weighted.detach() / (1 - alpha)
            total = total + weighted
        else:
            mean = out["mean"].float()
            if size_factors is not None:
                sf = size_factors.float()
                mean = mean * (sf.unsqueeze(1) if sf.dim() == 1 else sf)
            args = (counts.float(), mean, out["theta"].float(), out["pi_logits"].float(), zinb_mask)
            if torch.is_grad_enabled() and mean.requires_grad and mean.numel() > CHECKPOINT_MIN_ENTRIES:
                # recompute the elementwise terms in backward instead of keeping ~10 (n × n_genes) intermediates
                # (large batches only: on small ones the memory is small and recomputing costs time)
                components["zinb"] = checkpoint(_masked_zinb, *args, use_reentrant=False)
            else:
                components["zinb"] = _masked_zinb(*args)
            total = total + (1 - alpha) * components["zinb"]
    if "kl" in out and kl_weight > 0:
        components["kl"] = masked_mean(out["kl"].float(), kl_mask) / x.shape[1]
        total = total + kl_weight * components["kl"]
    return {"loss": total, **components}
