"""``tl.impute``: pick the method's class by name, build it from the AnnData, train it, write the results once."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
from anndata import AnnData
from scanpy import logging as logg

from .._constants import COUNTS, DEFAULT_NORMALIZATION, NORMALIZED, UNS_KEY
from .._utils import check_adata, check_counts
from ._models import ImputationModel
from ._models._base import check_max_epochs


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
    check_max_epochs(max_epochs)
    options = model_cls.make_options(**method_kwargs)  # refused before the layer is made
    if copy and layer == NORMALIZED and layer not in adata.layers:  # the normalization goes to the copy only
        adata, copy, return_copy = adata.copy(), False, True
    else:
        return_copy = False
    made = normalize_raw_counts(adata, method, layer, counts_layer)
    try:
        model = model_cls(
            adata, layer=layer, counts_layer=counts_layer, graph_key=graph_key, batch_key=batch_key, options=options
        )
        if not isinstance(return_model, bool | np.bool_):
            raise TypeError(f"return_model must be True or False, got {return_model!r}.")
        model._train(max_epochs, device=device, random_state=random_state, max_memory=max_memory, filename=filename)
    except BaseException:
        if made:
            _undo_normalization(adata, made)
        raise
    if copy:
        adata = adata.copy()
    model._write_result(adata, key)
    copy = copy or return_copy
    if not return_model:
        return adata if copy else None
    return (adata, model) if copy else model


def _default_normalization_text() -> str:
    """How each method's default layer is made, for :func:`impute`'s docstring (from ``DEFAULT_NORMALIZATION``)."""
    return ", ".join(f'``pp.normalize(method="{norm}")`` for ``"{m}"``' for m, norm in DEFAULT_NORMALIZATION.items())


if impute.__doc__:
    impute.__doc__ = impute.__doc__.replace("<DEFAULT_NORMALIZATION>", _default_normalization_text())
