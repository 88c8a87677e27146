"""Methods x datasets tables from the benchmark summary (``benchmarks/results/summary.json``).

The README's headline table and the tables of the documentation's Benchmarks page are this script's output, so
that every figure they show is read from the canonical results::

    python benchmarks/tables.py                 # the README's headline table
    python benchmarks/tables.py --denoising     # the README's denoising table (molecular cross-validation)
    python benchmarks/tables.py --all           # the Benchmarks page's tables (one per task and metric)

The documentation build calls :func:`page_tables` itself; the README's table is pasted from the first command,
and ``tests/test_product_text.py`` checks that the two agree.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUMMARY = HERE / "results" / "summary.json"
DENOISE_SUMMARY = HERE / "results" / "denoise_summary.json"
DATASETS = ("pbmc3k", "pbmc68k", "bladder", "baron_mouse")
NAMES = {
    "none": "no imputation",
    "alra": "ALRA",
    "magic": "MAGIC",
    "scvi": "scVI",
    "knn_fill": "k-NN fill (15 neighbours)",
    "knn_fill_gated": "k-NN fill, gated",
    "knn_fill_2step": "k-NN fill, 2-step",
    "knn_fill_2step_gated": "k-NN fill, 2-step, gated",
    "scvgae": "**scVGAE**",
    "gnnimpute": "**GNNImpute**",
}
#: Rows of the headline table: the un-imputed data, the peers, the best model-free fill, ours.
HEADLINE_METHODS = ("none", "alra", "magic", "scvi", "knn_fill_2step", "scvgae", "gnnimpute")
#: (task, metric, heading, higher is better) of the page's tables.
PAGE_METRICS = (
    ("clustering", "leiden_ari", "Clustering, Leiden protocol: ARI", True),
    ("clustering", "paper_ari", "Clustering, the scVGAE paper's protocol: ARI", True),
    ("masked", "pearson", "Masked recovery: Pearson correlation at the hidden entries", True),
    ("masked", "mse", "Masked recovery: mean squared error at the hidden entries", False),
    ("masked", "seconds", "Masked recovery: seconds per run (one CPU thread)", False),
)


#: Rows of the denoising table: (row label in denoise_summary.json, name shown).
DENOISING_ROWS = (
    ("none", "no imputation"),
    ("knn_log_2", "k-NN mean of log values, 2 steps"),
    ("knn_explog_2", "k-NN mean, 2 steps, expected-log output"),
    ("knn_post_2", "k-NN mean, 2 steps, through the networks' posterior (no network)"),
    ("pca_log", "PCA of log values (rank on an inner split)"),
    ("magic", "MAGIC"),
    ("scvi", "scVI"),
    ("alra", "ALRA"),
    ("scvgae", "**scVGAE**"),
    ("gnnimpute", "**GNNImpute**"),
)


def load_denoising(path: Path = DENOISE_SUMMARY, fraction: str = "0.5") -> dict:
    """``{dataset: {row label: {metric: {mean, sd, n}}}}`` of ``denoise_summary.json`` at one split fraction."""
    table = json.loads(Path(path).read_text())["table"].get(fraction, {})
    return {ds: d["rows"] for ds, d in table.items()}


def denoising_table(tab: dict, metric: str = "mcv") -> str:
    """MCV loss (lower is better) of the rows of :data:`DENOISING_ROWS` per dataset; bold: the best per column."""
    datasets = [d for d in DATASETS if d in tab]

    def value(d: str, row: str) -> float | None:
        cell = tab[d].get(row, {}).get(metric)
        return None if not cell or cell["mean"] is None else float(cell["mean"])

    best = {d: _best([value(d, r) for r, _ in DENOISING_ROWS], False) for d in datasets}
    lines = ["| method | " + " | ".join(datasets) + " |", "| --- |" + " --- |" * len(datasets)]
    for row, name in DENOISING_ROWS:
        if any(value(d, row) is not None for d in datasets):
            lines.append(f"| {name} | " + " | ".join(_fmt(value(d, row), best[d], 4) for d in datasets) + " |")
    return "\n".join(lines)


def load(path: Path = SUMMARY) -> dict:
    """The ``table`` part of ``summary.json``: ``{dataset: {task: {method: {metric: {mean, sd, n}}}}}``."""
    return json.loads(Path(path).read_text())["table"]


def _mean(tab: dict, dataset: str, task: str, method: str, metric: str) -> float | None:
    cell = tab.get(dataset, {}).get(task, {}).get(method, {}).get(metric)
    if not cell or cell["mean"] is None or math.isnan(cell["mean"]):
        return None
    return float(cell["mean"])


def _best(values: list[float | None], higher: bool) -> float | None:
    vals = [v for v in values if v is not None]
    return (max(vals) if higher else min(vals)) if vals else None


def _fmt(v: float | None, best: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    s = f"{v:.{digits}f}"
    return f"**{s}**" if best is not None and round(v, digits) == round(best, digits) else s


def headline(tab: dict) -> str:
    """Leiden ARI and masked-recovery Pearson per method and dataset; bold: the best of each column."""
    datasets = [d for d in DATASETS if d in tab]
    head = ["method"] + [f"{d} {m}" for d in datasets for m in ("ARI", "r")]
    rows = []
    cols = [(d, t, m) for d in datasets for t, m in (("clustering", "leiden_ari"), ("masked", "pearson"))]
    best = {c: _best([_mean(tab, *c[:2], meth, c[2]) for meth in HEADLINE_METHODS], True) for c in cols}
    for meth in HEADLINE_METHODS:
        rows.append([NAMES[meth]] + [_fmt(_mean(tab, d, t, meth, m), best[(d, t, m)]) for d, t, m in cols])
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def metric_table(tab: dict, task: str, metric: str, higher: bool) -> str:
    """One metric for every method (rows) on every dataset (columns); bold: the best of each column."""
    datasets = [d for d in DATASETS if d in tab]
    methods = [m for m in NAMES if any(m in tab[d].get(task, {}) for d in datasets)]
    digits = 1 if metric == "seconds" else 3
    best = {d: _best([_mean(tab, d, task, m, metric) for m in methods], higher) for d in datasets}
    lines = ["| method | " + " | ".join(datasets) + " |", "| --- |" + " --- |" * len(datasets)]
    for m in methods:
        cells = [_fmt(_mean(tab, d, task, m, metric), best[d], digits) for d in datasets]
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def page_tables(tab: dict) -> str:
    """The Benchmarks page's tables, each under a heading of level 3."""
    parts = []
    for task, metric, title, higher in PAGE_METRICS:
        parts += [f"### {title}", "", metric_table(tab, task, metric, higher), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="the Benchmarks page's tables instead of the headline table")
    p.add_argument("--summary", type=Path, default=SUMMARY, help="a summary.json (default: results/summary.json)")
    p.add_argument("--denoising", action="store_true", help="the denoising (MCV) table of results/denoise_summary.json")
    a = p.parse_args(argv)
    if a.denoising:
        print(denoising_table(load_denoising()))
        return
    tab = load(a.summary)
    print(page_tables(tab) if a.all else headline(tab))


if __name__ == "__main__":
    main()
