"""Reading an imputation's inputs from an AnnData: the input layer, the counts, a stored graph, batch labels."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _utils
from .._constants import connectivities_key
from .._utils import check_counts, check_nonnegative, get_layer


def layer_normalization(adata: AnnData, layer: str | None) -> str | None:
    """How ``layer`` was made (``"sqrt"``, ``"log1p"``, ``"total"``), tracing masked layers to their source.

    Returns ``None`` when unknown.
    """
    root = adata.uns.get("scvgae_sc", {})
    for _ in range(4):  # masked layers point at the layer they were made from
        if layer is None:
            return None
        norm = root.get("normalize", {}).get(layer)
        if norm is not None:
            return str(norm["method"])
        masked = root.get("mask_dropouts", {}).get(layer)
        if masked is None:
            return None
        layer = masked.get("layer")
    return None


def graph_from_key(adata: AnnData, graph_key: str) -> tuple[sparse.csr_matrix, dict]:
    """The adjacency stored by :func:`scvgae_sc.pp.cell_graph` (or :func:`scanpy.pp.neighbors`) under ``graph_key``."""
    if not isinstance(graph_key, str):
        raise TypeError(f"graph_key must be a str, got {type(graph_key).__name__}.")
    entry = adata.uns.get(graph_key)
    ckey = entry.get("connectivities_key") if isinstance(entry, dict) else None
    ckey = ckey or connectivities_key(graph_key)
    if ckey not in adata.obsp:
        have = ", ".join(repr(k) for k in adata.obsp) or "none"
        raise ValueError(
            f"No graph {graph_key!r}: adata.obsp has no {ckey!r} (obsp keys: {have}). "
            f"Build it with `scvgae_sc.pp.cell_graph(adata, key_added={graph_key!r})`, or pass graph_key=None to let "
            "the method build its own."
        )
    A = adata.obsp[ckey]
    if A.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"Graph {ckey!r} has shape {A.shape}, but adata has {adata.n_obs} cells.")
    A = sparse.csr_matrix(A, dtype=np.float32)
    check_nonnegative(A, f"adata.obsp[{ckey!r}]")
    info = {"key": graph_key}
    if isinstance(entry, dict) and "params" in entry:
        info["params"] = dict(entry["params"])
    return A, info


def read_inputs(
    adata: AnnData, layer: str | None, counts_layer: str, graph_key: str | None, batch_key: str | None
) -> dict[str, Any]:
    """The input layer, the counts, the given graph and the batch labels, checked.

    Returns
    -------
    ``{"X", "counts", "graph", "labels", "normalization", "params"}``: ``graph`` is the ``(adjacency, info)`` of
    ``graph_key`` or ``None``, ``labels`` the batch of each cell or ``None``, ``normalization`` how the input layer
    was made (:func:`layer_normalization`), ``params`` the four names as given.
    """
    X = get_layer(adata, layer)
    lname = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    check_nonnegative(X, lname)
    counts = get_layer(adata, counts_layer, what="counts layer")
    check_counts(counts, f"adata.layers[{counts_layer!r}]")
    if counts.shape != X.shape:
        raise ValueError(f"counts layer has shape {counts.shape} but {lname} has shape {X.shape}.")
    graph = graph_from_key(adata, graph_key) if graph_key is not None else None
    labels = _utils.batch_labels(adata, batch_key)
    if labels is not None and graph is not None:
        logg.info(f"    graph {graph_key!r} is used as it is; batch_key={batch_key!r} sets per-batch size factors")
    params = {"layer": layer, "counts_layer": counts_layer, "graph_key": graph_key, "batch_key": batch_key}
    return {
        "X": X,
        "counts": counts,
        "graph": graph,
        "labels": labels,
        "normalization": layer_normalization(adata, layer),
        "params": params,
    }
