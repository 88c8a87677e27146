"""Training plans: one optimizer epoch's steps of each method, with the loss taken from the module.

A plan is the ``train_step(module, epoch)`` (and ``val_step(module)``) of :class:`~scvgae_sc.nn.Trainer`, as
scvi-tools' ``TrainingPlan.training_step`` calls ``module.loss``: the plan chooses the cells and the entries hidden
from the input, the module computes its loss. The plans also draw the fresh masks that the fill's weights are
fitted on. Tensors only (a SciPy matrix may be read once, when a plan is built), except :func:`hide_entries`, the
host-side masks of training on cell subgraphs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._common import split_batches

if TYPE_CHECKING:
    import torch


def hide_observed(x, observed_flat, mask_rate: float, gen):
    """``(hidden, x_in)``: a random ``mask_rate`` of the observed entries (flat indices ``observed_flat``) hidden.

    Random numbers are drawn for the observed entries only (a fifth of the matrix on typical data; the CPU
    generator is sequential, so this is what an epoch's mask costs).
    """
    import torch

    pick = observed_flat[torch.rand(observed_flat.shape, generator=gen, device=x.device) < mask_rate]
    hidden = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    hidden.view(-1)[pick] = True
    x_in = x.clone()
    x_in.view(-1)[pick] = 0.0
    return hidden, x_in


#: Rows drawn at a time by :func:`hide_entries` (keeps the random draws' temporary small).
_MASK_ROWS = 4096


def hide_entries(x: np.ndarray, out: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Copy ``x`` into ``out`` with each non-zero hidden (set to 0) with probability ``rate``; return the mask.

    The host-side (NumPy) counterpart of :func:`hide_observed`, for data kept on the host (cell subgraphs).
    """
    hidden = np.empty(x.shape, dtype=bool)
    for start in range(0, x.shape[0], _MASK_ROWS):
        sl = slice(start, start + _MASK_ROWS)
        h = rng.random(x[sl].shape, dtype=np.float32) < rate
        h &= x[sl] > 0
        hidden[sl] = h
        np.copyto(out[sl], x[sl])
        out[sl][h] = 0.0
    return hidden


class SCVGAEPlan:
    """scVGAE on the whole graph: each epoch hides a fresh ``mask_rate`` of the observed entries, then steps.

    The encoder propagates over the whole graph in every step; the heads, decoder and loss
    (:meth:`~scvgae_sc.nn.SCVGAE.loss`) run on a random batch of cells. Data-parallel: each rank trains on its
    share of every epoch's batches (the same permutation on every rank).

    Parameters
    ----------
    model
        The :class:`~scvgae_sc.nn.SCVGAE` whose loss is used.
    x, counts, sf
        Model input, ZINB target and size factors (``None``: 1) of every cell, on the device.
    edge_index, edge_weight
        The graph.
    gen
        Random generator of the masks and batches.
    loss_kwargs
        ``alpha``, ``kl_weight`` and ``hidden_weight`` of :meth:`~scvgae_sc.nn.SCVGAE.loss`.
    """

    def __init__(
        self,
        model: Any,
        x: torch.Tensor,
        counts: torch.Tensor,
        sf: torch.Tensor | None,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        *,
        mask_rate: float,
        batch_size: int,
        gen: torch.Generator,
        world_size: int = 1,
        rank: int = 0,
        **loss_kwargs: float,
    ) -> None:
        import torch

        self.model, self.x, self.counts, self.sf = model, x, counts, sf
        self.edge_index, self.edge_weight = edge_index, edge_weight
        self.mask_rate, self.batch_size, self.gen = mask_rate, batch_size, gen
        self.world_size, self.rank = world_size, rank
        self.loss_kwargs = loss_kwargs
        #: flat indices of the observed non-zeros
        self.observed_flat = torch.nonzero(x.reshape(-1) > 0).squeeze(1)

    def hide(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden, x_in)``: a fresh ``mask_rate`` of the observed entries hidden (:func:`hide_observed`)."""
        return hide_observed(self.x, self.observed_flat, self.mask_rate, self.gen)

    def batch_loss(self, module, x_in, hidden, rows) -> dict[str, torch.Tensor]:
        """The loss of one batch of cells (``rows=None``: all)."""
        out = module(x_in, self.edge_index, self.edge_weight, rows=rows)
        x, c, sf = self.x, self.counts, self.sf
        xb = x if rows is None else x[rows]
        cb = c if rows is None else c[rows]
        sfb = sf if (sf is None or rows is None) else sf[rows]
        hidden_rows = hidden if (hidden is None or rows is None) else hidden[rows]
        return self.model.loss(out, xb, cb, sfb, hidden=hidden_rows, **self.loss_kwargs)

    def __call__(self, module, epoch: int):
        """The ``train_step`` of :class:`~scvgae_sc.nn.Trainer`: one loss, or one per batch."""
        import torch

        if self.mask_rate > 0:
            hidden, x_in = self.hide()
        else:
            hidden, x_in = None, self.x
        n_cells = self.x.shape[0]
        if self.batch_size >= n_cells and self.world_size == 1:
            return self.batch_loss(module, x_in, hidden, None)
        order = torch.randperm(n_cells, generator=self.gen, device=self.x.device)  # the same on every rank
        batches = split_batches(order, self.batch_size, world_size=self.world_size, rank=self.rank)
        return (self.batch_loss(module, x_in, hidden, rows) for rows in batches)


class MoleculeSplit:
    """Each epoch's molecule-wise split of the counts: the network reads one part, its loss scores the other.

    Every count is split binomially: a share ``fraction`` of its molecules goes to the input part, the rest is held
    out. The input part is normalized as the input layer (divided by the size factor and by ``fraction``, so it has
    the layer's scale), then ``log1p`` and z-scored with the layer's statistics; the held-out part is the training
    target on the count scale, fit by the decoder output times ``size_factor × (1 − fraction)``. The two parts are
    independent draws of the same expression, so the network cannot gain by copying its input (Noise2Self for
    counts, as molecular cross-validation scores a denoiser).

    Parameters
    ----------
    counts
        Counts (cells × genes): a SciPy sparse matrix, or a dense tensor on the device; only their non-zeros are
        kept.
    sf
        Size factors.
    mean, std
        Per-gene statistics of the ``log1p`` input layer (the z-score of the model input).
    fraction
        Share of each count's molecules given to the network.
    gen
        Random generator.
    """

    def __init__(self, counts, sf, mean, std, *, fraction: float, gen) -> None:
        import torch
        from scipy import sparse

        self.shape = tuple(counts.shape)
        if sparse.issparse(counts):  # the non-zeros in row-major order, as from the dense matrix
            C = sparse.csr_matrix(counts, dtype=np.float32)
            C.eliminate_zeros()
            C.sort_indices()
            rows = np.repeat(np.arange(C.shape[0], dtype=np.int64), np.diff(C.indptr))
            flat = rows * C.shape[1] + C.indices.astype(np.int64)
            self.observed = torch.from_numpy(flat).to(sf.device)
            self.values = torch.from_numpy(C.data).to(sf.device)
        else:
            self.observed = torch.nonzero(counts.reshape(-1) > 0).squeeze(1)
            self.values = counts.reshape(-1)[self.observed].float()
        self.sf, self.mean, self.std = sf, mean, std
        self.fraction, self.gen = float(fraction), gen

    def draw(self):
        """``(x_in, held_out, factors)``: the model input, the held-out counts and the factors of the decoder output."""
        import torch

        kept = torch.binomial(self.values, torch.full_like(self.values, self.fraction), generator=self.gen)
        part = torch.zeros(self.shape, dtype=torch.float32, device=self.values.device)
        part.view(-1)[self.observed] = kept
        held_out = torch.zeros_like(part)
        held_out.view(-1)[self.observed] = self.values - kept
        part.div_(self.sf.unsqueeze(1) * self.fraction).log1p_().sub_(self.mean).div_(self.std)
        return part, held_out, self.sf * (1.0 - self.fraction)


class GNNImputePlan:
    """GNNImpute's training and validation steps (training, validation and test cells fixed, masks per epoch).

    The loss is the MSE of the decoder output times the size factor against the input layer times the same factor
    over the training cells' entries, plus ``mask_weight`` × the same over the observed entries hidden from the
    input (self-supervised masking). The validation step scores a fixed mask of the validation cells, so early
    stopping watches imputation too. Losses index the few entries they need instead of building
    ``n_cells × n_genes`` masks.

    Parameters
    ----------
    model
        The :class:`~scvgae_sc.nn.GNNImputeModule` whose loss is used.
    x
        Model input (``log1p`` of the layer, z-scored per gene) on the device.
    zero_z
        What a zero becomes in ``x`` (per gene).
    target
        The input layer (dense) on the device.
    sf
        Size factors.
    edge_index
        The graph (or its :class:`~scvgae_sc.nn.AttentionGraph`) for whole-graph passes.
    graph
        The adjacency (SciPy) for chunked passes (``batching="subgraph"``).
    cells
        Boolean masks of training and validation cells.
    molecules
        With a :class:`MoleculeSplit`, the network reads a fresh split of the counts each epoch and is scored on the
        held-out molecules (``objective="molecules"``; no masking), validation on one fixed split.
    """

    def __init__(
        self,
        model,
        x,
        zero_z,
        target,
        sf,
        edge_index,
        graph,
        cells: tuple[Any, Any],
        *,
        mask_rate: float,
        mask_weight: float,
        gen,
        batching: str,
        chunk: int,
        molecules: MoleculeSplit | None = None,
    ) -> None:
        import torch

        dev = x.device
        self.model = model
        self.molecules = molecules
        self.x, self.zero_z, self.target, self.sf = x, zero_z, target, sf
        self.edge_index, self.graph, self.gen = edge_index, graph, gen
        self.mask_rate, self.mask_weight = mask_rate, mask_weight
        self.use_mask = mask_rate > 0 and mask_weight > 0
        self.batching, self.chunk = batching, chunk
        self.n_genes = x.shape[1]
        train_cells, val_cells = cells
        self.train_rows, self.val_rows = (torch.from_numpy(np.flatnonzero(m)).to(dev) for m in cells)
        # all cells train (the molecules objective's default): a slice, so that losses take views, not row copies
        self.train_index = slice(None) if bool(train_cells.all()) else self.train_rows
        # the layer on the count scale (for a "total" layer, the counts): what decoder output × size factor is fit to
        # (the molecules objective fits held-out molecules instead)
        self.train_target = self.val_target = None
        if molecules is None:
            rows = (self.train_rows, self.val_rows)
            self.train_target, self.val_target = (target[r] * sf[r].unsqueeze(1) for r in rows)
        self.observed = torch.nonzero(target.reshape(-1) > 0).squeeze(1)  # flat indices of the observed non-zeros
        cell_of = self.observed // self.n_genes
        self.in_train = torch.from_numpy(train_cells).to(dev)[cell_of]
        self.in_val = torch.from_numpy(val_cells).to(dev)[cell_of]
        del cell_of
        self.val_hidden = self.draw_mask() if self.use_mask else None
        self.train_cells = torch.from_numpy(train_cells).to(dev)
        self.val_split = molecules.draw() if molecules is not None and val_cells.any() else None

    def draw_mask(self):
        """Which observed non-zeros to hide (a boolean vector over the observed entries)."""
        import torch

        return torch.rand(self.observed.shape, generator=self.gen, device=self.x.device) < self.mask_rate

    def corrupt(self, hidden):
        """The input with the ``hidden`` entries set to what a zero becomes."""
        if hidden is None:
            return self.x
        flat = self.observed[hidden]
        x_in = self.x.clone()
        x_in.view(-1)[flat] = self.zero_z[flat % self.n_genes]
        return x_in

    def losses(self, out, rows, rows_target, hidden_here) -> dict[str, Any]:
        """:meth:`~scvgae_sc.nn.GNNImputeModule.imputation_loss` of ``rows`` and the hidden entries ``hidden_here``.

        ``hidden_here``: a boolean vector over the observed entries (``None``: no masking term).
        """
        if hidden_here is None:
            return self.model.imputation_loss(out, rows, rows_target)
        flat = self.observed[hidden_here]
        truth = self.target.reshape(-1)[flat] * self.sf[flat // self.n_genes]
        return self.model.imputation_loss(out, rows, rows_target, flat, truth, hidden_weight=self.mask_weight)

    def forward(self, module, x_in, factors=None):
        """The whole-graph forward (chunked with ``batching="subgraph"``: attention messages per chunk only)."""
        from ._gnnimpute_subgraph import graph_forward

        graph, batching = self.graph, self.batching
        return graph_forward(module, x_in, self.edge_index, graph, factors, batching=batching, chunk=self.chunk)

    def __call__(self, module, epoch: int):
        """The ``train_step`` of :class:`~scvgae_sc.nn.Trainer` (whole graph; see :meth:`train_step`)."""
        if self.molecules is not None:
            x_in, held_out, factors = self.molecules.draw()
            out = module(x_in, self.edge_index, factors)
            return self.model.imputation_loss(out, self.train_index, held_out[self.train_index])
        hidden = self.draw_mask() if self.use_mask else None
        out = module(self.corrupt(hidden), self.edge_index, self.sf)
        return self.losses(out, self.train_rows, self.train_target, hidden & self.in_train if self.use_mask else None)

    def train_step(self):
        """The ``train_step`` of this plan's ``batching``: itself, or one loss per random batch of cells."""
        if self.batching != "subgraph":
            return self
        from ._gnnimpute_subgraph import subgraph_train_step

        return subgraph_train_step(
            self.model,
            self.graph,
            self.x,
            self.target,
            self.sf,
            train_cells=self.train_cells,
            observed=self.observed,
            draw_mask=self.draw_mask if self.use_mask else None,
            corrupt=self.corrupt,
            mask_weight=self.mask_weight,
            batch_size=self.chunk,
            gen=self.gen,
            molecules=self.molecules,
        )

    def val_step(self, module):
        """The ``val_step`` of :class:`~scvgae_sc.nn.Trainer`: the loss on the validation cells, fixed mask or split."""
        if self.val_split is not None:
            x_in, held_out, factors = self.val_split
            out = self.forward(module, x_in, factors)
            return self.model.imputation_loss(out, self.val_rows, held_out[self.val_rows])
        out = self.forward(module, self.corrupt(self.val_hidden), self.sf)
        hidden = self.val_hidden & self.in_val if self.use_mask else None
        return self.losses(out, self.val_rows, self.val_target, hidden)
