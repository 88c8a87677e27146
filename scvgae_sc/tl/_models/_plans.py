"""Training plans: one optimizer epoch's steps of each method, with the loss taken from the module.

A plan is the ``train_step(module, epoch)`` (and ``val_step(module)``) of :class:`~scvgae_sc.nn.Trainer`, as
scvi-tools' ``TrainingPlan.training_step`` calls ``module.loss``: the plan chooses the cells and the entries hidden
from the input, the module computes its loss. Tensors only (a SciPy matrix may be read once, when a plan is built).
Each plan reads its data through a sampler (:mod:`scvgae_sc.tl._models._scvgae_samplers`,
:mod:`scvgae_sc.tl._models._gnnimpute_samplers`), which draws the masks, molecule splits and batches (and the fresh
mask the fill's weights are fitted on) of the whole graph or of cell subgraphs and runs their forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from ._gnnimpute_samplers import CellSet, Draw, GNNImputeSampler
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

        def back(Y):  # the layer's values on the scale its rows were scaled on
            return np.square(Y) if method == "sqrt" else np.expm1(Y) if method == "log1p" else Y

        if sparse.issparse(X):
            Y = sparse.csr_matrix(X, dtype=np.float64)
            Y.data = back(Y.data)
            totals = np.asarray(Y.sum(axis=1)).ravel()
        else:  # row blocks: no float64 copy of a dense layer
            totals = np.concatenate(
                [back(np.asarray(X[i : i + 4096], dtype=np.float64)).sum(axis=1) for i in range(0, X.shape[0], 4096)]
            )
        return cls(fraction, method, median_positive(totals), transform)

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


class GNNImputePlan:
    """GNNImpute's training and validation steps over a sampler: each epoch draws the model input, then steps.

    One body for both data paths, as :class:`SCVGAEPlan`: the sampler
    (:class:`~scvgae_sc.tl._models._gnnimpute_samplers.GNNImputeSampler`) draws the epoch's input (entries hidden
    from it, or a molecule split) and batches and runs the forward of a step (the whole graph, or a cell subgraph
    with the first-layer history); the loss is the module's
    (:meth:`~scvgae_sc.nn.GNNImputeModule.imputation_loss`). It is the MSE of the decoder output times the size
    factor against the input layer times the same factor over the step's training cells, plus ``mask_weight`` × the
    same over their observed entries hidden from the input (self-supervised masking); with the molecules objective,
    the MSE of the held-out molecules. The validation step scores the validation cells of an exact pass over all
    cells, with the input fixed when training began (a mask, so early stopping watches imputation too, or a molecule
    split). Data-parallel: each rank trains on its share of every step's cells (the same draws on every rank).

    Parameters
    ----------
    model
        The :class:`~scvgae_sc.nn.GNNImputeModule` whose loss is used.
    sampler
        The data path.
    mask_weight
        Weight of the hidden entries' term.
    batch_size
        Cells per step (per rank) where the sampler batches.
    """

    def __init__(self, model: Any, sampler: GNNImputeSampler, *, mask_weight: float, batch_size: int) -> None:
        self.model, self.sampler = model, sampler
        self.mask_weight, self.batch_size = float(mask_weight), int(batch_size)

    def loss(self, out: dict[str, torch.Tensor], rows, draw: Draw, cells: CellSet) -> dict[str, torch.Tensor]:
        """The loss of ``cells`` in the output ``out`` of ``rows`` (``None``: all cells) for the input ``draw``."""
        s = self.sampler
        sel = s.select(cells, rows)
        if sel is None:  # none of these cells in this batch: nothing to learn from, keep the step
            return {"loss": out["recon"].sum() * 0, "mse": out["recon"].sum() * 0}
        truth = s.truth(draw, rows, sel)
        if draw.hidden is None:
            return self.model.imputation_loss(out, sel, truth)
        hidden, hidden_truth = s.hidden_entries(draw, cells, rows, sel)
        return self.model.imputation_loss(out, sel, truth, hidden, hidden_truth, hidden_weight=self.mask_weight)

    def batch_loss(self, module, draw: Draw, step) -> dict[str, torch.Tensor]:
        """The loss of one step's training cells (``step=None``: all cells)."""
        out, rows = self.sampler.forward(module, draw.x_in, step, draw.factors)
        return self.loss(out, rows, draw, self.sampler.train)

    def __call__(self, module, epoch: int):
        """The ``train_step`` of :class:`~scvgae_sc.nn.Trainer`: one loss, or one per batch."""
        draw = self.sampler.draw(module, epoch)
        steps = self.sampler.steps(self.batch_size)
        if steps is None:
            return self.batch_loss(module, draw, None)
        return (self.batch_loss(module, draw, step) for step in steps)

    def val_step(self, module) -> dict[str, torch.Tensor]:
        """The ``val_step`` of :class:`~scvgae_sc.nn.Trainer`: the validation cells' loss in an exact pass."""
        draw = self.sampler.validation_draw()
        out = self.sampler.forward_all(module, draw.x_in, draw.factors)
        return self.loss(out, None, draw, self.sampler.val)
