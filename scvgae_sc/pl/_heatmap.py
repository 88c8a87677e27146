from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import CELL_TYPE
from .._utils import check_adata, check_finite, get_layer
from ._utils import (
    as_categorical,
    categorical_colors,
    check_show_save,
    layer_name,
    new_figure,
    resolve_layers,
    savefig_or_show,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Gene names are written beside the first panel up to this many genes (``show_gene_labels=None``).
MAX_GENE_LABELS = 60


def _rank_markers(
    adata: AnnData, reference: str | None, groupby: str, groups: pd.Categorical, *, n_genes: int, method: str
) -> tuple[dict, list[str], list[Any]]:
    """``sc.tl.rank_genes_groups`` on a scratch AnnData; the top genes of each group, each gene once."""
    import scanpy as sc

    X = get_layer(adata, reference)
    if not sparse.issparse(X):
        X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    scratch = AnnData(
        X, obs=pd.DataFrame({groupby: groups}, index=adata.obs_names), var=pd.DataFrame(index=adata.var_names)
    )
    quiet = min(int(sc.settings.verbosity), int(sc.Verbosity.warning))
    with sc.settings.verbosity.override(quiet):
        sc.tl.rank_genes_groups(scratch, groupby, method=method, n_genes=n_genes, use_raw=False)
    result = scratch.uns["rank_genes_groups"]
    genes: list[str] = []
    gene_groups: list[Any] = []
    for g in groups.categories:
        for name in result["names"][str(g)][:n_genes]:
            if name not in genes:
                genes.append(str(name))
                gene_groups.append(g)
    return result, genes, gene_groups


def _zscore(M: np.ndarray, clip: float) -> np.ndarray:
    """Per-gene (column) z-score over cells; constant genes are 0."""
    mean = M.mean(axis=0)
    sd = M.std(axis=0)
    Z = np.divide(M - mean, sd, out=np.zeros_like(M), where=sd > 0)
    return np.clip(Z, -clip, clip)


def _groups(adata: AnnData, groupby: str):
    """``(keep, groups)``: the cells with a label and their groups, refusing fewer than 2 groups of 2 cells."""
    labels = as_categorical(adata.obs[groupby]).cat.remove_unused_categories()
    keep = labels.notna().to_numpy()
    if not keep.all():
        logg.warning(f"{int((~keep).sum())} cells without a {groupby!r} label are left out.")
    labels = labels[keep].cat.remove_unused_categories()
    groups = pd.Categorical(labels)
    if len(groups.categories) < 2:
        raise ValueError(f"adata.obs[{groupby!r}] has {len(groups.categories)} group(s); markers need at least 2.")
    small = [str(g) for g, n in pd.Series(groups).value_counts().items() if n < 2]
    if small:
        raise ValueError(f"groups {small} of adata.obs[{groupby!r}] have fewer than 2 cells; markers cannot be ranked.")
    return keep, groups


def _draw(layers, panels, genes, cells, *, cmap, vmax, groupby, n_genes, reference_layer, show_gene_labels):
    """The figure: a group colour bar and a heatmap per layer, a colour bar and the groups' legend."""
    codes, order, cats, colors, gcodes = cells
    from matplotlib import rcParams
    from matplotlib.colors import ListedColormap

    n_sel = len(genes)
    if show_gene_labels is None:
        show_gene_labels = n_sel <= MAX_GENE_LABELS
    h = float(np.clip(0.12 * n_sel + 2.0, 4.0, 14.0))
    w = max(2.4, 0.6 * rcParams["figure.figsize"][0])
    fig = new_figure((w * len(layers) + 1.5 + (1.2 if show_gene_labels else 0.8), h + 0.25 * -(-len(cats) // 5) + 0.6))
    grid = fig.add_gridspec(2, len(layers), height_ratios=[0.04 * h, h])
    bounds_cells = np.flatnonzero(np.diff(codes[order])) + 0.5
    bounds_genes = np.flatnonzero(np.diff(gcodes)) + 0.5
    gene_counts = np.bincount(gcodes, minlength=len(cats))
    centres_genes = np.cumsum(gene_counts) - gene_counts / 2 - 0.5
    heat_axes = []
    im = None
    for i, (layer, Z) in enumerate(zip(layers, panels, strict=True)):
        bar = fig.add_subplot(grid[0, i])
        bar.imshow(
            codes[order][None, :],
            aspect="auto",
            cmap=ListedColormap(colors),
            vmin=-0.5,
            vmax=len(cats) - 0.5,
            interpolation="nearest",
        )
        bar.set_axis_off()
        bar.set_title(layer_name(layer))
        ax = fig.add_subplot(grid[1, i], sharex=bar)
        im = ax.imshow(Z.T, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        for b in bounds_cells:
            ax.axvline(b, color="white", lw=0.8)
        for b in bounds_genes:
            ax.axhline(b, color="white", lw=0.8)
        ax.set_xticks([])
        ax.set_xlabel(f"{Z.shape[0]} cells by {groupby}")
        if i == 0:
            if show_gene_labels:
                ax.set_yticks(np.arange(n_sel), genes, fontsize="x-small")
            else:
                present = gene_counts > 0
                ax.set_yticks(centres_genes[present], [str(c) for c, p in zip(cats, present, strict=True) if p])
            ax.set_ylabel(f"top {n_genes} markers per group (ranked on {layer_name(reference_layer)!r})")
        else:
            ax.set_yticks([])
        ax.tick_params(length=0)
        heat_axes.append(ax)
    cb = fig.colorbar(im, ax=heat_axes, shrink=0.5, aspect=30, pad=0.02)
    cb.set_label("z-score per gene within layer")
    from matplotlib.patches import Patch

    fig.legend(
        handles=[Patch(color=c, label=str(g)) for g, c in zip(cats, colors, strict=True)],
        loc="outside lower center",
        ncols=min(len(cats), 5),
        title=groupby,
        frameon=False,
        fontsize="small",
    )
    return fig, heat_axes


def marker_heatmap(
    adata: AnnData,
    layers: str | Sequence[str | None] | None = None,
    groupby: str = CELL_TYPE,
    *,
    n_genes: int = 10,
    reference_layer: str | None = None,
    method: str = "wilcoxon",
    vmax: float = 2.5,
    cmap: str = "RdBu_r",
    show_gene_labels: bool | None = None,
    key_added: str | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """The same marker genes, side by side across layers, as a heatmap per layer (GNNImpute's figure).

    Markers are ranked once, on ``reference_layer``, with :func:`scanpy.tl.rank_genes_groups` run
    on a scratch copy (``adata.uns`` is left alone unless ``key_added`` is given): the top
    ``n_genes`` of each group, each gene kept once (with the first group that ranks it). Each panel
    shows those genes (rows, ordered by their group) in all cells (columns, ordered by group; cells
    without a label are left out), z-scored per gene within that layer and clipped to
    ``[-vmax, vmax]``, so the panels share one colour scale. A bar above each panel gives the cell
    groups, in the colours Scanpy uses for ``groupby``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    layers
        Layers to compare (``None`` in the list: ``X``). ``None``: the input layer of each
        imputation recorded by :func:`scvgae_sc.tl.impute` followed by each imputed layer (as in
        :func:`embedding_comparison`).
    groupby
        Categorical column of ``adata.obs`` (cell types or clusters).
    n_genes
        Top marker genes per group.
    reference_layer
        Layer the markers are ranked on (``None``: the first of ``layers``, usually the un-imputed
        one, so imputation does not pick its own markers).
    method
        Test of :func:`scanpy.tl.rank_genes_groups` (``"wilcoxon"``, ``"t-test"``, ``"logreg"``, ...).
    vmax
        z-scores are clipped to ``[-vmax, vmax]``, the range of the colour scale.
    cmap
        Colormap of the z-scores.
    show_gene_labels
        Write gene names beside the first panel (``None``: when there are at most 60 genes; otherwise
        the gene blocks are labelled with their group).
    key_added
        If given, the ranking is stored in ``adata.uns[key_added]`` (as ``rank_genes_groups`` stores it).
    show
        Show the figure (default ``sc.settings.autoshow``).
    save
        ``True`` or a str appended to the file name: save to ``sc.settings.figdir``, as Scanpy does.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure if ``return_fig``, the list of heatmap axes (one per layer) if ``show=False``, else
    `None`. If ``key_added`` is given, sets ``adata.uns[key_added]`` (the marker ranking).

    Examples
    --------
    >>> sv.pl.marker_heatmap(adata, ["normalized", "scvgae"], "cell_type", n_genes=5)
    """
    check_adata(adata, inplace=key_added is not None, min_obs=2)
    check_show_save(show, save, return_fig)
    layers = resolve_layers(adata, layers)
    if reference_layer is None:
        reference_layer = layers[0]
    else:
        resolve_layers(adata, [reference_layer], what="reference_layer")
    if isinstance(n_genes, bool) or not isinstance(n_genes, numbers.Integral) or n_genes < 1:
        raise ValueError(f"n_genes must be an integer >= 1, got {n_genes!r}.")
    if isinstance(vmax, bool) or not isinstance(vmax, numbers.Real) or not vmax > 0:
        raise ValueError(f"vmax must be a positive number, got {vmax!r}.")
    if key_added is not None and (not isinstance(key_added, str) or not key_added):
        raise TypeError(f"key_added must be a non-empty str or None, got {key_added!r}.")
    if not isinstance(groupby, str) or groupby not in adata.obs:
        have = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise ValueError(f"adata.obs has no column {groupby!r} (columns present: {have}). Pass groupby=...")
    keep, groups = _groups(adata, groupby)
    sub = adata[keep] if not keep.all() else adata
    for layer in layers:
        check_finite(get_layer(sub, layer), "adata.X" if layer is None else f"adata.layers[{layer!r}]")

    start = logg.info(f"ranking markers of {groupby!r} on {layer_name(reference_layer)!r} ({method})")
    result, genes, gene_groups = _rank_markers(
        sub, reference_layer, groupby, groups, n_genes=int(n_genes), method=method
    )
    logg.info("    finished", time=start, deep=f"{len(genes)} genes")
    gene_idx = adata.var_names.get_indexer(genes)
    codes = groups.codes
    order = np.argsort(codes, kind="stable")
    cats = list(groups.categories)
    full = list(as_categorical(adata.obs[groupby]).cat.categories)  # stored colours follow all categories
    full_colors = categorical_colors(adata, groupby, full)
    colors = [full_colors[full.index(c)] for c in cats]
    gcodes = np.array([cats.index(g) for g in gene_groups])

    panels = []
    for layer in layers:
        X = get_layer(sub, layer)
        M = X[:, gene_idx]
        M = M.toarray() if sparse.issparse(M) else np.asarray(M)
        panels.append(_zscore(M.astype(np.float64)[order], float(vmax)))

    fig, heat_axes = _draw(
        layers,
        panels,
        genes,
        (codes, order, cats, colors, gcodes),
        cmap=cmap,
        vmax=vmax,
        groupby=groupby,
        n_genes=n_genes,
        reference_layer=reference_layer,
        show_gene_labels=show_gene_labels,
    )
    if key_added is not None:
        adata.uns[key_added] = result
    return savefig_or_show(fig, heat_axes, "marker_heatmap", show=show, save=save, return_fig=return_fig)
