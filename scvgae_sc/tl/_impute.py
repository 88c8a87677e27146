"""``tl.impute``: read the inputs, pick the method's class by name, train, write the results once."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _utils
from .._constants import COUNTS, DEFAULT_NORMALIZATION, NORMALIZED, UNS_KEY, connectivities_key, latent_key
from .._utils import check_adata, check_counts, check_nonnegative, get_layer, params_for_uns
from .._version import __version__
from ._models import ImputationModel, ImputeResult
from ._output import denoise_scale, finish_denoised


def normalize_raw_counts(adata: AnnData, method: str, layer: str | None, counts_layer: str) -> dict | None:
    """Make the default input layer from the raw counts when it is missing; what was written, or ``None``.

    Acts only when ``layer`` is the default ``"normalized"`` and that layer is missing (a layer named otherwise is
    never made: a misspelt name must stay an error). The counts are ``adata.layers[counts_layer]`` if it exists,
    else ``X``, copied into ``counts_layer``; they must be non-negative integers (refused with a ``ValueError``
    saying what to do otherwise). They are normalized with ``pp.normalize(method=DEFAULT_NORMALIZATION[method])``
    into ``layer``, with a warning, and ``uns["scvgae_sc"]["normalize"][layer]["by_impute"]`` is set to ``True``.
    """
    if layer != NORMALIZED or layer in adata.layers:
        return None
    import copy

    from ..pp import normalize

    norm = DEFAULT_NORMALIZATION[method]
    has_counts = counts_layer in adata.layers
    short = f"layers[{counts_layer!r}]" if has_counts else "X"
    source = f"adata.{short}"
    try:
        if not has_counts and adata.X is None:
            raise ValueError("adata.X is None")
        check_counts(adata.layers[counts_layer] if has_counts else adata.X, source)
    except ValueError as err:
        raise ValueError(
            f"adata has no layer {layer!r} to impute, and {source} does not hold raw counts to make it from ({err}). "
            f"Put the raw counts in adata.X or adata.layers[{counts_layer!r}], or name a normalized layer with "
            "layer= (--layer on the command line)."
        ) from None
    kept = "" if has_counts else f" (counts kept in layers[{counts_layer!r}])"
    logg.warning(
        f"no layer {layer!r}: normalizing the raw counts in {source} with pp.normalize(method={norm!r}), the "
        f"{method} default, into layers[{layer!r}]{kept}"
    )
    before = copy.deepcopy(adata.uns.get(UNS_KEY))
    normalize(adata, method=norm, counts_layer=counts_layer, key_added=layer)
    adata.uns[UNS_KEY]["normalize"][layer]["by_impute"] = True
    return {"layers": (layer,) if has_counts else (layer, counts_layer), "uns": before, "source": short}


def _undo_normalization(adata: AnnData, made: dict) -> None:
    """Remove what :func:`normalize_raw_counts` wrote (an error must leave ``adata`` as it was)."""
    for k in made["layers"]:
        del adata.layers[k]
    if made["uns"] is None:
        del adata.uns[UNS_KEY]
    else:
        adata.uns[UNS_KEY] = made["uns"]


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
        (:func:`scvgae_sc.pp.normalize` writes both). When ``layer`` is the default ``"normalized"`` and missing,
        it is made first from the raw counts (``counts_layer`` if present, else ``X``, which must then hold
        non-negative integers): <DEFAULT_NORMALIZATION> (a warning says so;
        ``uns["scvgae_sc"]["normalize"]["normalized"]["by_impute"]`` records it). Any other missing layer is an
        error.
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
    model_cls = ImputationModel.registered(method)
    key = method if key_added is None else key_added
    if not isinstance(key, str) or not key:
        raise TypeError(f"key_added must be a non-empty str or None, got {key_added!r}.")
    if max_epochs is not None and (not isinstance(max_epochs, int | np.integer) or max_epochs < 1):
        raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs!r}.")
    options = model_cls.options_class.from_kwargs(**method_kwargs)
    if unused := options.unused(method_kwargs):
        logg.warning(
            f"{', '.join(unused)}: not used with output={options.as_dict()['output']!r} (see "
            f"tl.{method}_options()); ignored"
        )
    if copy and layer == NORMALIZED and layer not in adata.layers:  # the normalization goes to the copy only
        adata, copy, return_copy = adata.copy(), False, True
    else:
        return_copy = False
    made = normalize_raw_counts(adata, method, layer, counts_layer)
    try:
        inputs = _read_inputs(adata, layer, counts_layer, graph_key, batch_key)
        if not isinstance(return_model, bool | np.bool_):
            raise TypeError(f"return_model must be True or False, got {return_model!r}.")
        run = _prepare_run(model_cls, adata, options, device, random_state, filename, max_memory)
        start = logg.info(f"imputing with {method!r}")
        t0 = time.perf_counter()
        result = _train(model_cls, run, inputs, layer_normalization(adata, layer), max_epochs)
    except BaseException:
        if made:
            _undo_normalization(adata, made)
        raise
    runtime = time.perf_counter() - t0
    if copy:
        adata = adata.copy()
    params = _write(adata, key, method, result, runtime, run["params"], batch_key)
    logg.info(
        f"    finished ({runtime:.1f} s on {result.device})",
        time=start,
        deep=f"added {key!r} (adata.layers), {latent_key(key)!r} (adata.obsm), "
        f"{connectivities_key(key)!r} (adata.obsp), {key!r} (adata.uns)",
    )
    copy = copy or return_copy
    if not return_model:
        return adata if copy else None
    model = model_cls._from_result(adata, result, layer=layer, params=params)
    return (adata, model) if copy else model


def _default_normalization_text() -> str:
    """How each method's default layer is made, for :func:`impute`'s docstring (from ``DEFAULT_NORMALIZATION``)."""
    return ", ".join(f'``pp.normalize(method="{norm}")`` for ``"{m}"``' for m, norm in DEFAULT_NORMALIZATION.items())


if impute.__doc__:
    impute.__doc__ = impute.__doc__.replace("<DEFAULT_NORMALIZATION>", _default_normalization_text())


def _read_inputs(
    adata: AnnData, layer: str | None, counts_layer: str, graph_key: str | None, batch_key: str | None
) -> dict[str, Any]:
    """The input layer, the counts, the given graph and the batch labels, checked."""
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
    return {"X": X, "counts": counts, "graph": graph, "labels": labels, "params": params}


def _check_filename(filename: Any, n_ranks: int) -> Path | None:
    if filename is None:
        return None
    if n_ranks > 1:
        raise ValueError(
            f"filename= is not supported with {n_ranks} processes (every rank would write the same file); "
            "impute into memory and write the result from rank 0, or run as one process."
        )
    if not isinstance(filename, str | os.PathLike):
        raise TypeError(f"filename must be a path or None, got {type(filename).__name__}.")
    filename = Path(filename)
    if filename.exists():
        raise ValueError(f"{str(filename)!r} exists; remove it or choose another filename.")
    if not filename.parent.is_dir():
        raise ValueError(f"The folder of filename={str(filename)!r} does not exist.")
    return filename


def _prepare_run(
    model_cls: type[ImputationModel], adata: AnnData, options, device, random_state, filename, max_memory
) -> dict[str, Any]:
    """Device, process group, seed, ``batching="auto"`` and the memory check, before anything is allocated."""
    from ..nn import init_from_env, world_size

    dev = init_from_env(device)  # under torchrun: joins the process group; this rank's device
    n_ranks = world_size()
    run_seed = random_state
    if n_ranks > 1 and random_state is None:  # every rank must draw the same graph, masks, batches and splits
        from ..nn._distributed import shared_seed

        run_seed = shared_seed()
    path = _check_filename(filename, n_ranks)
    budget = _utils.memory_budget(max_memory)
    requested = options.training.batching
    batching = model_cls.resolve_batching(requested, adata.n_obs, adata.n_vars, dev.type, budget)
    options = options.replace(batching=batching)
    to_file = path is not None and batching == "subgraph" and model_cls.streams_output
    hint = ""
    if model_cls.streams_output and batching == "subgraph" and path is None:
        hint = " Or pass filename= to write the imputed matrix to disk instead of memory (one dense copy less)."
    _utils.check_memory(
        model_cls.memory(adata.n_obs, adata.n_vars, dev.type, batching=batching, to_file=to_file),
        what=f"Imputing {adata.n_obs} cells × {adata.n_vars} genes with {model_cls.method!r} on {dev.type} "
        f"(batching={batching!r})",
        max_memory=max_memory,
        hint=hint,
    )
    params = {"random_state": random_state, "filename": None if path is None else str(path), "world_size": n_ranks}
    return {"device": dev, "seed": run_seed, "options": options, "path": path, "to_file": to_file, "params": params}


def _train(model_cls: type[ImputationModel], run: dict[str, Any], inputs: dict[str, Any], normalization, max_epochs):
    """Train and impute; the output goes to ``run["path"]`` when given (removed again on an error)."""
    path, X = run["path"], inputs["X"]
    denoise = None
    if run["options"].output.output == "denoised":  # refused here, before training, if the layer cannot take it
        denoise = denoise_scale(inputs["counts"], normalization, source=model_cls.denoised_source)
    out = None
    if run["to_file"]:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=X.shape)
    try:
        result: ImputeResult = model_cls.train(
            X,
            inputs["counts"],
            options=run["options"],
            provided_graph=inputs["graph"],
            normalization=normalization,
            max_epochs=max_epochs,
            device=run["device"],
            random_state=run["seed"],
            batch_labels=inputs["labels"],
            out=out,
        )
    except BaseException:
        if out is not None:
            del out
            path.unlink(missing_ok=True)
        raise
    if path is not None and out is None:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=X.shape)
        out[...] = result.imputed
        result.imputed = out
    if denoise is not None:
        finish_denoised(result.imputed, denoise)
        result.model_state["denoise"] = denoise
    if out is not None:
        out.flush()
        result.imputed = out.view(np.ndarray)
    run["params"].update(inputs["params"], max_epochs=max_epochs)
    return result


def _write(
    adata: AnnData, key: str, method: str, result: ImputeResult, runtime: float, run_params, batch_key
) -> dict[str, Any]:
    """Write the results into ``adata`` (one place); the flat ``params`` written to ``uns[key]``."""
    method_params = dict(result.params)
    if batch_key is None:
        method_params.pop("batch_mode", None)
    adata.layers[key] = result.imputed
    adata.obsm[latent_key(key)] = result.latent
    adata.obsp[connectivities_key(key)] = result.graph
    p = run_params
    params = params_for_uns(
        {
            "method": method,
            "layer": p["layer"],
            "counts_layer": p["counts_layer"],
            "graph_key": p["graph_key"],
            "max_epochs": p["max_epochs"],
            "random_state": p["random_state"],
            "filename": p["filename"],
            "batch_key": p["batch_key"],
            "world_size": p["world_size"],
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
    return params
