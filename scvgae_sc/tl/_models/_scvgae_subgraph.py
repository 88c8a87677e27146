"""scVGAE trained and applied over cell subgraphs (``batching="subgraph"``); see :mod:`scvgae_sc.tl._subgraph`.

The data stay on the host as NumPy / SciPy arrays; each batch's rows go to the device. Memory: the input,
its masked copy, the observed-entry masks and the output (dense ``n_cells × n_genes``, the output optionally on
disk), the counts as CSR, the latent history (``n_cells × hidden``) and one batch of activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy import sparse

from .._common import FillWeightFit, epoch_steps, neighbourhood_operator
from .._output import add_fill_rows, finish_host, finish_rows, prediction
from .._subgraph import SubgraphSampler, gcn_adjacency
from ._plans import hide_entries


def _to(a: np.ndarray, dev):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


def embed(module, sampler: SubgraphSampler, x: np.ndarray, dev, chunk: int):
    """Exact ``(z, h)`` of every cell (``h`` the heads' input) in the module's current mode, without gradients.

    The first layer's pre-normalization output is computed chunk by chunk from sparse rows of the graph, then
    GraphNorm runs over all cells at once (``n_cells × hidden``), as in full-graph evaluation.
    """
    import torch

    with torch.no_grad():
        parts = []
        for start in range(0, sampler.n, chunk):
            rows = np.arange(start, min(start + chunk, sampler.n))
            parts.append(module.encoder_input(_to(sampler.propagate(rows, x), dev)).float())
        z = module.latent_from_input(torch.cat(parts)).float()
        del parts
        if module.propagate is None:
            return z, z
        h = _to(sampler.P @ z.cpu().numpy(), dev)
    return z, h


def reconstructions(
    module,
    sampler: SubgraphSampler,
    x_in: np.ndarray,
    dev,
    chunk: int,
    latent: list | None = None,
    output: str = "recon",
    evidence=None,
) -> Iterator:
    """Yield ``(rows, recon_rows)`` (eval mode, no gradients) over all cells, ``chunk`` rows at a time.

    ``recon_rows`` is the heads' :func:`~scvgae_sc.tl._output.prediction` for ``output`` (given the cells' own
    counts when ``evidence``, an :class:`~scvgae_sc.tl._output.Evidence`, is passed).

    ``latent``, when given, receives every cell's latent (appended before the first chunk is yielded).
    """
    import torch

    was_training = module.training
    module.eval()
    try:
        z, h = embed(module, sampler, x_in, dev, chunk)
        if latent is not None:
            latent.append(z)
        with torch.no_grad():
            for start in range(0, sampler.n, chunk):
                rows = np.arange(start, min(start + chunk, sampler.n))
                r = _to(rows, dev)
                out = module.decode(h[r], z[r], _to(x_in[rows], dev), r)
                yield rows, prediction(out, output, evidence.rows(rows, dev) if evidence is not None else None)
    finally:
        module.train(was_training)


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


def _neighbourhood_rows(
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


def predict_scvgae_subgraph(
    module,
    x: np.ndarray,
    graph: sparse.spmatrix,
    *,
    device,
    output: str,
    calibrate: bool,
    transform: str,
    fill_gate: float = 0.0,
    fill_scale: float = 1.0,
    fill_hops: int = 1,
    graph_weight: float = 0.0,
    chunk: int = 512,
    out: np.ndarray | None = None,
    evidence=None,
    **_: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Imputed matrix and latent from the model input ``x`` (dense NumPy) chunk by chunk, with the exact graph.

    ``out`` receives the result (a preallocated ``n_cells × n_genes`` float32 array, e.g. a :class:`numpy.memmap`);
    by default a new array. ``evidence``: the cells' own counts for ``output="denoised"``'s posterior.
    """
    sampler = SubgraphSampler(gcn_adjacency(graph))
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    stats_of = None
    if output == "fill" and (fill_gate > 0 or graph_weight):
        stats_of = _neighbourhood_rows(graph, x, hops=fill_hops, transform=transform, with_mean=bool(graph_weight))
    fill = {"fill_gate": fill_gate, "fill_scale": fill_scale, "graph_weight": graph_weight}
    latent: list = []
    for rows, recon in reconstructions(module, sampler, x, device, chunk, latent, output, evidence):
        stats = stats_of(rows) if stats_of is not None else (None, None)
        recon = finish_rows(recon, x[rows], stats, output=output, transform=transform, **fill)
        out[rows] = recon.cpu().numpy()
    finish_host(out, x, output=output, calibrate=calibrate, transform=transform, chunk=chunk)
    return out, np.ascontiguousarray(latent[0].cpu().numpy(), dtype=np.float32)


def fit_fill_scale_subgraph(
    module,
    x: np.ndarray,
    x_buffer: np.ndarray,
    graph: sparse.spmatrix,
    sampler: SubgraphSampler,
    *,
    device,
    mask_rate: float,
    rng: np.random.Generator,
    chunk: int,
    transform: str,
    fill_gate: float,
    fill_hops: int = 1,
    graph_fill: bool = False,
) -> tuple[float, float]:
    """Fill weights ``(fill_scale, graph_weight)`` on freshly hidden entries, chunk by chunk of cells.

    The subgraph counterpart of :func:`~scvgae_sc.tl._output.fit_fill_dense`: a fresh ``mask_rate`` of the observed
    entries of ``x`` is hidden into ``x_buffer`` (:func:`~scvgae_sc.tl._models._plans.hide_entries`), and each chunk's
    reconstruction is added to one :class:`~scvgae_sc.tl._common.FillWeightFit`.
    """
    hidden = hide_entries(x, x_buffer, mask_rate, rng)
    stats_of = None
    if fill_gate > 0 or graph_fill:
        stats_of = _neighbourhood_rows(graph, x_buffer, hops=fill_hops, transform=transform, with_mean=graph_fill)
    fit = FillWeightFit(graph_fill)
    for rows, recon in reconstructions(module, sampler, x_buffer, device, chunk):
        h = hidden[rows]
        if not h.any():
            continue
        stats = stats_of(rows) if stats_of is not None else (None, None)
        add_fill_rows(fit, recon, x[rows], h, stats, transform=transform, fill_gate=fill_gate)
    return fit.weights()


def subgraph_train_step(
    module,
    sampler: SubgraphSampler,
    x: np.ndarray,
    x_in: np.ndarray,
    counts: sparse.csr_matrix | None,
    sf: np.ndarray | None,
    *,
    device,
    batch_size: int,
    mask_rate: float,
    mask_weight: float,
    rng: np.random.Generator,
    loss_kwargs: dict[str, float],
    chunk: int,
) -> Callable:
    """A ``train_step(module, epoch)`` for :class:`~scvgae_sc.nn.Trainer` yielding one loss per random batch.

    Each epoch hides a fresh ``mask_rate`` of the observed entries in ``x_in`` (a buffer the shape of ``x``).
    The latent history of every cell is computed once before the first step (no gradients); afterwards each
    batch refreshes its own rows, so a neighbour's latent is at most one epoch old.
    ``counts`` is ``None`` when the ZINB term models the input itself (``zinb_target="normalized"``).
    The loss is ``module``'s :meth:`~scvgae_sc.nn.SCVGAE.loss` with ``loss_kwargs`` (``alpha``, ``kl_weight``,
    ``hidden_weight``).

    Data-parallel (a process group with several ranks): all ranks draw the same masks and permutation (the same
    ``rng``), each trains on its share of every step's cells (:func:`~scvgae_sc.tl._common.sharded_batches`), and
    the batch
    latents of all ranks are gathered into every rank's history, which thus stays the same on every rank.
    """
    import torch

    from ...nn import rank, world_size
    from ...nn._distributed import all_gather_rows

    n = x.shape[0]
    state: dict[str, Any] = {}
    n_ranks, this_rank = world_size(), rank()

    def train_step(mod, epoch: int):
        hidden = hide_entries(x, x_in, mask_rate, rng) if mask_rate > 0 else None
        if hidden is None and epoch == 0:
            np.copyto(x_in, x)
        if "history" not in state:
            # every cell's latent before the first step; later each batch refreshes its own rows
            state["history"], _ = embed(mod, sampler, x_in, device, chunk)
        order = torch.from_numpy(rng.permutation(n))
        for step_rows in epoch_steps(order, batch_size, n_ranks):
            rows_t = step_rows[this_rank]
            rows = rows_t.numpy()
            r = rows_t.to(device)
            pre = mod.encoder_input(_to(sampler.propagate(rows, x_in), device))
            z_rows = mod.latent_from_input(pre)
            if mod.propagate is not None:
                nodes, P_local = sampler.neighbourhood(rows, device)
                halo = _to(nodes[len(rows) :], device)
                z_nodes = torch.cat([z_rows.float(), state["history"][halo]])
                with torch.autocast(device_type=torch.device(device).type, enabled=False):
                    h_rows = torch.sparse.mm(P_local, z_nodes)  # sparse products stay float32 under bf16
            else:
                h_rows = z_rows
            out = mod.decode(h_rows, z_rows, _to(x_in[rows], device), r)
            with torch.no_grad():
                if n_ranks > 1:  # every rank's batch latents into every rank's history
                    gathered = all_gather_rows(z_rows.detach().float(), [len(b) for b in step_rows])
                    for rows_b, z_b in zip(step_rows, gathered, strict=True):
                        state["history"][rows_b.to(device)] = z_b
                else:
                    state["history"][r] = z_rows.detach().float()
            c_rows = _to(counts[rows].toarray(), device) if counts is not None else None
            sf_rows = _to(sf[rows], device) if sf is not None else None
            hid = _to(hidden[rows], device) if hidden is not None else None
            x_rows = _to(x[rows], device)
            c_rows = x_rows if c_rows is None else c_rows
            yield module.loss(out, x_rows, c_rows, sf_rows, hidden=hid, **loss_kwargs)

    return train_step
