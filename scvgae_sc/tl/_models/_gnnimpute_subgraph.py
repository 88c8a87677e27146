"""GNNImpute trained over cell subgraphs (``batching="subgraph"``); see :mod:`scvgae_sc.tl._subgraph`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse

from .._common import epoch_steps
from .._subgraph import SubgraphSampler


def subgraph_train_step(
    model,
    A: sparse.spmatrix,
    x,
    target,
    sf,
    *,
    train_cells,
    observed,
    draw_mask: Callable | None,
    corrupt: Callable,
    mask_weight: float,
    batch_size: int,
    gen,
    molecules=None,
) -> Callable:
    """A ``train_step(module, epoch)`` yielding one loss per random batch of cells.

    The loss is ``model``'s :meth:`~scvgae_sc.nn.GNNImputeModule.imputation_loss`.

    Each epoch draws one input corruption (``corrupt(draw_mask())``) for all cells, then visits every cell
    once in batches: the first GAT layer of the batch from its cells and their neighbours (exact), the second
    with the neighbours' first-layer output from a history buffer. The loss is the MSE of the decoder output
    times the size factor against ``target`` times the size factor (the count scale) over the batch's training
    cells, plus ``mask_weight`` × the MSE over their hidden entries. ``observed`` are the flat indices of the
    observed non-zeros (the entries ``draw_mask`` chooses from). With ``molecules`` (a
    :class:`~scvgae_sc.tl._models._plans.MoleculeSplit`) each epoch's input is a fresh split of the counts instead,
    and the loss scores the held-out molecules.

    Data-parallel (a process group with several ranks): all ranks draw the same corruption and permutation
    (the same ``gen``), each trains on its share of every step's cells
    (:func:`~scvgae_sc.tl._common.sharded_batches`), and
    the first-layer outputs of all ranks' batches are gathered into every rank's history.
    """
    import torch

    from ...nn import rank, world_size
    from ...nn._distributed import all_gather_rows

    n, n_genes = x.shape
    dev = x.device
    sampler = SubgraphSampler(sparse.csr_matrix(A, dtype=np.float32))
    state: dict[str, Any] = {}
    n_ranks, this_rank = world_size(), rank()

    def first_layer(mod, x_in, rows):
        nodes, P_local = sampler.neighbourhood(rows.cpu().numpy(), dev)
        idx = P_local.coalesce().indices()
        edge_index = torch.stack([idx[1], idx[0]])  # sources (neighbours) → targets (the batch)
        xs = x_in[torch.from_numpy(nodes).to(dev)]
        h = mod.conv1((xs, xs[: len(rows)]), edge_index)
        return mod.dropout(torch.relu(mod.bn1(h))), nodes, edge_index

    def train_step(mod, epoch: int):
        held_out, factors = None, sf
        if molecules is not None:
            hidden = None
            x_in, held_out, factors = molecules.draw()
        else:
            hidden = draw_mask() if draw_mask is not None else None
            x_in = corrupt(hidden)
        hidden_dense = None
        if hidden is not None and mask_weight > 0:
            hidden_dense = torch.zeros(n * n_genes, dtype=torch.bool, device=dev)
            hidden_dense[observed[hidden]] = True
            hidden_dense = hidden_dense.view(n, n_genes)
        if "history" not in state:  # every cell's first-layer output before the first step
            with torch.no_grad():
                h1 = []
                for rows in torch.arange(n, device=dev).split(batch_size):
                    h1.append(first_layer(mod, x_in, rows)[0].float())
                state["history"] = torch.cat(h1)
                del h1
        order = torch.randperm(n, generator=gen, device=dev)  # the same on every rank
        for step_rows in epoch_steps(order, batch_size, n_ranks):
            rows = step_rows[this_rank]
            h1, nodes, edge_index = first_layer(mod, x_in, rows)
            halo = torch.from_numpy(nodes[len(rows) :]).to(dev)
            h1_nodes = torch.cat([h1.float(), state["history"][halo]])
            h2 = mod.conv2((h1_nodes.to(h1.dtype), h1), edge_index)
            z = mod.dropout(torch.relu(mod.bn2(h2)))
            sf_rows = factors[rows].unsqueeze(1)
            recon = mod.decoder(z).float() * sf_rows
            with torch.no_grad():
                if n_ranks > 1:  # every rank's first-layer rows into every rank's history
                    gathered = all_gather_rows(h1.detach().float(), [len(b) for b in step_rows])
                    for rows_b, h_b in zip(step_rows, gathered, strict=True):
                        state["history"][rows_b] = h_b
                else:
                    state["history"][rows] = h1.detach().float()
            train = train_cells[rows]
            truth = target[rows] * sf_rows if held_out is None else held_out[rows]
            if not bool(train.any()):  # no training cell in this batch: nothing to learn from, keep the step
                yield {"loss": recon.sum() * 0, "mse": recon.sum() * 0}
                continue
            out, truth_train = {"recon": recon}, truth[train]
            if hidden_dense is None:
                yield model.imputation_loss(out, train, truth_train)
                continue
            hid = hidden_dense[rows] & train.unsqueeze(1)
            yield model.imputation_loss(out, train, truth_train, hid, truth[hid], hidden_weight=mask_weight)

    return train_step


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


def graph_forward(module, x, edge_index, graph: sparse.spmatrix, factors=None, *, batching: str, chunk: int):
    """The whole-graph forward of training's data path: one pass (``"full"``) or chunks of cells (``"subgraph"``).

    The one forward of validation, the fill's calibration and prediction: chunked with ``batching="subgraph"``,
    where whole-graph attention messages would dominate the memory (:func:`forward_chunked`, the same numbers).
    """
    if batching == "subgraph":
        return forward_chunked(module, x, graph, factors, chunk=chunk)
    return module(x, edge_index, factors)
