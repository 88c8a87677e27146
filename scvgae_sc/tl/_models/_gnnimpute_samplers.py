"""GNNImpute's data paths: one sampler interface, over the whole graph or over cell subgraphs (AnnData-free).

Training (:class:`~scvgae_sc.tl._models._plans.GNNImputePlan`: one training step, one validation step), prediction
(:func:`~scvgae_sc.tl._models._gnnimpute.predict_gnnimpute`) and the fill weights' fit
(:func:`~scvgae_sc.tl._models._gnnimpute.fit_fill`) are written once against :class:`GNNImputeSampler`, as scVGAE's
are against :class:`~scvgae_sc.tl._models._scvgae_samplers.SCVGAESampler`. A sampler owns the model input and the
training targets (on the device in both paths), the random draws — the entries hidden from the input, the molecule
splits and the batches, all from one generator, in the order of earlier versions — and the forward arithmetic of a
training step and of an exact pass over all cells. :func:`gnnimpute_sampler` builds the one that ``batching``
names:

:class:`GNNImputeWholeGraphSampler` (``batching="full"``)
    One optimizer step per epoch over the whole graph (the published training); every pass runs both GAT layers
    over all edges at once (sparse attention sums, :meth:`~scvgae_sc.nn.GNNImputeModule.attention_graph`).
:class:`GNNImputeSubgraphSampler` (``batching="subgraph"``)
    Each epoch visits all cells in random batches: a batch's first GAT layer exact from its cells and their
    neighbours, its second reading the neighbours' first-layer output from a history buffer (historical embeddings,
    as GNNAutoScale; see :mod:`scvgae_sc.tl._subgraph`). Exact passes (validation, the fill's fit, prediction) run
    in chunks of cells (:func:`forward_chunked`), so the attention messages (edges × heads × hidden, the largest
    object of a whole-graph pass) exist for one chunk at a time. Memory: the input and target (dense, on the device),
    each epoch's corrupted input and its hidden entries as a dense boolean mask, the history
    (``n_cells × hidden``) and one batch or chunk of activations (``dense_copies_subgraph`` of
    :class:`~scvgae_sc.tl.GNNImputeModel`).

Losses index the entries they need: over all cells by flat indices of the hidden observed entries (no
``n_cells × n_genes`` mask), over a batch of the subgraph path by the epoch's dense mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy import sparse

from .._common import edge_tensors, epoch_steps, evaluating
from .._subgraph import SubgraphSampler, write_history

if TYPE_CHECKING:
    import torch

#: Rows of an output: a tensor of this rank's cells of a step, or ``None`` for all cells.
Rows = Any


class Draw(NamedTuple):
    """One draw of the model input and of what the loss scores.

    Attributes
    ----------
    x_in
        What the network reads (the input with entries hidden, or one part of a molecule split).
    factors
        Size factors the decoder output is multiplied by.
    hidden
        Which observed non-zeros are hidden from ``x_in`` (a boolean vector over :attr:`GNNImputeSampler.observed`),
        or ``None``.
    held_out
        The molecules objective's target (the held-out molecules, dense); ``None``: the input layer × ``factors``.
    hidden_rows
        ``hidden`` as a dense ``n_cells × n_genes`` mask, where the sampler's batches read it (subgraphs).
    """

    x_in: Any
    factors: Any
    hidden: Any = None
    held_out: Any = None
    hidden_rows: Any = None


class CellSet(NamedTuple):
    """Training or validation cells, indexed as the losses read them.

    Attributes
    ----------
    mask
        Boolean ``(n_cells,)`` tensor.
    index
        Their rows of an output of all cells: ``slice(None)`` when all cells are in the set (a view, not a copy),
        else their indices in ascending order.
    observed
        Which observed non-zeros (a boolean vector over :attr:`GNNImputeSampler.observed`) lie in these cells.
    """

    mask: Any
    index: Any
    observed: Any


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


class Training(NamedTuple):
    """What training reads besides the input and the target (see :class:`GNNImputeSampler`).

    Attributes
    ----------
    zero_z
        What a zero becomes in the model input (per gene): the value of a hidden entry.
    size_factors
        The cells' size factors (a tensor on the device).
    cells
        Boolean masks (NumPy) of the training and the validation cells.
    mask_rate
        Share of the observed non-zeros hidden from the input each epoch (0: no masking).
    gen
        The generator of every draw (the masks, the molecule splits, the batches).
    molecules
        The molecules objective's splits (drawn from ``gen``), or ``None``.
    """

    zero_z: Any
    size_factors: Any
    cells: tuple[np.ndarray, np.ndarray]
    mask_rate: float
    gen: Any
    molecules: MoleculeSplit | None = None


class GNNImputeSampler(ABC):
    """The data of one GNNImpute model, its random draws and how a step or all cells are computed.

    Parameters
    ----------
    x
        The model input (``log1p`` of the layer, z-scored per gene; a dense tensor on the device).
    target
        The input layer (a dense tensor on the device): what the decoder output is fit to, and the fill's values.
    graph
        The cell graph (SciPy), row ``i`` listing what cell ``i`` aggregates.
    chunk
        Cells per batch of training (subgraphs) and per block of exact passes and of the posterior.
    training
        What training reads (``None`` for prediction only). With masking, the validation cells' mask is drawn here,
        once, and so is the validation cells' molecule split when the molecules objective stops early. The mask is
        drawn whenever masking is configured, also under the molecules objective, which does not read it: that
        keeps the random stream, and so the results, those of earlier versions.
    """

    def __init__(self, x, target, graph: sparse.spmatrix, *, chunk: int, training: Training | None = None) -> None:
        self.x, self.target, self.graph, self.chunk = x, target, graph, int(chunk)
        self.device = x.device
        self.n_genes = x.shape[1]
        self.molecules = self._val_hidden = self._val_split = None
        if training is not None:
            self._set_training(training)

    def _set_training(self, training: Training) -> None:
        import torch

        self.zero_z, self.sf, self.gen = training.zero_z, training.size_factors, training.gen
        self.mask_rate, self.molecules = float(training.mask_rate), training.molecules
        self.observed = torch.nonzero(self.target.reshape(-1) > 0).squeeze(1)  # flat indices of observed non-zeros
        self.train, self.val = (self._cell_set(cells) for cells in training.cells)
        self._val_hidden = self.draw_mask() if self.mask_rate > 0 else None
        val_cells = training.cells[1]
        self._val_split = self.molecules.draw() if self.molecules is not None and val_cells.any() else None

    def _cell_set(self, cells: np.ndarray) -> CellSet:
        import torch

        rows = torch.from_numpy(np.flatnonzero(cells)).to(self.device)
        mask = torch.from_numpy(cells).to(self.device)
        # all cells (the molecules objective's default): a slice, so that losses take views, not row copies
        index = slice(None) if bool(cells.all()) else rows
        return CellSet(mask, index, mask[self.observed // self.n_genes])

    # ------------------------------------------------------------------ draws
    def draw_mask(self):
        """Which observed non-zeros to hide (a boolean vector over :attr:`observed`), from this sampler's generator."""
        import torch

        return torch.rand(self.observed.shape, generator=self.gen, device=self.device) < self.mask_rate

    def corrupt(self, hidden):
        """The input with the ``hidden`` entries set to what a zero becomes (the input itself for ``None``)."""
        if hidden is None:
            return self.x
        flat = self.observed[hidden]
        x_in = self.x.clone()
        x_in.view(-1)[flat] = self.zero_z[flat % self.n_genes]
        return x_in

    def draw(self, module, epoch: int) -> Draw:
        """A training epoch's input: a fresh molecule split, or a fresh mask (none when ``mask_rate`` is 0)."""
        if self.molecules is not None:
            x_in, held_out, factors = self.molecules.draw()
            return Draw(x_in, factors, held_out=held_out)
        hidden = self.draw_mask() if self.mask_rate > 0 else None
        return Draw(self.corrupt(hidden), self.sf, hidden)

    def validation_draw(self) -> Draw:
        """The validation cells' fixed input: the molecule split or the mask drawn when training began."""
        if self._val_split is not None:
            x_in, held_out, factors = self._val_split
            return Draw(x_in, factors, held_out=held_out)
        return Draw(self.corrupt(self._val_hidden), self.sf, self._val_hidden)

    @abstractmethod
    def steps(self, batch_size: int) -> list[tuple[torch.Tensor, ...]] | None:
        """An epoch's batches (each step's cells of every rank); ``None`` for one step over all cells."""

    def end_training(self) -> None:
        """Release what only training reads (the validation split)."""
        self._val_split = None

    # ---------------------------------------------------------------- forward
    @abstractmethod
    def forward(self, module, x_in, step, factors) -> tuple[dict[str, torch.Tensor], Rows]:
        """``(out, rows)``: the training forward of this rank's cells of ``step`` (``None``: all cells)."""

    @abstractmethod
    def forward_all(self, module, x_in, factors=None) -> dict[str, torch.Tensor]:
        """The exact forward of every cell in the module's current mode (``{"recon", "z"}``)."""

    def evaluate(self, module) -> dict[str, torch.Tensor]:
        """The network's output on :attr:`x` in eval mode, without gradients (``recon`` on the input layer's scale)."""
        with evaluating(module):
            return self.forward_all(module, self.x)

    # ---------------------------------------------------------------- targets
    def select(self, cells: CellSet, rows: Rows):
        """Which rows of an output of ``rows`` the loss of ``cells`` covers (``None``: none of them).

        Here an output of all cells (``rows=None``): the cells' :attr:`CellSet.index`.
        """
        return cells.index

    def truth(self, draw: Draw, rows: Rows, sel) -> torch.Tensor:
        """The target of the selected rows ``sel`` of ``rows``: the held-out molecules, or the layer × factors."""
        if draw.held_out is not None:
            return _take(draw.held_out, rows)[sel]
        return _take(self.target, rows)[sel] * _take(draw.factors, rows)[sel].unsqueeze(1)

    def hidden_entries(self, draw: Draw, cells: CellSet, rows: Rows, sel) -> tuple[torch.Tensor, torch.Tensor]:
        """``(entries, truth)``: the hidden entries of ``cells`` in the output of ``rows``, and their target.

        Here an output of all cells: flat indices of the hidden observed entries (no dense mask).
        """
        flat = self.observed[draw.hidden & cells.observed]
        return flat, self.target.reshape(-1)[flat] * self.sf[flat // self.n_genes]


def _take(values, rows: Rows):
    return values if rows is None else values[rows]


class GNNImputeWholeGraphSampler(GNNImputeSampler):
    """One step per epoch over the whole graph (``batching="full"``); see :class:`GNNImputeSampler`.

    Parameters
    ----------
    module
        The :class:`~scvgae_sc.nn.GNNImputeModule`: the edges are sorted once for its sparse attention sums.
    """

    def __init__(self, module, x, target, graph, *, chunk: int, training: Training | None = None) -> None:
        super().__init__(x, target, graph, chunk=chunk, training=training)
        edge_index, _ = edge_tensors(graph, self.device)
        self.edge_index = module.attention_graph(edge_index, x.shape[0]) or edge_index

    def steps(self, batch_size: int):
        """``None``: one step over all cells (the same step in every process when data-parallel)."""
        return None

    def forward(self, module, x_in, step, factors):
        """The network over the whole graph."""
        return module(x_in, self.edge_index, factors), None

    def forward_all(self, module, x_in, factors=None):
        """The network over the whole graph."""
        return module(x_in, self.edge_index, factors)


class GNNImputeSubgraphSampler(GNNImputeSampler):
    """Random batches of cells with a history of first-layer outputs (``batching="subgraph"``).

    Data-parallel (``world_size > 1``): all ranks draw the same input and permutation (the same generator), each
    trains on its share of every step's cells (:func:`~scvgae_sc.tl._common.sharded_batches`), and the first-layer
    outputs of all ranks' batches are gathered into every rank's history.
    """

    def __init__(
        self, x, target, graph, *, chunk: int, training: Training | None = None, world_size: int = 1, rank: int = 0
    ) -> None:
        super().__init__(x, target, graph, chunk=chunk, training=training)
        self.sampler = SubgraphSampler(sparse.csr_matrix(graph, dtype=np.float32))
        self.world_size, self.rank = world_size, rank
        self._history = None

    def draw(self, module, epoch: int) -> Draw:
        """The epoch's input, its hidden entries as a dense mask; before the first step, every cell's history.

        The history is the first-layer output of every cell on the first epoch's input (in training mode, without
        gradients); afterwards each batch refreshes its own rows, so a neighbour's entry is at most one epoch old.
        """
        import torch

        draw = super().draw(module, epoch)
        if draw.hidden is not None:
            n = self.x.shape[0]
            hidden_rows = torch.zeros(n * self.n_genes, dtype=torch.bool, device=self.device)
            hidden_rows[self.observed[draw.hidden]] = True
            draw = draw._replace(hidden_rows=hidden_rows.view(n, self.n_genes))
        if self._history is None:
            with torch.no_grad():
                h1 = [
                    self._first_layer(module, draw.x_in, rows)[0].float()
                    for rows in torch.arange(self.x.shape[0], device=self.device).split(self.chunk)
                ]
                self._history = torch.cat(h1)
                del h1
        return draw

    def steps(self, batch_size: int):
        """A random permutation's batches (:func:`~scvgae_sc.tl._common.epoch_steps`; the same on every rank)."""
        import torch

        order = torch.randperm(self.x.shape[0], generator=self.gen, device=self.device)
        return epoch_steps(order, batch_size, self.world_size)

    def end_training(self) -> None:
        """Release the validation split and the history."""
        super().end_training()
        self._history = None

    def _first_layer(self, module, x_in, rows):
        """``(h1, nodes, edge_index)``: the first GAT block of ``rows``, exact from their neighbourhood."""
        import torch

        nodes, P_local = self.sampler.neighbourhood(rows.cpu().numpy(), self.device)
        idx = P_local.coalesce().indices()
        edge_index = torch.stack([idx[1], idx[0]])  # sources (neighbours) → targets (the batch)
        xs = x_in[torch.from_numpy(nodes).to(self.device)]
        h = module.conv1((xs, xs[: len(rows)]), edge_index)
        return module.dropout(torch.relu(module.bn1(h))), nodes, edge_index

    def forward(self, module, x_in, step, factors):
        """The batch's first layer exact, its second with the halo's history; the batch's rows into the history."""
        import torch

        rows = step[self.rank]
        h1, nodes, edge_index = self._first_layer(module, x_in, rows)
        halo = torch.from_numpy(nodes[len(rows) :]).to(self.device)
        h1_nodes = torch.cat([h1.float(), self._history[halo]])
        h2 = module.conv2((h1_nodes.to(h1.dtype), h1), edge_index)
        z = module.dropout(torch.relu(module.bn2(h2)))
        recon = module.decoder(z).float() * factors[rows].unsqueeze(1)
        write_history(self._history, h1, step, rows)  # every rank's batch, gathered, when data-parallel
        return {"recon": recon}, rows

    def forward_all(self, module, x_in, factors=None):
        """The network in chunks of cells (:func:`forward_chunked`): the same numbers, attention messages per chunk."""
        return forward_chunked(module, x_in, self.graph, factors, chunk=self.chunk)

    def select(self, cells: CellSet, rows: Rows):
        """For a batch: a boolean mask of its rows (``None`` when none is in ``cells``)."""
        if rows is None:
            return super().select(cells, rows)
        sel = cells.mask[rows]
        return sel if bool(sel.any()) else None

    def hidden_entries(self, draw: Draw, cells: CellSet, rows: Rows, sel):
        """For a batch: the epoch's dense mask of its selected rows (cells × genes), and their target."""
        if rows is None:
            return super().hidden_entries(draw, cells, rows, sel)
        hidden = draw.hidden_rows[rows] & sel.unsqueeze(1)
        return hidden, (self.target[rows] * draw.factors[rows].unsqueeze(1))[hidden]


def gnnimpute_sampler(
    batching: str, module, x, target, graph: sparse.spmatrix, *, chunk: int, training: Training | None = None
) -> GNNImputeSampler:
    """The sampler of ``batching`` (``"full"`` or ``"subgraph"``); data-parallel runs read the process group here."""
    if batching == "subgraph":
        from ...nn import rank, world_size

        kwargs = {"world_size": world_size(), "rank": rank()}
        return GNNImputeSubgraphSampler(x, target, graph, chunk=chunk, training=training, **kwargs)
    return GNNImputeWholeGraphSampler(module, x, target, graph, chunk=chunk, training=training)


def forward_chunked(module, x, graph: sparse.spmatrix, size_factors=None, *, chunk: int = 512) -> dict[str, Any]:
    """The whole-graph forward of a :class:`~scvgae_sc.nn.GNNImputeModule` in chunks of target cells, exactly.

    For evaluation without gradients (call it in eval mode under :func:`torch.no_grad`). Each GAT layer runs
    chunk by chunk on the chunk's cells and their neighbours (bipartite), so the attention messages — edges ×
    heads × hidden, the largest object of a whole-graph pass — exist for one chunk at a time. Returns
    ``{"recon", "z"}`` as :meth:`~scvgae_sc.nn.GNNImputeModule.forward` does.
    """
    import torch

    n = x.shape[0]
    sampler = SubgraphSampler(sparse.csr_matrix(graph, dtype=np.float32))
    dev = x.device
    pieces = []
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        nodes, P_local = sampler.neighbourhood(rows, dev)
        idx = P_local.coalesce().indices()
        pieces.append((torch.from_numpy(nodes).to(dev), torch.stack([idx[1], idx[0]]), len(rows)))

    def layer(conv, bn, h):
        out = []
        for nodes, edge_index, m in pieces:
            hs = h[nodes]
            out.append(module.dropout(torch.relu(bn(conv((hs, hs[:m]), edge_index)))).float())
        return torch.cat(out)

    z = layer(module.conv2, module.bn2, layer(module.conv1, module.bn1, x))
    recon = torch.empty((n, module.n_genes), dtype=torch.float32, device=dev)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        r = module.decoder(z[sl]).float()
        if size_factors is not None:
            r = r * size_factors[sl].to(r.dtype).unsqueeze(1)
        recon[sl] = r
    return {"recon": recon, "z": z}
