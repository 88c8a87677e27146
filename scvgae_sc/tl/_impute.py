from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _utils
from .._constants import COUNTS, NORMALIZED, connectivities_key, latent_key
from .._utils import check_adata, check_counts, check_nonnegative, get_layer, params_for_uns

if TYPE_CHECKING:
    from ._model import ImputationModel

_METHODS = ("scvgae", "gnnimpute")
#: Peak memory of a CPU run in dense float32 copies of the cells × genes matrix (measured with the default options
#: on 4,000 and 8,000 × 2,000 simulated counts: the increase per added cell; inputs, training activations and
#: their gradients, the full-batch prediction and the output).
DENSE_COPIES = {"scvgae": 20, "gnnimpute": 28}
#: On a GPU the host keeps about the dense input, the counts and the output.
DENSE_COPIES_HOST = 4


#: With ``batching="subgraph"``: scVGAE holds the input, its masked copy, the masks and the output (one copy less
#: when the output goes to a file); GNNImpute also the target and the validation and prediction passes, which
#: run in chunks of cells. Activations are per batch. Measured above the data on simulated cells × 2,000 genes
#: (``benchmarks/results/scaling.md``): scVGAE 4.1 copies at 100,000 cells, GNNImpute 7.0 (8.7 at 30,000). The fill's
#: statistics over 2 graph steps (``fill_hops=2``, ``graph_fill``) added 1.5 copies to scVGAE at 30,000 cells
#: (peak 2,405 → 2,771 MB, ``results/scaling_fill_check.md``). GNNImpute at 30,000 cells, session 8: 10.7 copies
#: above the data without the graph term in its fill, 12.0 with it (``results/scaling_gnn_nofill.md``,
#: ``results/scaling_gnn_fill_blocks.md``; its neighbourhood statistics are computed over blocks of genes).
DENSE_COPIES_SUBGRAPH = {"scvgae": 6, "gnnimpute": 12}


def impute_memory(
    method: str, n_obs: int, n_vars: int, device_type: str = "cpu", *, batching: str = "full", to_file: bool = False
) -> float:
    """Estimated peak host memory (bytes) of :func:`impute` on ``n_obs`` × ``n_vars``."""
    if batching == "subgraph":
        copies = DENSE_COPIES_SUBGRAPH[method] - (1 if to_file else 0)
    else:
        copies = DENSE_COPIES[method] if device_type == "cpu" else DENSE_COPIES_HOST
    return float(copies) * n_obs * n_vars * 4


def choose_batching(
    method: str, requested: Any, n_obs: int, n_vars: int, device_type: str, budget: float | None
) -> str:
    """Resolve ``batching="auto"``: subgraphs when full batch does not fit ``budget`` (or, for scVGAE, is too slow)."""
    if requested != "auto":
        return requested
    from ._scvgae import SUBGRAPH_MIN_CELLS

    need = impute_memory(method, n_obs, n_vars, device_type)
    if budget is not None and need > budget:
        logg.info(
            f"    batching='subgraph': full-batch training would need about {need / 1e9:.1f} GB, more than the "
            f"{budget / 1e9:.1f} GB budget"
        )
        return "subgraph"
    if method == "scvgae" and n_obs > SUBGRAPH_MIN_CELLS:
        logg.info(
            f"    batching='subgraph': {n_obs} cells > {SUBGRAPH_MIN_CELLS} (a full-graph encoder per batch would cost "
            "n_cells² / batch_size per epoch)"
        )
        return "subgraph"
    logg.info(f"    batching='full': about {need / 1e9:.2f} GB fits the budget")
    return "full"


@dataclass
class ImputeResult:
    """What a method runner hands back to :func:`impute` (tensors already converted to NumPy)."""

    imputed: np.ndarray
    latent: np.ndarray
    history: dict[str, np.ndarray]
    params: dict[str, Any]
    graph: sparse.csr_matrix
    graph_info: dict[str, Any]
    device: str
    #: What a saved model needs (see :class:`~scvgae_sc.tl.ImputationModel`): ``"module"`` (the trained torch
    #: module), ``"module_kwargs"`` (its constructor arguments) and ``"predict_kwargs"`` (of the method's predict
    #: function).
    model_state: dict[str, Any] | None = None


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


def impute(
    adata: AnnData,
    *,
    method: Literal["scvgae", "gnnimpute"],
    layer: str | None = NORMALIZED,
    counts_layer: str = COUNTS,
    key_added: str | None = None,
    graph_key: str | None = None,
    max_epochs: int | None = None,
    device: str = "auto",
    random_state: int | None = 0,
    max_memory: float | None = None,
    filename: str | os.PathLike[str] | None = None,
    batch_key: str | None = None,
    return_model: bool = False,
    copy: bool = False,
    **method_kwargs: Any,
) -> AnnData | ImputationModel | tuple[AnnData, ImputationModel] | None:
    """Impute dropouts with a graph neural network.

    The one entry point for both methods:

    ``"scvgae"``
        scVGAE (Inoue, 2024): a GCN encoder with zero-inflated negative binomial heads, trained on
        raw counts and on reconstructing ``layer``. See :func:`scvgae_sc.tl.scvgae_options` for its
        options (passed as keyword arguments).
    ``"gnnimpute"``
        GNNImpute (Xu et al., 2021): two graph-attention layers on a kNN cell graph, trained with
        early stopping on held-out cells. See :func:`scvgae_sc.tl.gnnimpute_options`.

    The imputed matrix has the shape **and the scale** of ``layer``: a method may transform the data
    internally but maps its output back. Nothing is written unless training finishes: an error or an
    interrupt (:kbd:`Ctrl+C`) leaves ``adata`` as it was.

    Do not use imputed values for differential expression or gene–gene correlation: imputation
    borrows information across cells and genes, so such tests would count it twice.

    Several GPUs or machines: start the script that calls this function with ``torchrun`` (e.g.
    ``torchrun --nproc_per_node=4 script.py``). Each process loads the same data and calls :func:`impute`
    with the same arguments; the function joins the process group (:func:`scvgae_sc.nn.init_from_env`), and
    the training batches are shared among the processes with their gradients averaged
    (:class:`~torch.nn.parallel.DistributedDataParallel`; ``batch_size`` counts per process). Every process
    ends with the same result: write files from rank 0 only (``scvgae_sc.nn.rank() == 0``). GNNImpute with
    ``batching="full"`` makes one step per epoch on the whole graph, so every process runs the same step
    (correct, not faster). ``filename`` is refused with several processes. ``uns[key]["params"]["world_size"]``
    records the number of processes. See the large-data tutorial, "Several GPUs or machines".

    Parameters
    ----------
    adata
        Annotated data matrix with a normalized ``layer`` and raw counts in ``counts_layer``
        (:func:`scvgae_sc.pp.normalize` writes both).
    method
        ``"scvgae"`` or ``"gnnimpute"``.
    layer
        Normalized layer to impute (``None``: ``X``). Non-negative.
    counts_layer
        Raw counts of the same cells and genes (non-negative integers).
    key_added
        Where results go; defaults to ``method``.
    graph_key
        Key of a graph from :func:`scvgae_sc.pp.cell_graph` to train on. ``None`` builds the
        method's own graph (from ``layer``).
    max_epochs
        Maximum training epochs (``None``: the method's default, 100 for scVGAE, 3000 for
        GNNImpute with early stopping).
    device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Under ``torchrun``
        (data-parallel training, see below), ``"auto"`` and ``"cuda"`` mean each process's own GPU
        (``cuda:LOCAL_RANK``).
    random_state
        Seed of everything random (weights, dropout, splits, masks). CPU runs with the same seed give
        identical results.
    max_memory
        Bytes of memory the run may take. Before anything dense is allocated, the peak is estimated (about
        20 dense float32 copies of the cells × genes matrix for scVGAE, 28 for GNNImpute, on CPU; 4 of host
        memory on a GPU) and the call is refused, with the figures, when it exceeds ``max_memory`` — by
        default the memory available now (``MemAvailable`` of ``/proc/meminfo``, else the physical memory).
        Pass a number to override the estimate. It also decides the methods' ``batching="auto"`` (see
        :func:`scvgae_sc.tl.scvgae_options`, :func:`scvgae_sc.tl.gnnimpute_options`): when full-batch training
        would not fit, training runs on cell subgraphs (about 6 dense copies for scVGAE, 12 for GNNImpute), and
        the choice is logged.
    filename
        Write the imputed matrix to this NumPy ``.npy`` file instead of memory: ``adata.layers[key]`` is then an
        array mapped from the file (the operating system pages it in and out; ``write_h5ad`` works as usual).
        With scVGAE on subgraphs the matrix is written chunk by chunk and never held in memory whole, which
        saves one dense copy in the memory estimate (otherwise the result is copied to the file once made).
        Refuses an existing file.
        Pass a number to override the estimate.
    batch_key
        Column of ``adata.obs`` with each cell's batch (``None``: no batches; every cell needs a label). The
        graph the method builds (when ``graph_key`` is ``None``) is built per batch as
        :func:`scvgae_sc.pp.cell_graph` does with ``batch_key``: by default (method option
        ``batch_mode="within"``) each cell's neighbours come from its own batch only, so no message crosses
        batches; ``batch_mode="balanced"`` takes neighbours from every batch (BBKNN-style). The size factors of
        the count likelihoods are library size over the median library size **of the cell's batch**. A graph
        given by ``graph_key`` is used as it is (build it with ``pp.cell_graph(batch_key=...)``). The network's
        weights (and normalization statistics) are shared by all cells: this is no batch-effect correction.
        A single batch gives the same result as ``None``.
    return_model
        Also return the trained model (:class:`~scvgae_sc.tl.ImputationModel`), which can be saved
        (``model.save(folder)``), loaded (``ImputationModel.load(folder)``) and re-applied to the same cells
        (``model.predict(adata)``; exactly the same matrix on CPU).
    copy
        Return a new AnnData instead of writing into ``adata``.
    **method_kwargs
        The method's own options.

    Returns
    -------
    Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`; with ``return_model=True``, the
    model instead of `None`, or ``(adata_copy, model)`` when `copy=True`. Sets the following fields
    (``key = key_added or method``):

    ``adata.layers[key]``
        Imputed matrix (dense float32, same shape and scale as ``layer``).
    ``adata.obsm[f'X_{key}']``
        Latent representation of each cell.
    ``adata.obsp[f'{key}_connectivities']``
        The cell graph the model was trained on.
    ``adata.uns[key]``
        ``params``, ``history`` (per-epoch loss components as arrays), ``graph``, ``device``,
        ``runtime_s`` and ``version``.

    Examples
    --------
    >>> import scanpy as sc
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.filter(adata)
    >>> sv.pp.normalize(adata)
    >>> sv.tl.impute(adata, method="scvgae")
    >>> sc.pp.pca(adata, layer="scvgae")
    """
    check_adata(adata, inplace=not copy, min_obs=2)  # BatchNorm cannot train on one cell
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    key = method if key_added is None else key_added
    if not isinstance(key, str) or not key:
        raise TypeError(f"key_added must be a non-empty str or None, got {key_added!r}.")
    if max_epochs is not None and (not isinstance(max_epochs, int | np.integer) or max_epochs < 1):
        raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs!r}.")

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
    if not isinstance(return_model, bool | np.bool_):
        raise TypeError(f"return_model must be True or False, got {return_model!r}.")
    from ..nn import init_from_env, world_size

    dev = init_from_env(device)  # under torchrun: joins the process group; this rank's device
    n_ranks = world_size()
    run_seed = random_state
    if n_ranks > 1 and random_state is None:  # every rank must draw the same graph, masks, batches and splits
        from ..nn._distributed import shared_seed

        run_seed = shared_seed()
    if filename is not None and n_ranks > 1:
        raise ValueError(
            f"filename= is not supported with {n_ranks} processes (every rank would write the same file); "
            "impute into memory and write the result from rank 0, or run as one process."
        )
    if filename is not None:
        if not isinstance(filename, str | os.PathLike):
            raise TypeError(f"filename must be a path or None, got {type(filename).__name__}.")
        filename = Path(filename)
        if filename.exists():
            raise ValueError(f"{str(filename)!r} exists; remove it or choose another filename.")
        if not filename.parent.is_dir():
            raise ValueError(f"The folder of filename={str(filename)!r} does not exist.")
    budget = _utils.memory_budget(max_memory)
    batching = choose_batching(
        method, method_kwargs.get("batching", "auto"), adata.n_obs, adata.n_vars, dev.type, budget
    )
    method_kwargs["batching"] = batching
    to_file = filename is not None and batching == "subgraph" and method == "scvgae"
    _utils.check_memory(
        impute_memory(method, adata.n_obs, adata.n_vars, dev.type, batching=batching, to_file=to_file),
        what=f"Imputing {adata.n_obs} cells × {adata.n_vars} genes with {method!r} on {dev.type} "
        f"(batching={batching!r})",
        max_memory=max_memory,
        hint=(
            " Or pass filename= to write the imputed matrix to disk instead of memory (one dense copy less)."
            if method == "scvgae" and batching == "subgraph" and filename is None
            else ""
        ),
    )

    if method == "scvgae":
        from ._scvgae import run_scvgae as runner
    else:
        from ._gnnimpute import run_gnnimpute as runner

    start = logg.info(f"imputing with {method!r}")
    t0 = time.perf_counter()
    out = None
    if to_file:
        out = np.lib.format.open_memmap(filename, mode="w+", dtype=np.float32, shape=(adata.n_obs, adata.n_vars))
        method_kwargs["out"] = out
    try:
        result: ImputeResult = runner(
            X,
            counts,
            provided_graph=graph,
            normalization=layer_normalization(adata, layer),
            max_epochs=max_epochs,
            device=dev,
            random_state=run_seed,
            batch_labels=labels,
            **method_kwargs,
        )
    except BaseException:
        if out is not None:
            del out, method_kwargs["out"]
            filename.unlink(missing_ok=True)
        raise
    if filename is not None and out is None:
        out = np.lib.format.open_memmap(filename, mode="w+", dtype=np.float32, shape=(adata.n_obs, adata.n_vars))
        out[...] = result.imputed
        result.imputed = out
    if out is not None:
        out.flush()
        result.imputed = out.view(np.ndarray)
    runtime = time.perf_counter() - t0
    method_params = dict(result.params)
    if batch_key is None:
        method_params.pop("batch_mode", None)

    from .. import __version__

    if copy:
        adata = adata.copy()
    adata.layers[key] = result.imputed
    adata.obsm[latent_key(key)] = result.latent
    adata.obsp[connectivities_key(key)] = result.graph
    params = params_for_uns(
        {
            "method": method,
            "layer": layer,
            "counts_layer": counts_layer,
            "graph_key": graph_key,
            "max_epochs": max_epochs,
            "random_state": random_state,
            "filename": None if filename is None else str(filename),
            "batch_key": batch_key,
            "world_size": n_ranks,
            **method_params,
        }
    )
    adata.uns[key] = {
        "params": params,
        "history": {k: np.asarray(v) for k, v in result.history.items()},
        "graph": params_for_uns(result.graph_info),
        "device": result.device,
        "runtime_s": float(runtime),
        "version": __version__,
    }
    logg.info(
        f"    finished ({runtime:.1f} s on {result.device})",
        time=start,
        deep=f"added {key!r} (adata.layers), {latent_key(key)!r} (adata.obsm), "
        f"{connectivities_key(key)!r} (adata.obsp), {key!r} (adata.uns)",
    )
    if not return_model:
        return adata if copy else None
    from ._model import ImputationModel

    model = ImputationModel._from_result(adata, result, method=method, layer=layer, params=params)
    return (adata, model) if copy else model
