"""scVGAE's data paths: one sampler interface, over the whole graph or over cell subgraphs (AnnData-free).

Training (:class:`~scvgae_sc.tl._models._plans.SCVGAEPlan`), prediction
(:func:`~scvgae_sc.tl._models._scvgae.predict_scvgae`) and the fill weights' fit
(:func:`~scvgae_sc.tl._models._scvgae.fit_fill`) are written once against :class:`SCVGAESampler`, which stands
between the model and its data as PyG's loaders or scvi-tools' data splitters do. A sampler owns the model input,
the random draws of its path (the masks and the batches) and the forward arithmetic of a batch or a block of rows;
:func:`scvgae_sampler` builds the one that ``batching`` names:

:class:`WholeGraphSampler` (``batching="full"``)
    Everything on the device. Each training step runs the encoder over the whole graph and the heads, decoder and
    loss on a random batch of cells; prediction is one block of all cells (heads and decoder ``chunk`` rows at a
    time), finished on the device.
:class:`CellSubgraphSampler` (``batching="subgraph"``)
    The data stay on the host as NumPy / SciPy arrays; each batch's rows go to the device (see
    :mod:`scvgae_sc.tl._subgraph`: the first GCN layer exact from sparse rows of the graph, the heads' propagation
    with a latent history, GNNAutoScale-style). Memory: the input, its masked copy, the observed-entry masks and
    the output (dense ``n_cells × n_genes``, the output optionally on disk), the counts as CSR, the latent history
    (``n_cells × hidden``) and one batch of activations; prediction and the fill's fit run ``chunk`` cells at a
    time, and what needs all cells at once ``chunk`` genes at a time, on the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ..._utils import to_dense_array
from .._common import Neighbourhood, dense_tensor, edge_tensors, epoch_steps, neighbourhood_operator
from .._output import layer_values, prediction
from .._subgraph import SubgraphSampler, gcn_adjacency, write_history

if TYPE_CHECKING:
    import torch

    from .._output import Evidence
    from ._plans import LayerMolecules

#: Rows of a block: a NumPy index array, or ``None`` for all cells.
Rows = np.ndarray | None
#: A block's neighbourhood statistics ``(rate, graph_mean)`` on the device (see :meth:`SCVGAESampler.neighbourhood`).
Stats = Callable[[Rows], tuple[Any, Any]]


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


#: Counts up to this value are split by :class:`BinomialCounts` from one uniform draw each (most counts are small).
_SMALL_COUNT = 4


class BinomialCounts:
    """Binomial thinning of fixed counts, drawn again and again: ``Binomial(values, fraction)`` per entry.

    :func:`torch.binomial` costs ~55 ns per entry on a CPU; counts up to :data:`_SMALL_COUNT` (about nine in ten
    UMI counts) are drawn instead by inverting their cumulative distribution at one uniform number, the others by
    :func:`torch.binomial`. Same distribution, about a third of the time. The entries are kept in the order
    :attr:`order` (small counts first): :attr:`values` and the draws come in that order.

    Parameters
    ----------
    values
        The counts (a float tensor of non-negative integers).
    fraction
        The success probability: the share of molecules kept.
    """

    def __init__(self, values: torch.Tensor, fraction: float) -> None:
        import torch
        from scipy.stats import binom

        self.fraction = float(fraction)
        small = values <= _SMALL_COUNT
        self.order = torch.cat([torch.nonzero(small).squeeze(1), torch.nonzero(~small).squeeze(1)])
        self.n_small = int(small.sum())
        self.values = values[self.order]
        self.large = self.values[self.n_small :]
        # cdf[c, j] = P(Binomial(c, fraction) <= j); a draw u gives #{j : u > cdf[c, j]}
        cdf = binom.cdf(np.arange(_SMALL_COUNT)[None, :], np.arange(_SMALL_COUNT + 1)[:, None], self.fraction)
        cdf = torch.from_numpy(cdf.astype(np.float32)).to(values.device)
        c = values[self.order[: self.n_small]].long()
        self.thresholds = [cdf[c, j].contiguous() for j in range(_SMALL_COUNT)]

    def draw(self, gen) -> torch.Tensor:
        """One draw of the kept counts (float, in the order :attr:`order`) from generator ``gen``."""
        import torch

        u = torch.rand(self.n_small, generator=gen, device=self.large.device)
        small = (u > self.thresholds[0]).float()
        for t in self.thresholds[1:]:
            small += u > t
        large = torch.binomial(self.large, torch.full_like(self.large, self.fraction), generator=gen)
        return torch.cat([small, large])


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


class SCVGAESampler(ABC):
    """The data of one scVGAE model and how its batches and blocks of cells are drawn and computed.

    Attributes
    ----------
    x
        The model input of every cell (a tensor on the device, or a host array).
    counts, size_factors
        The ZINB target and the size factors of training (``None``: the input itself, and 1).
    device
        Where the module runs.
    chunk
        Cells per block of the heads and the decoder in prediction.
    """

    x: Any
    counts: Any = None
    size_factors: Any = None
    device: Any
    chunk: int

    # ---------------------------------------------------------------- training
    @abstractmethod
    def mask(self, rate: float) -> tuple[Any, Any]:
        """``(hidden, x_in)``: a fresh ``rate`` of the observed entries of :attr:`x` hidden (this path's draws)."""

    @abstractmethod
    def epoch_input(self, module, epoch: int, mask_rate: float) -> tuple[Any, Any]:
        """``(hidden, x_in)`` of a training epoch: :meth:`mask`, or ``(None, x)`` when ``mask_rate`` is 0."""

    @abstractmethod
    def split_molecules(self, module, epoch: int, molecules: LayerMolecules) -> tuple[Any, Any]:
        """``(x_in, held_out)`` of a training epoch of the molecules objective (this path's draws).

        Every count of :attr:`counts` is split binomially: ``x_in`` is the model input made of a share
        ``molecules.fraction`` of its molecules (:meth:`~scvgae_sc.tl._models._plans.LayerMolecules.normalize`),
        ``held_out`` the rest, as counts (the layout of :attr:`counts`, read through :meth:`take`).
        """

    @abstractmethod
    def steps(self, batch_size: int) -> list[tuple[torch.Tensor, ...]] | None:
        """An epoch's batches: each step's cells of every rank; ``None`` for one step of all cells."""

    @abstractmethod
    def forward(self, module, x_in, step) -> tuple[dict[str, torch.Tensor], Rows]:
        """``(out, rows)``: the training forward of this rank's cells of ``step`` (see :meth:`steps`)."""

    @abstractmethod
    def take(self, values, rows: Rows) -> torch.Tensor:
        """``values[rows]`` (a per-cell array of this sampler: dense, or CSR on the host) on the device."""

    def end_training(self) -> None:
        """Release what only training reads (the counts and size factors)."""
        self.counts = self.size_factors = None

    # -------------------------------------------------------------- prediction
    @abstractmethod
    def reconstructions(
        self, module, x_in, output: str = "recon", evidence: Evidence | None = None
    ) -> tuple[torch.Tensor, Iterator[tuple[Rows, torch.Tensor]]]:
        """``(z, blocks)`` of the module in eval mode without gradients (see :func:`~scvgae_sc.tl._common.evaluating`).

        ``z`` is every cell's latent; ``blocks`` yields ``(rows, prediction)``, the heads'
        :func:`~scvgae_sc.tl._output.prediction` for ``output`` (given the cells' own counts when ``evidence`` is
        passed) of a block of cells, on the device.
        """

    @abstractmethod
    def neighbourhood(self, x, *, hops: int, transform: str, with_mean: bool) -> Stats:
        """Rows of :class:`~scvgae_sc.tl._common.Neighbourhood`'s ``(rate, graph_mean)`` of the input ``x``.

        The detection rate and (``with_mean``) the mean detected value on the input layer's scale over each
        cell's ``hops``-step neighbourhood, as tensors on the device, for the rows of a block.
        """

    @abstractmethod
    def output(self, out: np.ndarray | None) -> Any:
        """Where the prediction's blocks are put (see :meth:`put`); ``out``: a preallocated host array or ``None``."""

    @abstractmethod
    def put(self, imputed, rows: Rows, block: torch.Tensor) -> Any:
        """Write a finished block into ``imputed`` (from :meth:`output`); returns the output."""

    @abstractmethod
    def slices(self, n: int) -> list[slice]:
        """Blocks of cells or genes (``n`` of them) for what needs all cells at once."""

    @abstractmethod
    def to_host(self, imputed, out: np.ndarray | None) -> np.ndarray:
        """The finished output as a float32 host array (``out`` when given)."""


class WholeGraphSampler(SCVGAESampler):
    """Every cell on the device; the encoder propagates over the whole graph (``batching="full"``).

    Parameters
    ----------
    x
        The model input (dense tensor on the device).
    graph
        The cell graph (SciPy), row ``i`` listing what cell ``i`` aggregates.
    counts, size_factors
        Training's ZINB target and size factors on the device (``None``: the input, and 1).
    chunk
        Cells per block of the heads and the decoder in prediction.
    random_state
        Seed of the masks' and batches' generator (``None``: 0).
    world_size, rank
        Data-parallel: each rank trains on its share of every epoch's batches (the same permutation on every rank).
    """

    def __init__(
        self, x, graph, *, counts=None, size_factors=None, chunk: int = 512, random_state=None, world_size=1, rank=0
    ) -> None:
        import torch

        self.x, self.graph, self.device = x, graph, x.device
        self.counts, self.size_factors, self.chunk = counts, size_factors, int(chunk)
        self.edge_index, self.edge_weight = edge_tensors(graph, x.device)
        self.world_size, self.rank = world_size, rank
        self.gen = torch.Generator(device=x.device)
        self.gen.manual_seed(0 if random_state is None else int(random_state))
        self._observed_flat = self._split = None

    def mask(self, rate: float):
        """``(hidden, x_in)`` from :func:`hide_observed` (a device tensor pair)."""
        import torch

        if self._observed_flat is None:  # flat indices of the observed non-zeros
            self._observed_flat = torch.nonzero(self.x.reshape(-1) > 0).squeeze(1)
        return hide_observed(self.x, self._observed_flat, rate, self.gen)

    def epoch_input(self, module, epoch: int, mask_rate: float):
        """A fresh mask each epoch, or the input itself."""
        return self.mask(mask_rate) if mask_rate > 0 else (None, self.x)

    def split_molecules(self, module, epoch: int, molecules: LayerMolecules):
        """A binomial split of the counts' non-zeros on the device (this sampler's generator).

        The first split keeps the counts as their non-zeros and releases the dense :attr:`counts`.
        """
        import torch

        if self._split is None:
            # from here on the counts are their non-zeros (flat indices, cells, thinning), plus two buffers
            flat = torch.nonzero(self.counts.reshape(-1) > 0).squeeze(1)
            thinning = BinomialCounts(self.counts.reshape(-1)[flat], molecules.fraction)
            flat = flat[thinning.order]
            buffers = torch.empty_like(self.counts), torch.empty_like(self.counts)
            self._split = flat, flat // self.counts.shape[1], thinning, buffers
            self.counts = None
        flat, cells, thinning, (x_in, held_out) = self._split
        kept = thinning.draw(self.gen)
        # the buffers are overwritten: the last epoch's steps, backward passes included, are done with them
        held_out.zero_().view(-1)[flat] = thinning.values - kept
        x_in.zero_().view(-1)[flat] = molecules.normalize(kept, cells, x_in.shape[0])
        return x_in, held_out

    def steps(self, batch_size: int):
        """``None`` when one batch holds every cell in one process, else a random permutation's batches."""
        import torch

        n = self.x.shape[0]
        if batch_size >= n and self.world_size == 1:
            return None
        order = torch.randperm(n, generator=self.gen, device=self.x.device)  # the same on every rank
        return epoch_steps(order, batch_size, self.world_size)

    def forward(self, module, x_in, step):
        """The whole-graph encoder, then the heads and decoder on this rank's cells of ``step``."""
        rows = None if step is None else step[self.rank]
        return module(x_in, self.edge_index, self.edge_weight, rows=rows), rows

    def take(self, values, rows):
        """``values[rows]`` (``values`` itself for all rows)."""
        return values if rows is None else values[rows]

    def reconstructions(self, module, x_in, output="recon", evidence=None):
        """One block of all cells: the encoder over the whole graph, heads and decoder ``chunk`` rows at a time.

        The ``n_cells × n_genes`` intermediates of the heads, the decoder and the add-back exist only per chunk.
        """
        import torch

        graph = module.graph_operator(self.edge_index, self.edge_weight, x_in.shape[0])
        z = module.encode_graph(x_in, graph)["z"]
        h = module.propagate_graph(z, graph) if module.propagate is not None else z
        recon = torch.empty(x_in.shape, dtype=torch.float32, device=x_in.device)
        for rows in torch.arange(x_in.shape[0], device=x_in.device).split(max(self.chunk, 2)):
            ev = evidence.rows(rows, x_in.device) if evidence is not None else None
            recon[rows] = prediction(module.decode(h[rows], z[rows], x_in[rows], rows), output, ev)
        return z.float(), iter([(None, recon)])

    def neighbourhood(self, x, *, hops, transform, with_mean):
        """The statistics of all cells, computed when the block asks for them."""

        def stats(rows):
            hood = Neighbourhood(self.graph, x.device, hops)
            rate, mean = hood(layer_values(x, transform) if with_mean else None, x > 0)
            return (rate, mean) if rows is None else (rate[rows], None if mean is None else mean[rows])

        return stats

    def output(self, out):
        """Nothing yet: the one block becomes the output."""
        return None

    def put(self, imputed, rows, block):
        """The block of all cells is the output."""
        return block

    def slices(self, n: int):
        """One block of everything."""
        return [slice(None)]

    def to_host(self, imputed, out):
        """The device tensor copied to the host (into ``out`` when given)."""
        result = np.ascontiguousarray(imputed.cpu().numpy(), dtype=np.float32)
        if out is None:
            return result
        out[...] = result
        return out


def _to(a: np.ndarray, dev):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


class CellSubgraphSampler(SCVGAESampler):
    """Random batches of cells with a latent history; data on the host (``batching="subgraph"``).

    Parameters
    ----------
    x
        The model input (dense float32 NumPy).
    graph
        The cell graph (SciPy), row ``i`` listing what cell ``i`` aggregates.
    counts, size_factors
        Training's counts (CSR) and size factors (NumPy; ``None``: the input, and 1).
    device
        Where the batches go.
    chunk
        Cells per block in prediction and in the first history, genes per block of what needs all cells.
    random_state
        Seed of the masks' and batches' NumPy generator.
    world_size, rank
        Data-parallel: all ranks draw the same masks and permutation, each trains on its share of every step's
        cells (:func:`~scvgae_sc.tl._common.sharded_batches`), and the batch latents of all ranks are gathered into
        every rank's history, which thus stays the same on every rank.
    """

    def __init__(
        self,
        x: np.ndarray,
        graph,
        *,
        device,
        counts=None,
        size_factors=None,
        chunk: int = 512,
        random_state=None,
        world_size=1,
        rank=0,
    ) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.graph, self.device, self.chunk = graph, device, int(chunk)
        self.counts, self.size_factors = counts, size_factors
        self.sampler = SubgraphSampler(gcn_adjacency(graph))
        self.rng = np.random.default_rng(random_state)
        self.world_size, self.rank = world_size, rank
        self._x_in: np.ndarray | None = None  # the masked copy, made by the first mask
        self._count_cells = None
        self._history = None

    def _buffer(self) -> np.ndarray:
        if self._x_in is None:
            self._x_in = np.empty_like(self.x)
        return self._x_in

    def mask(self, rate: float):
        """``(hidden, x_in)`` from :func:`hide_entries` (host arrays; ``x_in`` one buffer, overwritten each time)."""
        x_in = self._buffer()
        return hide_entries(self.x, x_in, rate, self.rng), x_in

    def epoch_input(self, module, epoch: int, mask_rate: float):
        """A fresh mask each epoch; before the first step, every cell's latent into the history (no gradients).

        Afterwards each batch refreshes its own rows, so a neighbour's latent is at most one epoch old.
        """
        hidden, x_in = self.mask(mask_rate) if mask_rate > 0 else (None, self._buffer())
        if hidden is None and epoch == 0:
            np.copyto(x_in, self.x)
        if self._history is None:
            self._history, _ = self._embed(module, x_in)
        return hidden, x_in

    def split_molecules(self, module, epoch: int, molecules: LayerMolecules):
        """A binomial split of the CSR counts on the host (this sampler's generator); the input into the buffer.

        ``held_out`` is CSR with the counts' sparsity. Before the first step, every cell's latent into the history.
        """
        import torch

        C = self.counts
        kept = self.rng.binomial(C.data.astype(np.int64), molecules.fraction).astype(np.float32)
        held_out = sparse.csr_matrix((C.data - kept, C.indices, C.indptr), shape=C.shape)
        if self._count_cells is None:  # the cell of each stored count
            self._count_cells = torch.from_numpy(np.repeat(np.arange(C.shape[0]), np.diff(C.indptr)))
        values = molecules.normalize(torch.from_numpy(kept), self._count_cells, C.shape[0]).numpy()
        part = sparse.csr_matrix((values, C.indices, C.indptr), shape=C.shape)
        x_in = self._buffer()
        for start in range(0, C.shape[0], self.chunk):
            x_in[start : start + self.chunk] = part[start : start + self.chunk].toarray()
        if self._history is None:
            self._history, _ = self._embed(module, x_in)
        return x_in, held_out

    def steps(self, batch_size: int):
        """A random permutation's batches (:func:`~scvgae_sc.tl._common.epoch_steps`)."""
        import torch

        order = torch.from_numpy(self.rng.permutation(self.x.shape[0]))
        return epoch_steps(order, batch_size, self.world_size)

    def forward(self, module, x_in, step):
        """The batch's first layer from sparse rows of the graph, the heads' propagation with the history."""
        import torch

        dev = self.device
        rows_t = step[self.rank]
        rows, r = rows_t.numpy(), rows_t.to(dev)
        z_rows = module.latent_from_input(module.encoder_input(_to(self.sampler.propagate(rows, x_in), dev)))
        if module.propagate is not None:
            nodes, P_local = self.sampler.neighbourhood(rows, dev)
            z_nodes = torch.cat([z_rows.float(), self._history[_to(nodes[len(rows) :], dev)]])
            with torch.autocast(device_type=torch.device(dev).type, enabled=False):
                h_rows = torch.sparse.mm(P_local, z_nodes)  # sparse products stay float32 under bf16
        else:
            h_rows = z_rows
        out = module.decode(h_rows, z_rows, _to(x_in[rows], dev), r)
        write_history(self._history, z_rows, step, r)  # every rank's batch latents, gathered, when data-parallel
        return out, rows

    def take(self, values, rows):
        """``values[rows]`` on the device (CSR rows densified)."""
        block = values[rows]
        return _to(block.toarray() if sparse.issparse(block) else block, self.device)

    def end_training(self) -> None:
        """Release the counts, the size factors and the latent history."""
        super().end_training()
        self._history = None

    def _blocks(self) -> Iterator[np.ndarray]:
        n = self.x.shape[0]
        return (np.arange(start, min(start + self.chunk, n)) for start in range(0, n, self.chunk))

    def _embed(self, module, x: np.ndarray):
        """Exact ``(z, h)`` of every cell (``h`` the heads' input) in the module's current mode, without gradients.

        The first layer's pre-normalization output is computed chunk by chunk from sparse rows of the graph, then
        GraphNorm runs over all cells at once (``n_cells × hidden``), as in full-graph evaluation.
        """
        import torch

        with torch.no_grad():
            parts = [
                module.encoder_input(_to(self.sampler.propagate(rows, x), self.device)).float()
                for rows in self._blocks()
            ]
            z = module.latent_from_input(torch.cat(parts)).float()
            del parts
            if module.propagate is None:
                return z, z
            return z, _to(self.sampler.P @ z.cpu().numpy(), self.device)

    def reconstructions(self, module, x_in, output="recon", evidence=None):
        """The exact embedding, then ``chunk`` cells at a time from the host."""
        z, h = self._embed(module, x_in)

        def blocks():
            for rows in self._blocks():
                r = _to(rows, self.device)
                out = module.decode(h[r], z[r], _to(x_in[rows], self.device), r)
                yield rows, prediction(out, output, evidence.rows(rows, self.device) if evidence is not None else None)

        return z, blocks()

    def neighbourhood(self, x, *, hops, transform, with_mean):
        """:func:`neighbourhood_rows` of the host input, each block's rows moved to the device."""
        rows_of = neighbourhood_rows(self.graph, x, hops=hops, transform=transform, with_mean=with_mean)

        def stats(rows):
            rate, mean = rows_of(rows)
            return _to(rate, self.device), None if mean is None else _to(mean, self.device)

        return stats

    def output(self, out):
        """``out``, or a new host array."""
        return np.empty(self.x.shape, dtype=np.float32) if out is None else out

    def put(self, imputed, rows, block):
        """The block copied into its rows of the host array."""
        imputed[rows] = block.cpu().numpy()
        return imputed

    def slices(self, n: int):
        """``chunk`` at a time."""
        return [slice(start, start + self.chunk) for start in range(0, n, self.chunk)]

    def to_host(self, imputed, out):
        """The host array itself."""
        return imputed


def scvgae_sampler(
    batching: str,
    x,
    graph,
    device,
    *,
    chunk: int,
    counts=None,
    size_factors: np.ndarray | None = None,
    random_state: int | None = None,
) -> SCVGAESampler:
    """The sampler of ``batching`` from host data: the model input ``x`` and training's ``counts`` / ``size_factors``.

    ``counts=None``: the ZINB term models the input itself. Data-parallel runs read the process group here.
    """
    import torch

    from ...nn import rank, world_size

    ranks = {"world_size": world_size(), "rank": rank(), "random_state": random_state, "chunk": chunk}
    if batching == "subgraph":
        counts = None if counts is None else sparse.csr_matrix(counts, dtype=np.float32)
        x = to_dense_array(x, np.float32)
        return CellSubgraphSampler(x, graph, device=device, counts=counts, size_factors=size_factors, **ranks)
    x = dense_tensor(x, device)
    if counts is not None:
        counts = dense_tensor(counts, device)
        size_factors = torch.from_numpy(size_factors).to(device)
    return WholeGraphSampler(x, graph, counts=counts, size_factors=size_factors, **ranks)


#: Rows per block when walking the graph over the whole matrix (keeps the sparse products' temporaries small).
_WALK_ROWS = 4096


def _walk(P: sparse.csr_matrix, M, steps: int) -> np.ndarray:
    """``P^steps M`` as a dense float32 array (``M`` sparse or dense), computed in row blocks."""
    for _ in range(steps):
        out = np.empty((P.shape[0], M.shape[1]), dtype=np.float32)
        for start in range(0, P.shape[0], _WALK_ROWS):
            block = P[start : start + _WALK_ROWS] @ M
            out[start : start + _WALK_ROWS] = block.toarray() if sparse.issparse(block) else block
        M = out
    return M


def neighbourhood_rows(
    graph: sparse.spmatrix, x: np.ndarray, *, hops: int, transform: str, with_mean: bool
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """Rows of the neighbourhood statistics of :class:`~scvgae_sc.tl._common.Neighbourhood`, chunk by chunk.

    From the model input ``x`` (dense NumPy): the detection rate and, ``with_mean``, the mean detected value on the
    input layer's scale. With ``hops > 1`` the first ``hops - 1`` steps are walked once over the whole matrix
    (one dense ``n_cells × n_genes`` float32 array per statistic, held until the last chunk), and each chunk takes
    the last step from its sparse rows of the graph: multiplying sparse rows of ``P^hops`` with the sparse data
    instead costs ~100 s per statistic and pass at 50,000 cells (measured, one thread), against ~15 s.
    """
    P = neighbourhood_operator(graph)
    values = sparse.csr_matrix(x, dtype=np.float32)  # detections: the positive entries, as ``x > 0`` elsewhere
    np.maximum(values.data, 0.0, out=values.data)
    values.eliminate_zeros()
    observed = values.copy()
    observed.data[:] = 1.0
    if not with_mean:
        values = None
    elif transform == "log1p":
        values.data = np.expm1(values.data)
    if hops > 1:
        observed = _walk(P, observed, hops - 1)
        values = None if values is None else _walk(P, values, hops - 1)

    def last_step(M, rows) -> np.ndarray:
        out = P[rows] @ M
        return (out.toarray() if sparse.issparse(out) else out).astype(np.float32, copy=False)

    def rows_of(rows):
        rate = last_step(observed, rows)
        if values is None:
            return rate, None
        return rate, last_step(values, rows) / np.maximum(rate, 1e-12)

    return rows_of
