from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import CELL_TYPE
from .._utils import check_adata, check_finite, get_layer, keep_torch_threads
from ._utils import (
    as_categorical,
    cached_entry,
    categorical_colors,
    check_show_save,
    fingerprint,
    is_categorical,
    layer_name,
    new_figure,
    params_for_cache,
    pl_cache,
    resolve_layers,
    same_params,
    savefig_or_show,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_BASES = ("umap", "tsne", "pca")
#: Axis-label stem of each basis.
_AXIS = {"umap": "UMAP", "tsne": "tSNE", "pca": "PC"}
_PROTOCOLS = ("paper", "leiden")
#: ``adata.uns["scvgae_sc"][...]`` sections of the caches.
EMBEDDINGS = "embeddings"
CLUSTERING = "clustering"


def embedding_key(basis: str, layer: str | None) -> str:
    """``obsm`` key of the cached ``basis`` embedding computed from ``layer``."""
    return f"X_{basis}_{layer_name(layer)}"


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _resolve_bases(basis: Any) -> list[str]:
    bases = [basis] if isinstance(basis, str) else basis
    try:
        bases = list(bases)
    except TypeError:
        raise TypeError(f"basis must be one of {_BASES} or a sequence of them, got {basis!r}.") from None
    bad = [b for b in bases if b not in _BASES]
    if bad or not bases:
        raise ValueError(f"basis must be one of {_BASES} or a non-empty sequence of them, got {basis!r}.")
    if len(set(bases)) != len(bases):
        raise ValueError(f"basis names a basis more than once: {basis!r}.")
    return bases


def _resolve_score(score: Any, n_obs: int) -> str | None:
    """``True`` → the paper protocol (Leiden above its cell limit); a protocol name; ``False`` → ``None``."""
    from ..tl._score import PAPER_MAX_CELLS

    if isinstance(score, bool | np.bool_):
        if not score:
            return None
        return "paper" if n_obs <= PAPER_MAX_CELLS else "leiden"
    if score in _PROTOCOLS:
        return str(score)
    raise ValueError(f"score must be True, False, 'paper' or 'leiden', got {score!r}.")


def _compute_embeddings(
    X: np.ndarray | sparse.spmatrix,
    bases: Sequence[str],
    *,
    n_pcs: int,
    n_neighbors: int,
    random_state: int | None,
) -> dict[str, np.ndarray]:
    """PCA → (neighbors → UMAP | t-SNE) on a scratch AnnData holding ``X`` (never modified)."""
    import scanpy as sc

    if not sparse.issparse(X):
        X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    scratch = AnnData(X)
    n_obs = scratch.n_obs
    out = {}
    quiet = min(int(sc.settings.verbosity), int(sc.Verbosity.warning))
    with sc.settings.verbosity.override(quiet), keep_torch_threads():  # numba's OpenMP start resets torch's
        sc.pp.pca(scratch, n_comps=n_pcs, random_state=random_state)
        if "pca" in bases:
            out["pca"] = scratch.obsm["X_pca"]
        if "umap" in bases:
            sc.pp.neighbors(scratch, n_neighbors=n_neighbors, use_rep="X_pca", random_state=random_state)
            sc.tl.umap(scratch, random_state=random_state)
            out["umap"] = scratch.obsm["X_umap"]
        if "tsne" in bases:
            perplexity = float(min(30.0, max(1.0, (n_obs - 1) / 3)))  # sklearn needs perplexity < n_obs
            sc.tl.tsne(scratch, use_rep="X_pca", perplexity=perplexity, random_state=random_state)
            out["tsne"] = scratch.obsm["X_tsne"]
    return {b: np.asarray(v, dtype=np.float32) for b, v in out.items()}


def _check_labels(adata: AnnData, color, labels_key, score, kwargs) -> tuple[str | None, str | None]:
    """``(labels_key, protocol)``: the labels the scores use and the clustering protocol (``None``: no scores)."""
    for bad in ("ax", "basis", "color", "show", "save", "return_fig", "layer", "title"):
        if bad in kwargs:
            raise TypeError(f"embedding_comparison() sets {bad!r} of scanpy.pl.embedding itself; do not pass it.")
    if color is not None and (not isinstance(color, str) or color not in adata.obs):
        have = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise ValueError(f"color must be a column of adata.obs or None; got {color!r} (columns present: {have}).")
    if labels_key is None:
        labels_key = color if color is not None and is_categorical(adata.obs[color]) else None
    elif not isinstance(labels_key, str) or labels_key not in adata.obs:
        have = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise ValueError(f"adata.obs has no column {labels_key!r} (columns present: {have}). Pass labels_key=...")
    protocol = _resolve_score(score, adata.n_obs)
    if labels_key is None:
        if protocol is not None and not isinstance(score, bool | np.bool_):
            raise ValueError(
                f"score={score!r} needs labels, but color={color!r} is not a categorical column of adata.obs. "
                "Pass labels_key=... (e.g. 'cell_type'), or score=False."
            )
        protocol = None

    return labels_key, protocol


def _layer_results(adata, layer, bases, settings, labels, stored, new, embeddings, scores) -> None:
    """One layer's embeddings and clustering scores, from the cache or computed (into ``embeddings`` / ``scores``).

    ``labels``: ``(protocol, labels_key, labels_digest)``; ``stored``: the cached embeddings and scores; ``new``: the
    obsm arrays and cache entries to write once everything worked.
    """
    n_pcs, n_neighbors, random_state = settings["n_pcs"], settings["n_neighbors"], settings["random_state"]
    protocol, labels_key, labels_digest = labels
    stored_embeddings, stored_scores = stored
    new_obsm, new_entries = new
    name = layer_name(layer)
    X = get_layer(adata, layer)
    check_finite(X, "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    digest = fingerprint(X)
    todo = []
    for b in bases:
        key = embedding_key(b, layer)
        params = params_for_cache(
            layer=name,
            basis=b,
            n_pcs=n_pcs,
            n_neighbors=n_neighbors if b == "umap" else None,
            random_state=random_state,
            fingerprint=digest,
        )
        entry = stored_embeddings.get(key, {})
        if key in adata.obsm and same_params(entry.get("params") if isinstance(entry, dict) else None, params):
            embeddings[b, name] = np.asarray(adata.obsm[key])
        else:
            todo.append((b, key, params))
    if todo:
        start = logg.info(f"computing {', '.join(b for b, _, _ in todo)} of {name!r}")
        new = _compute_embeddings(
            X, [b for b, _, _ in todo], n_pcs=n_pcs, n_neighbors=n_neighbors, random_state=random_state
        )
        for b, key, params in todo:
            embeddings[b, name] = new_obsm[key] = new[b]
            new_entries[EMBEDDINGS][key] = {"params": params}
        logg.info("    finished", time=start)
    if protocol is not None:
        sparams = params_for_cache(
            protocol=protocol,
            labels_key=labels_key,
            random_state=random_state if protocol == "leiden" else None,
            fingerprint=digest,
            labels_fingerprint=labels_digest,
        )
        entry = stored_scores.get(name, {})
        if isinstance(entry, dict) and same_params(entry.get("params"), sparams):
            scores[name] = {m: float(entry[m]) for m in ("ari", "ami", "nmi")}
        else:
            from ..tl import score_clustering

            s = score_clustering(adata, layer, labels_key=labels_key, protocol=protocol, random_state=random_state)
            scores[name] = {m: float(s[m]) for m in ("ari", "ami", "nmi")}
            new_entries[CLUSTERING][name] = {"params": sparams, **scores[name]}


def _draw(adata, embeddings, scores, panels_of, *, color, protocol, ncols, kwargs):
    """The figure: one panel per basis and layer, titled with the layer's score, and one legend."""
    import scanpy as sc

    bases, layers = panels_of
    # one scratch AnnData to draw from: shared obs colours, every embedding
    from matplotlib import rcParams

    plot = AnnData(obs=adata.obs[[color]].copy() if color is not None else adata.obs[[]].copy())
    cats = None
    if color is not None and is_categorical(plot.obs[color]):
        plot.obs[color] = as_categorical(plot.obs[color])
        cats = list(plot.obs[color].cat.categories)
        if "palette" not in kwargs:
            plot.uns[f"{color}_colors"] = categorical_colors(adata, color, cats)
    for (b, name), E in embeddings.items():
        plot.obsm[embedding_key(b, name)] = E
    # one figure legend for categories, unless the caller asks scanpy for its own (e.g. legend_loc="on data")
    legend_loc = kwargs.pop("legend_loc", None if cats else "right margin")
    fig_legend = cats is not None and legend_loc is None

    panels = [(b, layer) for b in bases for layer in layers]
    ncol = len(layers) if ncols is None else min(ncols, len(panels))
    nrow = -(-len(panels) // ncol)
    side = float(rcParams["figure.figsize"][1])
    legend_w = 1.8 if fig_legend else 0.0
    fig = new_figure((ncol * side + legend_w, nrow * side))
    grid = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in grid[len(panels) :]:
        ax.remove()
    axes = list(grid[: len(panels)])
    for ax, (b, layer) in zip(axes, panels, strict=True):
        name = layer_name(layer)
        title = name
        if name in scores:
            title += f"\nARI {scores[name]['ari']:.3f} ({protocol})"
        sc.pl.embedding(
            plot,
            basis=embedding_key(b, layer),
            color=color,
            ax=ax,
            show=False,
            title=title,
            legend_loc=legend_loc,
            **kwargs,
        )
        ax.set_xlabel(f"{_AXIS[b]}1")
        ax.set_ylabel(f"{_AXIS[b]}2")
    if fig_legend:
        from matplotlib.lines import Line2D

        palette = plot.uns.get(f"{color}_colors", categorical_colors(plot, color, cats))
        handles = [
            Line2D([], [], marker="o", linestyle="", markersize=7, color=c, label=str(cat))
            for cat, c in zip(cats, palette, strict=False)
        ]
        fig.legend(
            handles=handles,
            loc="outside right center",
            title=color,
            frameon=False,
            ncols=1 if len(cats) <= 14 else 2 if len(cats) <= 30 else 3,
        )
    return fig, axes


def embedding_comparison(
    adata: AnnData,
    layers: str | Sequence[str | None] | None = None,
    basis: Literal["umap", "tsne", "pca"] | Sequence[Literal["umap", "tsne", "pca"]] = ("umap", "tsne"),
    *,
    color: str | None = CELL_TYPE,
    labels_key: str | None = None,
    score: bool | Literal["paper", "leiden"] = True,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    random_state: int | None = 0,
    ncols: int | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Figure | list[Axes] | None:
    """UMAP / t-SNE of the un-imputed and each imputed layer, side by side, coloured alike.

    For each layer, an embedding is computed from that layer alone — PCA (``n_pcs`` components, no
    scaling) → ``n_neighbors``-nearest-neighbour graph → UMAP, or PCA → t-SNE — on a scratch copy,
    so ``X``, the layers and your own ``obsm['X_pca']`` / ``obsp`` neighbours stay as they are. The
    result is cached in ``adata.obsm[f'X_{basis}_{layer}']`` with its parameters and a hash of the
    layer in ``adata.uns['scvgae_sc']['embeddings']``: a second call with the same parameters on the
    same data reuses it, a changed layer or parameter recomputes it. Panels are drawn with
    :func:`scanpy.pl.embedding`, one per layer × basis (rows: bases, columns: layers), with one
    shared legend.

    When labels exist, each panel's title gives the ARI of clustering that layer against them
    (:func:`scvgae_sc.tl.score_clustering`; the paper protocol by default), cached likewise in
    ``adata.uns['scvgae_sc']['clustering']``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    layers
        Layers to compare (``None`` in the list: ``X``). ``None``: the input layer of each
        imputation recorded by :func:`scvgae_sc.tl.impute` (usually ``"normalized"``) followed
        by each imputed layer; just ``"normalized"`` if nothing was imputed. A layer that does not
        exist is an error.
    basis
        ``"umap"``, ``"tsne"``, ``"pca"`` (first two principal components), or several.
    color
        Column of ``adata.obs`` to colour by (``None``: no colour).
    labels_key
        Column of ``adata.obs`` holding the labels the ARI is computed against. ``None``: ``color``
        if it is a categorical column, else no score.
    score
        ``True``: score each layer with the paper protocol (the Leiden protocol above 20,000 cells,
        where the paper protocol is refused); ``"paper"`` or ``"leiden"``: that protocol; ``False``:
        no score.
    n_pcs
        Principal components the embeddings are computed from (at most
        ``min(n_obs, n_vars) - 1``; lowered to that with a message).
    n_neighbors
        Size of the neighbourhood graph UMAP is computed from (at most ``n_obs - 1``).
    random_state
        Seed of PCA, neighbours, UMAP, t-SNE and of the Leiden protocol.
    ncols
        Panels per row. ``None``: one row per basis, one column per layer.
    show
        Show the figure (default ``sc.settings.autoshow``).
    save
        ``True`` or a str appended to the file name (its ending ``.png``, ``.pdf`` or ``.svg`` picks the
        format): save to ``sc.settings.figdir``, as Scanpy does.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``size``, ``frameon``, ``palette``).

    Returns
    -------
    The figure if ``return_fig``, the list of panel axes if ``show=False``, else `None`. Sets the
    following fields:

    ``adata.obsm[f'X_{basis}_{layer}']``
        The embedding of each layer (``X`` for ``layer=None``).
    ``adata.uns['scvgae_sc']['embeddings'][obsm_key]['params']``
        How it was computed (layer, basis, n_pcs, n_neighbors, random_state, layer hash).
    ``adata.uns['scvgae_sc']['clustering'][layer]``
        The layer's clustering scores (``ari``, ``ami``, ``nmi``) and their ``params``, if scored.

    Nothing is cached when ``adata`` is a view.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.filter(adata)
    >>> sv.pp.normalize(adata)
    >>> sv.tl.impute(adata, method="scvgae")
    >>> sv.pl.embedding_comparison(adata, basis="umap")
    """
    check_adata(adata, min_obs=3, min_vars=2)
    check_show_save(show, save, return_fig)
    layers = resolve_layers(adata, layers)
    bases = _resolve_bases(basis)
    n_pcs = _check_int("n_pcs", n_pcs, 2)
    n_neighbors = _check_int("n_neighbors", n_neighbors, 2)
    if ncols is not None:
        ncols = _check_int("ncols", ncols, 1)
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral)):
        raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}.")
    labels_key, protocol = _check_labels(adata, color, labels_key, score, kwargs)

    max_pcs = min(adata.n_obs, adata.n_vars) - 1
    if n_pcs > max_pcs:
        logg.info(f"n_pcs={n_pcs} lowered to {max_pcs} (at most min(n_obs, n_vars) - 1)")
        n_pcs = max_pcs
    n_neighbors = min(n_neighbors, adata.n_obs - 1)

    cache = not adata.is_view
    if not cache:
        logg.warning("adata is a view: embeddings and scores are computed but not cached.")
    embeddings: dict[tuple[str, str], np.ndarray] = {}
    scores: dict[str, dict] = {}
    new_obsm: dict[str, np.ndarray] = {}  # written only once everything worked: a failure leaves adata as it was
    new_entries: dict[str, dict[str, dict]] = {EMBEDDINGS: {}, CLUSTERING: {}}
    labels_digest = None
    if protocol is not None:  # relabelled cells must be scored again
        labels_digest = fingerprint(pd.util.hash_pandas_object(adata.obs[labels_key], index=False).to_numpy())
    stored_embeddings = cached_entry(adata, EMBEDDINGS)
    stored_scores = cached_entry(adata, CLUSTERING)
    stored = (stored_embeddings, stored_scores)
    new = (new_obsm, new_entries)
    settings = {"n_pcs": n_pcs, "n_neighbors": n_neighbors, "random_state": random_state}
    for layer in layers:
        labels = (protocol, labels_key, labels_digest)
        _layer_results(adata, layer, bases, settings, labels, stored, new, embeddings, scores)

    fig, axes = _draw(
        adata, embeddings, scores, (bases, layers), color=color, protocol=protocol, ncols=ncols, kwargs=kwargs
    )
    if cache:
        for key, E in new_obsm.items():
            if key in adata.obsm and key not in stored_embeddings:
                logg.warning(f"overwriting adata.obsm[{key!r}], which was not made by embedding_comparison")
            adata.obsm[key] = E
        for section, entries in new_entries.items():
            if entries:
                pl_cache(adata, section).update(entries)
    return savefig_or_show(fig, axes, "embedding_comparison", show=show, save=save, return_fig=return_fig)
