from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from .._utils import check_adata
from ._utils import check_ax, check_show_save, new_figure, savefig_or_show

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_VAL = "val_"
#: A log scale is used (``log=None``) when the plotted values span at least this ratio.
LOG_RATIO = 10.0


def _history_keys(adata: AnnData) -> list[str]:
    return [k for k, v in adata.uns.items() if isinstance(v, dict) and isinstance(v.get("history"), dict)]


def _series(history: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Epoch numbers and every per-epoch series of a ``tl.impute`` history."""
    lengths = [np.asarray(v).size for k, v in history.items() if k != "epoch" and np.asarray(v).ndim == 1]
    n = int(np.asarray(history["epoch"]).size) if "epoch" in history else (max(lengths) if lengths else 0)
    epochs = np.asarray(history["epoch"], dtype=float) if "epoch" in history else np.arange(n, dtype=float)
    series = {
        str(k): np.asarray(v, dtype=float)
        for k, v in history.items()
        if k != "epoch" and np.asarray(v).ndim == 1 and np.asarray(v).size == n and np.asarray(v).dtype != bool
    }
    return epochs, series


def _plain_log_formatter(**kwargs: Any) -> Any:
    """Matplotlib's choice of which log ticks to label, written as plain numbers (0.3, 6, 20; not 3 × 10⁻¹)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(**kwargs)


def _scalar(history: dict, key: str) -> Any:
    v = history.get(key)
    return None if v is None else np.asarray(v).item()


def training_history(
    adata: AnnData,
    key: str = "scvgae",
    *,
    components: str | Sequence[str] | None = None,
    log: bool | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Loss components per epoch of an imputation run, from ``adata.uns[key]['history']``.

    Every per-epoch series :func:`scvgae_sc.tl.impute` recorded is drawn (for scVGAE: the total
    ``loss``, ``recon``, ``zinb`` and the ``masked`` self-supervision term; for GNNImpute also the
    validation curves ``val_*``, dashed in the colour of their training curve). When there is a
    validation curve, a vertical line marks the best epoch — the weights kept — and the legend says
    whether training stopped early.

    Parameters
    ----------
    adata
        Annotated data matrix.
    key
        The ``key_added`` of :func:`scvgae_sc.tl.impute` (its method name by default).
    components
        Training components to draw (their validation curves come with them). ``None``: all.
    log
        Logarithmic y axis. ``None``: when every value is positive and they span a factor of 10 or more.
    ax
        Axes to draw into (``None``: a new figure).
    show
        Show the figure (default ``sc.settings.autoshow``).
    save
        ``True`` or a str appended to the file name: save to ``sc.settings.figdir``, as Scanpy does.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure if ``return_fig``, the axes if ``show=False``, else `None`.

    Examples
    --------
    >>> sv.tl.impute(adata, method="gnnimpute", layer="total")
    >>> sv.pl.training_history(adata, "gnnimpute")
    """
    check_adata(adata)
    check_show_save(show, save, return_fig)
    check_ax(ax)
    if log is not None and not isinstance(log, bool | np.bool_):
        raise TypeError(f"log must be a bool or None, got {type(log).__name__}.")
    entry = adata.uns.get(key) if isinstance(key, str) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("history"), dict):
        have = ", ".join(repr(k) for k in _history_keys(adata)) or "none"
        raise ValueError(
            f"adata.uns[{key!r}] holds no training history (keys with one: {have}). Pass the key_added of "
            "`scvgae_sc.tl.impute`."
        )
    history = entry["history"]
    epochs, series = _series(history)
    if epochs.size == 0 or not series:
        raise ValueError(f"adata.uns[{key!r}]['history'] records no epochs; nothing to plot.")

    train = [k for k in series if not k.startswith(_VAL)]
    if components is None:
        chosen = train or [k[len(_VAL) :] for k in series]
    else:
        chosen = [components] if isinstance(components, str) else list(components)
        known = set(train) | {k[len(_VAL) :] for k in series if k.startswith(_VAL)}
        bad = [c for c in chosen if c not in known]
        if bad or not chosen:
            raise ValueError(
                f"components {bad or chosen!r} not in the history of {key!r} (components: "
                f"{', '.join(repr(c) for c in sorted(known))})."
            )
    chosen = sorted(chosen, key=lambda c: (c != "loss", list(series).index(c) if c in series else 0))
    drawn = [(c, c in series, f"{_VAL}{c}" in series) for c in chosen]

    values = np.concatenate(
        [series[c] for c, has, _ in drawn if has] + [series[f"{_VAL}{c}"] for c, _, has_val in drawn if has_val]
    )
    values = values[np.isfinite(values)]
    if log is None:
        log = bool(values.size and values.min() > 0 and values.max() / values.min() >= LOG_RATIO)

    from matplotlib import rcParams

    if ax is None:
        fig = new_figure(tuple(rcParams["figure.figsize"]))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    marker = "o" if epochs.size <= 10 else None
    colors = rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for i, (c, has, has_val) in enumerate(drawn):
        color = colors[i % len(colors)]
        lw = 2.0 if c == "loss" else 1.2
        if has:
            ax.plot(epochs, series[c], color=color, lw=lw, marker=marker, ms=3, label=c)
        if has_val:
            val = series[f"{_VAL}{c}"]
            ax.plot(epochs, val, color=color, lw=lw, ls="--", marker=marker, ms=3, label=f"{c} (validation)")
    best = _scalar(history, "best_epoch")
    if best is not None and any(has_val for _, _, has_val in drawn):
        label = f"best epoch {int(best)} (weights kept)"
        if _scalar(history, "stopped_early"):
            label += f"; stopped early at {int(_scalar(history, 'stopped_epoch'))}"
        ax.axvline(best, color="0.2", ls=":", lw=1.2, label=label)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_log_formatter())
        ax.yaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    method = entry.get("params", {}).get("method") if isinstance(entry.get("params"), dict) else None
    ax.set_title(key if method in (None, key) else f"{key} ({method})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (log scale)" if log else "loss")
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(False)
    return savefig_or_show(fig, ax, f"training_history_{key}", show=show, save=save, return_fig=return_fig)
