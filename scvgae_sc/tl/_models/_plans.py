"""Training plans: one optimizer epoch's steps of each method, with the loss taken from the module.

A plan is the ``train_step(module, epoch)`` (and ``val_step(module)``) of :class:`~scvgae_sc.nn.Trainer`, as
scvi-tools' ``TrainingPlan.training_step`` calls ``module.loss``: the plan chooses the cells and the entries hidden
from the input, the module computes its loss. Tensors only (a SciPy matrix may be read once, when a plan is built).
scVGAE's plan reads its data through a sampler (:mod:`scvgae_sc.tl._models._scvgae_samplers`), which draws the
masks and batches (and the fresh mask the fill's weights are fitted on) of the whole graph or of cell subgraphs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from ._scvgae_samplers import SCVGAESampler


class LayerMolecules:
    """How scVGAE's molecules objective turns one part of a molecule split into model input.

    The part (counts of a share ``fraction`` of each count's molecules) is normalized as
    :func:`~scvgae_sc.pp.normalize` made the input layer — ``method`` at the layer's row target ``target`` (so it has
    the layer's scale) — then transformed as the model input (``transform``). The held-out part is the ZINB target,
    with the size factors times ``1 - fraction``.

    Parameters
    ----------
    fraction
        Share of each count's molecules the network reads.
    method
        The input layer's normalization: ``"sqrt"``, ``"log1p"`` or ``"total"``.
    target
        The row target of that normalization (see :meth:`from_layer`).
    transform
        ``"log1p"`` when the model reads ``log1p`` of the layer, else ``"none"``.
    """

    def __init__(self, fraction: float, method: str, target: float, transform: str) -> None:
        self.fraction, self.method, self.target, self.transform = float(fraction), method, float(target), transform

    @classmethod
    def from_layer(cls, X, method: str, *, fraction: float, transform: str) -> LayerMolecules:
        """The settings for input layer ``X`` written by ``pp.normalize(method=method)``: its row target read off it.

        Every cell with molecules was scaled to the same row sum (of the counts, or of their ``log1p`` for ``sqrt``),
        so the target is the median positive row sum of the layer taken back to that scale.
        """
        from scipy import sparse

        from ..._utils import median_positive

        Y = sparse.csr_matrix(X, dtype=np.float64) if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
        if method == "sqrt":
            Y = Y.power(2) if sparse.issparse(Y) else np.square(Y)
        elif method == "log1p":
            Y = Y.expm1() if sparse.issparse(Y) else np.expm1(Y)
        return cls(fraction, method, median_positive(np.asarray(Y.sum(axis=1)).ravel()), transform)

    def normalize(self, values: torch.Tensor, rows: torch.Tensor, n_cells: int) -> torch.Tensor:
        """In place: the non-zero counts ``values`` of a part, in cells ``rows``, → their model input values.

        Every step maps 0 to 0, so the non-zeros alone are normalized (row sums by ``index_add``) and the caller
        scatters them into the dense input.
        """
        import torch

        if self.method == "sqrt":
            values.log1p_()
        totals = torch.zeros(n_cells, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
        scale = torch.where(totals > 0, self.target / totals.clamp_min(1e-12), torch.zeros_like(totals))
        values.mul_(scale[rows])
        if self.method == "sqrt":
            values.sqrt_()
        elif self.method == "log1p":
            values.log1p_()
        if self.transform == "log1p":
            values.log1p_()
        return values


class SCVGAEPlan:
    """scVGAE's training step over a sampler: each epoch draws the model input (masked, or a molecule split), steps.

    One body for both data paths: the sampler
    (:class:`~scvgae_sc.tl._models._scvgae_samplers.SCVGAESampler`) draws the epoch's input and batches and runs the
    forward of a batch (the whole-graph encoder, or a cell subgraph with the latent history); the loss is the
    module's (:meth:`~scvgae_sc.nn.SCVGAE.loss`) on the batch's rows. Data-parallel: each rank trains on its share of
    every step's cells (the same draws on every rank).

    Parameters
    ----------
    model
        The :class:`~scvgae_sc.nn.SCVGAE` whose loss is used.
    sampler
        The data path.
    mask_rate
        Share of the observed entries hidden from the input each epoch (0: none).
    batch_size
        Cells per step (per rank).
    molecules
        The molecules objective (:class:`LayerMolecules`): each epoch the network reads one part of a fresh molecule
        split and the ZINB term scores the held-out part (Noise2Self for counts); ``None``: the counts themselves.
    loss_kwargs
        ``alpha``, ``kl_weight`` and ``hidden_weight`` of :meth:`~scvgae_sc.nn.SCVGAE.loss`.
    """

    def __init__(
        self,
        model: Any,
        sampler: SCVGAESampler,
        *,
        mask_rate: float,
        batch_size: int,
        molecules: LayerMolecules | None = None,
        **loss_kwargs: float,
    ) -> None:
        self.model, self.sampler = model, sampler
        self.mask_rate, self.batch_size, self.molecules = mask_rate, batch_size, molecules
        self.loss_kwargs = loss_kwargs

    def batch_loss(self, module, x_in, hidden, step, held_out=None) -> dict[str, torch.Tensor]:
        """The loss of one step's cells (``step=None``: all cells); ``held_out``: the molecules objective's target."""
        s = self.sampler
        out, rows = s.forward(module, x_in, step)
        x = s.take(s.x, rows)
        sf = None if s.size_factors is None else s.take(s.size_factors, rows)
        if held_out is not None:  # the molecules objective: the held-out part, at its share of the library
            counts, sf = s.take(held_out, rows), sf * (1.0 - self.molecules.fraction)
        else:
            counts = x if s.counts is None else s.take(s.counts, rows)
        hidden_rows = None if hidden is None else s.take(hidden, rows)
        return self.model.loss(out, x, counts, sf, hidden=hidden_rows, **self.loss_kwargs)

    def __call__(self, module, epoch: int):
        """The ``train_step`` of :class:`~scvgae_sc.nn.Trainer`: one loss, or one per batch."""
        held_out = None
        if self.molecules is not None:
            x_in, held_out = self.sampler.split_molecules(module, epoch, self.molecules)
            hidden = None
        else:
            hidden, x_in = self.sampler.epoch_input(module, epoch, self.mask_rate)
        steps = self.sampler.steps(self.batch_size)
        if steps is None:
            return self.batch_loss(module, x_in, hidden, None, held_out)
        return (self.batch_loss(module, x_in, hidden, step, held_out) for step in steps)


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
