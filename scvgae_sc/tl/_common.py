"""Pieces the method runners share: AnnData-free conversions between NumPy/SciPy and torch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .._utils import to_dense_array
from ..pp._cell_graph import batch_codes, compute_graph

if TYPE_CHECKING:
    import torch


def resolve_graph(
    provided: tuple[sparse.csr_matrix, dict] | None,
    X,
    *,
    random_state: int | None,
    info: dict[str, Any] | None = None,
    batch=None,
    batch_mode: str = "within",
    **graph_kwargs: Any,
) -> tuple[sparse.csr_matrix, dict[str, Any]]:
    """The graph a runner trains on and its description for ``uns[key]["graph"]``.

    ``provided`` is the ``(adjacency, info)`` pair from ``graph_key``; otherwise the graph is built from ``X`` by
    :func:`~scvgae_sc.pp._cell_graph.compute_graph` with ``graph_kwargs``, which (with ``info``) describe it, and
    with the cells' ``batch`` labels (``None``: no batches) in ``batch_mode``. A provided graph is used as it is.
    """
    if provided is not None:
        A, graph_info = provided
        graph_info = dict(graph_info)
    else:
        A, _ = compute_graph(X, random_state=random_state, batch=batch, batch_mode=batch_mode, **graph_kwargs)
        graph_info = {"key": "", **graph_kwargs, **(info or {})}
        if batch is not None:
            graph_info.update(batch_mode=batch_mode, n_batches=len(batch_codes(batch, A.shape[0])[1]))
    graph_info["n_edges"] = int(A.nnz)
    return A, graph_info


def size_factors(counts, batch=None) -> np.ndarray:
    """Library size over the median library size (cells without counts get 1).

    With ``batch`` (one label per cell), the median is that of the cell's own batch: each batch's median cell
    gets 1, whatever the batches' sequencing depths.
    """
    lib = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    groups = [np.arange(lib.size)] if batch is None else _batch_groups(batch, lib.size)
    sf = np.ones_like(lib)
    for cells in groups:
        positive = lib[cells][lib[cells] > 0]
        median = float(np.median(positive)) if positive.size else 1.0
        sf[cells] = lib[cells] / median
    sf[lib == 0] = 1.0
    return sf.astype(np.float32)


def _batch_groups(batch, n: int) -> list[np.ndarray]:
    codes, names = batch_codes(batch, n)
    return [np.flatnonzero(codes == b) for b in range(len(names))]


def edge_tensors(A: sparse.spmatrix, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """PyG ``edge_index`` / ``edge_weight`` of an adjacency whose row ``i`` lists the cells ``i`` aggregates from.

    PyG's convention is ``edge_index[0]`` = source (neighbour) and ``edge_index[1]`` = target, so the
    source is the column and the target the row.
    """
    import torch

    coo = sparse.coo_matrix(A)
    edge_index = torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64)).to(device)
    edge_weight = torch.from_numpy(coo.data.astype(np.float32)).to(device)
    return edge_index, edge_weight


def dense_tensor(X, device: torch.device) -> torch.Tensor:
    """A float32 dense tensor of ``X`` on ``device``."""
    import torch

    return torch.from_numpy(to_dense_array(X, np.float32)).to(device)


def split_batches(
    order: torch.Tensor, batch_size: int, *, world_size: int = 1, rank: int = 0
) -> tuple[torch.Tensor, ...]:
    """``order.split(batch_size)``, with a last batch of one cell merged into the one before.

    BatchNorm cannot train on a single cell (``n_cells % batch_size == 1``, e.g. 1,025 cells in batches of 512).
    With ``world_size > 1``: this rank's batches of :func:`sharded_batches` (the same number on every rank).
    """
    if world_size > 1:
        return tuple(step[rank] for step in sharded_batches(order, batch_size, world_size))
    batches = order.split(batch_size)
    if len(batches) > 1 and len(batches[-1]) == 1:
        import torch

        batches = (*batches[:-2], torch.cat(batches[-2:]))
    return batches


def sharded_batches(order: torch.Tensor, batch_size: int, world_size: int) -> list[tuple[torch.Tensor, ...]]:
    """An epoch's batches for data-parallel training: a list of steps, each a tuple of one batch per rank.

    ``order`` (the epoch's permutation of the cells, the same on every rank) is cut into ``world_size × k``
    consecutive parts of almost equal size (:func:`numpy.array_split`'s rule), ``k = ceil(n / (world_size ×
    batch_size))``, so every rank gets ``k`` batches of at most ``batch_size`` cells and every cell is in one batch;
    step ``i`` gives rank ``r`` part ``i · world_size + r`` (rank ``r`` takes parts ``r, r + world_size, ...``).
    ``batch_size`` is thus per rank: an epoch makes about ``world_size`` times fewer optimizer steps, each
    averaging ``world_size`` batches. ``k`` is lowered where needed so that no part has fewer than 2 cells
    (BatchNorm).

    Raises
    ------
    ValueError
        When there are fewer than ``2 · world_size`` cells.
    """
    n = int(order.shape[0])
    if n < 2 * world_size:
        raise ValueError(
            f"{n} cells cannot be shared by {world_size} processes (each needs batches of at least 2 cells); "
            "start fewer processes."
        )
    k = min(-(-n // (world_size * batch_size)), n // (2 * world_size))
    parts = order.tensor_split(world_size * k)
    return [tuple(parts[i * world_size : (i + 1) * world_size]) for i in range(k)]


def epoch_steps(order: torch.Tensor, batch_size: int, world_size: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """Every rank's batch of each optimizer step: :func:`sharded_batches`, or one-batch steps in one process."""
    if world_size > 1:
        return sharded_batches(order, batch_size, world_size)
    return [(rows,) for rows in split_batches(order, batch_size)]


def progress_enabled(progress_bar: bool | None) -> bool:
    """Show progress bars at Scanpy verbosity ``info`` (the default) or above, unless told otherwise."""
    if progress_bar is not None:
        return bool(progress_bar)
    import scanpy as sc

    return int(sc.settings.verbosity) >= 2


def history_arrays(history: dict[str, Any]) -> dict[str, np.ndarray]:
    """A trainer history as a dict of arrays storable by ``write_h5ad``.

    Per-epoch lists become 1-d arrays, scalars (``best_epoch``, ``stopped_early``, ...) 0-d arrays; the
    name of the monitored loss (a string) is dropped: it is ``val_loss`` when a validation curve exists.
    """
    out = {}
    for k, v in history.items():
        if isinstance(v, list):
            out[k] = np.asarray(v, dtype=np.int64 if k == "epoch" else np.float64)
        elif isinstance(v, bool | np.bool_ | int | np.integer | float | np.floating):
            out[k] = np.asarray(v)
    return out


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Validate an integer option."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0, closed: bool = True) -> float:
    """Validate a float option in ``[low, high]`` (``[low, high)`` when ``closed=False``)."""
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if closed else value < high)
    if not ok:
        raise ValueError(f"{name} must be a number in [{low}, {high}{']' if closed else ')'}, got {value!r}.")
    return float(value)


def neighbourhood_operator(A: sparse.spmatrix, symmetric: bool = False) -> sparse.csr_matrix:
    """Row-stochastic averaging over each cell and its graph neighbours.

    ``D^-1 (A + I)`` with the edges weighted; ``symmetric=True``: ``D^-1 B`` with ``B`` the unweighted union of
    ``A``'s edges in both directions and the cell itself (each cell, the cells it lists and the cells that list it,
    counted once).
    """
    if symmetric:
        P = sparse.csr_matrix(A, dtype=np.float32)
        P = (P + P.T + sparse.eye(A.shape[0], dtype=np.float32, format="csr")).tocsr()
        P.eliminate_zeros()  # stored zeros of A are not edges
        P.data[:] = 1.0
    else:
        P = sparse.csr_matrix(A, dtype=np.float32) + sparse.eye(A.shape[0], dtype=np.float32, format="csr")
    return sparse.csr_matrix(sparse.diags(1.0 / np.asarray(P.sum(axis=1)).ravel().astype(np.float32)) @ P)


class Neighbourhood:
    """Detection rates and mean non-zero values over each cell's graph neighbourhood within ``hops`` steps.

    The neighbourhood of a cell is where a ``hops``-step random walk on ``A`` (self loops added, edges weighted)
    from it can end; each statistic is a weighted mean over it: ``P^hops M`` with ``P = D^-1 (A + I)``, or with
    ``symmetric=True`` the walk on the unweighted, symmetrized graph (see :func:`neighbourhood_operator`). Computed
    as ``hops`` sparse products, never forming ``P^hops``.

    Parameters
    ----------
    A
        ``(n_cells, n_cells)`` cell graph.
    dev
        Torch device of the matrices it is applied to.
    hops
        Number of graph steps (1: the cell and its neighbours).
    symmetric
        Walk on the unweighted union of ``A``'s edges in both directions (for directed k-NN graphs whose row
        weights say nothing about similarity, as GNNImpute's).
    """

    def __init__(self, A: sparse.spmatrix, dev, hops: int = 1, symmetric: bool = False) -> None:
        import torch

        P = neighbourhood_operator(A, symmetric=symmetric).tocoo()
        self.hops = int(hops)
        self.P = torch.sparse_coo_tensor(
            np.vstack([P.row, P.col]), P.data.astype(np.float32), size=P.shape, device=dev, check_invariants=False
        ).coalesce()

    def average(self, M: torch.Tensor) -> torch.Tensor:
        """``P^hops M`` for a dense ``(n_cells, k)`` tensor."""
        import torch

        M = M.float()
        for _ in range(self.hops):
            M = torch.sparse.mm(self.P, M)
        return M

    def __call__(self, values: torch.Tensor | None, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(rate, mean)`` of each gene around each cell: detection rate, mean of the detected ``values``.

        The mean is 0 where nothing is detected; ``values=None`` skips it.
        """
        rate = self.average(visible)
        if values is None:
            return rate, None
        mean = self.average(values.float() * visible)
        return rate, mean.div_(rate.clamp_min(1e-12))


def column_blocks(n_rows: int, n_cols: int, elements: int = 1 << 22) -> list[slice]:
    """Slices of columns covering ``n_cols`` with about ``elements`` entries of an ``n_rows``-row matrix each.

    At least 16 columns per block (fewer only in the last one).
    """
    step = max(16, elements // max(n_rows, 1))
    return [slice(start, min(start + step, n_cols)) for start in range(0, n_cols, step)]


def neighbourhood_at(
    hood: Neighbourhood, values, visible, flat, *, with_mean: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:class:`Neighbourhood` statistics at the flat positions ``flat`` of ``(n_cells, n_genes)`` matrices.

    ``(rate, mean)`` at those entries, computed on blocks of genes (:func:`column_blocks`) so that no dense
    statistic of the whole matrix is ever held. ``values`` and ``visible`` are the dense values and the boolean
    detections; ``with_mean=False`` skips the mean (returned as ``None``).
    """
    import torch

    n_cells, n_genes = visible.shape
    row, col = flat // n_genes, flat % n_genes
    by_col = torch.argsort(col)  # the entries of each block of genes are then one contiguous run
    col_sorted = col[by_col]
    rate_at = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
    mean_at = torch.zeros_like(rate_at) if with_mean else None
    for cols in column_blocks(n_cells, n_genes):
        bounds = torch.tensor([cols.start, cols.stop], dtype=col.dtype, device=col.device)
        lo, hi = torch.searchsorted(col_sorted, bounds).tolist()
        if lo == hi:
            continue
        sel = by_col[lo:hi]
        rate, mean = hood(values[:, cols] if with_mean else None, visible[:, cols])
        r, c = row[sel], col[sel] - cols.start
        rate_at[sel] = rate[r, c]
        if with_mean:
            mean_at[sel] = mean[r, c]
    return rate_at, mean_at


def gate_factor(rate, gate: float):
    """``min(1, rate / gate)``: how much of its fill a zero keeps (see the methods' ``fill_gate``).

    ``rate`` a tensor or a NumPy array (both have ``clip``).
    """
    return (rate / gate).clip(max=1.0)


def gated(values, rate, gate: float):
    """``values · min(1, rate / gate)``; ``values`` itself when ``gate <= 0`` (no gate)."""
    return values * gate_factor(rate, gate) if gate > 0 else values


class FillWeightFit:
    """Non-negative least-squares fill weights ``(w_model, w_graph)``, accumulated over chunks of hidden entries.

    ``w_model · pred + w_graph · graph_mean ≈ truth`` over freshly hidden observed values: each chunk adds the sums
    of products of its columns (:meth:`add`), :meth:`weights` solves. Without the graph column (``graph_fill=False``)
    the single factor of :func:`least_squares_scale` and weight 0. Every data path (the whole matrix, flat entries,
    chunks of cells) of every method fits its fill weights here.

    Parameters
    ----------
    graph_fill
        Whether the graph's neighbourhood mean is a second column.
    """

    def __init__(self, graph_fill: bool) -> None:
        self.graph_fill = bool(graph_fill)
        #: a·a, b·b, a·b, a·t, b·t (a: model fill, b: graph fill, t: truth)
        self.sums = np.zeros(5)

    def add(self, pred, graph_mean, truth) -> None:
        """Add a chunk: the model's fill values, the graph's (``None`` without it) and the hidden values.

        Tensors (summed in float64 by torch) or float64 NumPy arrays, over the same entries.
        """
        if isinstance(pred, np.ndarray):
            if graph_mean is None:  # no graph column: its sums stay 0
                self.sums += [pred @ pred, 0.0, 0.0, pred @ truth, 0.0]
            else:
                b = graph_mean
                self.sums += [pred @ pred, b @ b, pred @ b, pred @ truth, b @ truth]
        elif graph_mean is None:  # torch: the sums of least_squares_scale
            pred, truth = pred.double(), truth.double()
            self.sums += [float(pred.pow(2).sum()), 0.0, 0.0, float((pred * truth).sum()), 0.0]
        else:
            a, b, t = pred.double(), graph_mean.double(), truth.double()
            self.sums += [float(u.dot(v)) for u, v in ((a, a), (b, b), (a, b), (a, t), (b, t))]

    def weights(self) -> tuple[float, float]:
        """The fitted ``(w_model, w_graph)`` (``(1, 0)`` when nothing was added)."""
        aa, _, _, at, _ = self.sums
        if not self.graph_fill:
            return (float(at) / float(aa) if aa > 0 else 1.0), 0.0
        return fill_weights_from_sums(*map(float, self.sums))


def fit_fill_weights(pred, graph_mean, truth) -> tuple[float, float]:
    """Non-negative least-squares weights ``(w_model, w_graph)`` of ``w_model · pred + w_graph · graph_mean ≈ truth``.

    Tensors over the same entries (freshly hidden observed values and their fills). ``graph_mean=None``: the
    single factor of :func:`least_squares_scale` and weight 0. One chunk of :class:`FillWeightFit`.
    """
    fit = FillWeightFit(graph_mean is not None)
    fit.add(pred, graph_mean, truth)
    return fit.weights()


def fill_weights_from_sums(aa: float, bb: float, ab: float, at: float, bt: float) -> tuple[float, float]:
    """:func:`fit_fill_weights` from sums of products, which chunked callers can accumulate.

    The sums are ``a·a``, ``b·b``, ``a·b``, ``a·t``, ``b·t`` over the model column ``a``, the graph column ``b``
    and the truth ``t``.
    """
    det = aa * bb - ab * ab
    if det > 1e-12 * aa * bb:
        w = ((bb * at - ab * bt) / det, (aa * bt - ab * at) / det)
        if w[0] >= 0 and w[1] >= 0:
            return w
    # the optimum has a zero weight: the better of the two single-column fits (residual = tt - 2 w·t + w² ·aa)
    wa = max(at / aa, 0.0) if aa > 0 else 0.0
    wb = max(bt / bb, 0.0) if bb > 0 else 0.0
    return (wa, 0.0) if wa * at >= wb * bt else (0.0, wb)


def least_squares_scale(pred, truth) -> float:
    """The factor ``s`` minimizing ``||s · pred - truth||²`` (1 when ``pred`` is all zero); tensors, in float64."""
    pred, truth = pred.double(), truth.double()
    denom = float(pred.pow(2).sum())
    return float((pred * truth).sum()) / denom if denom > 0 else 1.0


@contextmanager
def evaluating(module) -> Iterator[None]:
    """``module`` in eval mode and without gradients for the block; its mode is restored afterwards."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
