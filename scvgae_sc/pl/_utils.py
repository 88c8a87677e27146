"""Plumbing shared by the plotting functions: Scanpy's show / save / return_fig conventions, colours, layers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from .._constants import NORMALIZED, UNS_KEY

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Methods whose ``adata.uns[key]`` entries :func:`imputed_keys` recognizes (``tl.impute``'s).
_IMPUTE_METHODS = ("scvgae", "gnnimpute")
#: Name shown for ``layer=None`` (``adata.X``).
X_NAME = "X"


# --------------------------------------------------------------------------------------------------
# show / save / return_fig
# --------------------------------------------------------------------------------------------------


def figure_path(writekey: str, save: bool | str) -> Path:
    """Where ``save`` writes a figure, by Scanpy's rule.

    ``save=True`` → ``sc.settings.figdir / f"{writekey}{plot_suffix}.{file_format_figs}"``; a string is appended
    to ``writekey``, and an ending ``.png``, ``.pdf`` or ``.svg`` picks the format.
    """
    import scanpy as sc

    ext = None
    if isinstance(save, str):
        for try_ext in (".svg", ".pdf", ".png"):
            if save.endswith(try_ext):
                ext = try_ext[1:]
                save = save[: -len(try_ext)]
                break
        writekey += save
    ext = ext or sc.settings.file_format_figs
    return Path(sc.settings.figdir) / f"{writekey}{sc.settings.plot_suffix}.{ext}"


def check_show_save(show: Any, save: Any, return_fig: Any) -> None:
    """Refuse wrong types for the three output arguments before any work is done."""
    if show is not None and not isinstance(show, bool | np.bool_):
        raise TypeError(f"show must be a bool or None, got {type(show).__name__}.")
    if save is not None and not isinstance(save, bool | np.bool_ | str):
        raise TypeError(
            f"save must be a bool, a str (appended to the file name, e.g. '_pbmc.png') or None, got "
            f"{type(save).__name__}. To write to a path of your choice, use return_fig=True and fig.savefig(path)."
        )
    if not isinstance(return_fig, bool | np.bool_):
        raise TypeError(f"return_fig must be a bool, got {type(return_fig).__name__}.")


def savefig_or_show(
    fig: Figure,
    axes: Axes | Sequence[Axes],
    writekey: str,
    *,
    show: bool | None,
    save: bool | str | None,
    return_fig: bool,
) -> Figure | Axes | list[Axes] | None:
    """Save, show and return like a Scanpy plotting function.

    ``save`` (or ``sc.settings.autosave``) writes ``fig`` to :func:`figure_path`; ``return_fig=True`` returns
    the figure; otherwise ``show`` (default ``sc.settings.autoshow``) shows it and returns ``None``, or returns
    ``axes`` when ``show=False``. As in Scanpy, a saved figure that is neither shown nor returned is closed.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc
    from scanpy import logging as logg

    save = sc.settings.autosave if save is None else save
    if save:
        path = figure_path(writekey, save)
        path.parent.mkdir(parents=True, exist_ok=True)
        logg.warning(f"saving figure to file {path}")
        fig.savefig(path, bbox_inches="tight")
    if return_fig:
        return fig
    show = sc.settings.autoshow if show is None else show
    if show:
        plt.show()
        return None
    if save:
        plt.close(fig)
    return axes


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with constrained layout (legends and colorbars outside the axes get room)."""
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


def check_ax(ax: Any) -> None:
    """Refuse an ``ax`` that is not a matplotlib Axes."""
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}.")


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------


def layer_name(layer: str | None) -> str:
    """How a layer is named in titles and keys (``None``: ``"X"``)."""
    return X_NAME if layer is None else layer


def imputed_keys(adata: AnnData) -> list[str]:
    """Keys of the imputations :func:`scvgae_sc.tl.impute` recorded in ``adata``, in ``uns`` order.

    An entry counts when ``adata.uns[key]`` holds ``params`` (with a known ``method``) and ``history``, and
    ``adata.layers[key]`` exists.
    """
    keys = []
    for key, entry in adata.uns.items():
        if not isinstance(entry, dict) or "params" not in entry or "history" not in entry:
            continue
        params = entry["params"]
        if isinstance(params, dict) and params.get("method") in _IMPUTE_METHODS and key in adata.layers:
            keys.append(key)
    return keys


def default_layers(adata: AnnData) -> list[str | None]:
    """The layers compared when the user gives none.

    The input layer of each imputation recorded by :func:`scvgae_sc.tl.impute` (usually ``"normalized"``;
    ``None`` for ``X``), then each imputed layer. Without any recorded imputation: ``["normalized"]``.
    """
    imputed = imputed_keys(adata)
    inputs: list[str | None] = []
    for key in imputed:
        src = adata.uns[key]["params"].get("layer")  # absent: the imputation read X
        if (src is None or src in adata.layers) and src not in inputs:
            inputs.append(src)
    layers = inputs + [k for k in imputed if k not in inputs]
    if not imputed and NORMALIZED in adata.layers:
        layers = [NORMALIZED]
    if not layers:
        have = ", ".join(repr(k) for k in adata.layers) or "none"
        raise ValueError(
            f"layers=None compares the normalized layer with the layers imputed by `scvgae_sc.tl.impute`, but adata "
            f"has neither {NORMALIZED!r} nor a recorded imputation (layers present: {have}). Pass layers=[...]."
        )
    return layers


def resolve_layers(adata: AnnData, layers: Any, *, what: str = "layers") -> list[str | None]:
    """Validate ``layers`` (``None``, one name, or a sequence of names; ``None`` entries mean ``X``).

    Every missing layer is named in one error, with the layers present.
    """
    if layers is None:
        return default_layers(adata)
    if isinstance(layers, str):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"{what} must be a layer name, a sequence of layer names or None, got {layers!r}.") from None
    if not layers:
        raise ValueError(f"{what} is empty; name at least one layer.")
    for layer in layers:
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"{what} must hold layer names (str, or None for X), got {layer!r}.")
    names = [layer_name(x) for x in layers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names {', '.join(repr(d) for d in dupes)} more than once.")
    missing = [x for x in layers if x is not None and x not in adata.layers]
    if missing:
        have = ", ".join(repr(k) for k in adata.layers) or "none"
        raise ValueError(
            f"adata.layers has no {', '.join(repr(m) for m in missing)} (layers present: {have}). "
            "Impute first (`scvgae_sc.tl.impute(adata, method=...)`) or pick layers that exist."
        )
    if None in layers and adata.X is None:
        raise ValueError("adata.X is None; `None` in layers means X. Name layers that hold data.")
    return layers


def fingerprint(X: np.ndarray | sparse.spmatrix) -> str:
    """A content hash of a matrix (shape, dtype and values), to tell whether a cached result is stale."""
    h = hashlib.blake2b(digest_size=16)
    kind = "sparse" if sparse.issparse(X) else "dense"  # not the class: views, csr_matrix / csr_array hash alike
    h.update(repr((kind, tuple(X.shape), str(X.dtype))).encode())
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        if not X.has_canonical_format:  # on a copy: the caller's matrix is not touched
            X = X.copy()
            X.sum_duplicates()
        parts = (X.data, X.indices, X.indptr)
    else:
        parts = (np.asarray(X),)
    for part in parts:
        h.update(np.ascontiguousarray(part).data)
    return h.hexdigest()


def pl_cache(adata: AnnData, section: str) -> dict:
    """``adata.uns["scvgae_sc"][section]``, created if missing (the plotting caches)."""
    root = adata.uns.setdefault(UNS_KEY, {})
    return root.setdefault(section, {})


def params_for_cache(**params: Any) -> dict:
    """The params of a cached result as stored in ``uns`` (``None`` values dropped, as ``write_h5ad`` needs)."""
    return {k: v for k, v in params.items() if v is not None}


def cached_entry(adata: AnnData, section: str) -> dict:
    """``adata.uns["scvgae_sc"][section]`` if present, else an empty dict (nothing is written)."""
    root = adata.uns.get(UNS_KEY, {})
    entry = root.get(section, {}) if isinstance(root, dict) else {}
    return entry if isinstance(entry, dict) else {}


def same_params(stored: Any, params: dict) -> bool:
    """Whether a stored params dict (possibly read back from h5ad, with NumPy scalars) equals ``params``."""
    if not isinstance(stored, dict) or set(stored) != set(params):
        return False
    for k, v in params.items():
        s = stored[k]
        if isinstance(v, str) or isinstance(s, str):
            if str(s) != str(v):
                return False
        elif not np.array_equal(np.asarray(s), np.asarray(v)):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# colours
# --------------------------------------------------------------------------------------------------


def categorical_colors(adata: AnnData, key: str, categories: Sequence[Any]) -> list[str]:
    """Colours of ``categories`` of ``adata.obs[key]``: ``adata.uns[f"{key}_colors"]`` if it fits, else Scanpy's.

    Scanpy's default rule: the matplotlib colour cycle when it is long enough, then its 20-, 28- and 102-colour
    palettes, then grey.
    """
    from matplotlib import colors as mcolors
    from matplotlib import rcParams
    from scanpy.plotting import palettes

    n = len(categories)
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= n and all(mcolors.is_color_like(c) for c in stored[:n]):
        return [mcolors.to_hex(c, keep_alpha=True) for c in stored[:n]]
    cycle = rcParams["axes.prop_cycle"].by_key().get("color", [])
    if len(cycle) >= n:
        palette = list(cycle)
    elif n <= 20:
        palette = list(palettes.default_20)
    elif n <= 28:
        palette = list(palettes.default_28)
    elif n <= len(palettes.default_102):
        palette = list(palettes.default_102)
    else:
        palette = ["grey"] * n
    return [mcolors.to_hex(c, keep_alpha=True) for c in palette[:n]]


def is_categorical(values: Any) -> bool:
    """Whether an ``obs`` column is categorical (category, object/str or bool dtype)."""
    import pandas as pd

    return (
        isinstance(values.dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(values)
        or pd.api.types.is_string_dtype(values)
        or pd.api.types.is_bool_dtype(values)
    )


def as_categorical(values: Any) -> Any:
    """An ``obs`` column as a pandas Categorical (bools and strings converted, categories kept as they are)."""
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype):
        return values
    if pd.api.types.is_bool_dtype(values):
        values = values.astype(str)
    return values.astype("category")
