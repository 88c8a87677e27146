from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._utils import check_ax, check_show_save, new_figure, savefig_or_show

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Axis labels of the benchmark's metric columns.
_LABELS = {
    "paper_ari": "ARI (paper protocol)",
    "paper_ami": "AMI (paper protocol)",
    "paper_nmi": "NMI (paper protocol)",
    "leiden_ari": "ARI (Leiden protocol)",
    "leiden_ami": "AMI (Leiden protocol)",
    "leiden_nmi": "NMI (Leiden protocol)",
    "ari": "ARI",
    "ami": "AMI",
    "nmi": "NMI",
    "mse": "MSE (masked entries)",
    "mae": "MAE (masked entries)",
    "pearson": "Pearson r (masked entries)",
    "cosine": "cosine similarity (masked entries)",
    "seconds": "wall time (s)",
    "peak_mb": "peak memory (MB)",
}
#: How the benchmark's ``method="none"`` (no imputation) is labelled.
_DISPLAY = {"none": "un-imputed"}
DATASET = "dataset"


def _records(data: Any) -> pd.DataFrame:
    """A long-format DataFrame from a DataFrame, records, a benchmark JSON dict, or the path to one."""
    if isinstance(data, pd.DataFrame):
        return data.copy()
    if isinstance(data, str | PathLike):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is not a file; pass a JSON file written by the benchmarks ('bench.py').")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not valid JSON ({e}).") from None
    if isinstance(data, Mapping):
        if "records" not in data:
            raise ValueError(
                f"a benchmark dict must hold 'records' (the format of benchmarks/bench.py); got keys {sorted(data)}."
            )
        data = data["records"]
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        if not all(isinstance(r, Mapping) for r in data):
            raise TypeError("data as a list must hold records (dicts with keys such as 'method', 'dataset', 'ARI').")
        return pd.DataFrame.from_records(list(data))
    raise TypeError(
        "data must be a pandas DataFrame, a list of records, a benchmark dict with 'records', or the path of a "
        f"benchmark JSON; got {type(data).__name__}."
    )


def _resolve_metric(df: pd.DataFrame, metric: str) -> str:
    """The column ``metric`` names: exact, case-insensitive, or the paper protocol's (``ARI`` → ``paper_ari``)."""
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric must be a column name (str), got {metric!r}.")
    if metric in df.columns:
        return metric
    lower = {str(c).lower(): c for c in df.columns}
    for candidate in (metric.lower(), f"paper_{metric.lower()}"):
        if candidate in lower:
            return lower[candidate]
    numeric = [str(c) for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c not in ("seed", "n_obs")]
    raise ValueError(f"no metric {metric!r} in data (numeric columns: {', '.join(numeric) or 'none'}).")


def _order(present: list[Any], wanted: Sequence[Any] | None, what: str) -> list[Any]:
    if wanted is None:
        return present
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    missing = [w for w in wanted if w not in present]
    if missing or not wanted:
        raise ValueError(
            f"{what} {missing or wanted!r} not in data ({what} present: {', '.join(map(str, present)) or 'none'})."
        )
    return wanted


def scores(
    data: pd.DataFrame | Sequence[Mapping[str, Any]] | PathLike[str] | str,
    metric: str = "ARI",
    *,
    group: str = "method",
    groups: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Grouped bars of a score: one group of bars per dataset, one bar per method, mean ± sd over seeds.

    Reads the records :file:`benchmarks/bench.py` writes (keys ``dataset``, ``method``, ``seed``,
    ``task``, ``paper_ari``, ``leiden_ari``, ``mse``, ``pearson``, ...), or any long-format table
    with a ``group`` column, an optional ``dataset`` column and a metric column. Rows without the
    metric (another task, a failed job, NaN) are left out; each bar is the mean over the remaining
    rows (seeds), with the standard deviation as error bar when there are two or more. Each
    ``group`` value keeps its colour from chart to chart (the colour cycle in order of first
    appearance in ``data``).

    Parameters
    ----------
    data
        A :class:`pandas.DataFrame` in long format, a list of records (dicts), a benchmark dict
        with ``"records"``, or the path of a JSON file written by the benchmarks (``bench.py``).
    metric
        Column to plot: its exact name, a case-insensitive match, or a short name of the
        paper-protocol column (``"ARI"`` → ``paper_ari``; pass ``"leiden_ari"`` for Leiden).
    group
        Column whose values get one bar each (``"variant"`` for the benchmark's ablation).
        The benchmark's ``method="none"`` is labelled "un-imputed".
    groups
        Which values of ``group`` to show, in this order (``None``: all, in order of appearance).
    datasets
        Which datasets to show, in this order (``None``: all, in order of appearance).
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
    >>> sv.pl.scores("scvgae.json", "ARI")
    >>> sv.pl.scores("scvgae.json", "pearson")
    """
    check_show_save(show, save, return_fig)
    check_ax(ax)
    df = _records(data)
    if "error" in df.columns:
        df = df[df["error"].isna()]
    if not isinstance(group, str) or group not in df.columns:
        raise ValueError(
            f"data has no column {group!r} to group bars by (columns: {', '.join(map(str, df.columns)) or 'none'})."
        )
    col = _resolve_metric(df, metric)
    # colours follow each group's first appearance in all the data, so charts of different metrics match
    colour_order = list(dict.fromkeys(df[group]))
    df = df.assign(_value=pd.to_numeric(df[col], errors="coerce"))
    df = df[np.isfinite(df["_value"])]
    if DATASET not in df.columns:
        df = df.assign(**{DATASET: ""})
    if df.empty:
        raise ValueError(f"no finite values of {col!r} in data; nothing to plot.")
    ds_order = _order(list(dict.fromkeys(df[DATASET])), datasets, "datasets")
    grp_order = _order(list(dict.fromkeys(df[group])), groups, f"{group} values")
    df = df[df[DATASET].isin(ds_order) & df[group].isin(grp_order)]
    stats = df.groupby([DATASET, group], sort=False)["_value"].agg(["mean", "std", "count"])

    from matplotlib import rcParams

    if ax is None:
        w, h = rcParams["figure.figsize"]
        fig = new_figure((max(w, 1.2 + 0.35 * len(ds_order) * (len(grp_order) + 1)), h))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    colors = rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    width = 0.8 / len(grp_order)
    x = np.arange(len(ds_order), dtype=float)
    for j, g in enumerate(grp_order):
        means, sds, xs = [], [], []
        for i, ds in enumerate(ds_order):
            if (ds, g) not in stats.index:
                continue
            row = stats.loc[(ds, g)]
            xs.append(x[i] - 0.4 + width * (j + 0.5))
            means.append(row["mean"])
            sds.append(row["std"] if row["count"] > 1 else np.nan)
        if not xs:
            continue
        label = _DISPLAY.get(str(g), str(g)) if group == "method" else str(g)
        yerr = None if np.all(np.isnan(sds)) else np.nan_to_num(np.asarray(sds, dtype=float))
        color = colors[colour_order.index(g) % len(colors)]
        ax.bar(xs, means, width=width * 0.92, color=color, label=label, yerr=yerr, capsize=3)
    ax.set_xticks(x, [str(d) for d in ds_order])
    if stats["mean"].min() >= 0:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(_LABELS.get(str(col).lower(), str(col)))
    n_max = int(stats["count"].max())
    if n_max > 1:
        ax.set_title(f"mean ± sd over up to {n_max} runs (seeds)", fontsize="medium")
    ax.legend(title=group, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return savefig_or_show(fig, ax, f"scores_{col}", show=show, save=save, return_fig=return_fig)
