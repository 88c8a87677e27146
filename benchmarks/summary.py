"""Side-by-side summary of our methods and the peers a user would pick instead (MAGIC, scVI, ALRA).

One command runs everything and writes ``benchmarks/results/summary.md``, ``.json`` and ``.png``::

    python benchmarks/summary.py --run            # peers + scvgae + gnnimpute on 4 datasets, seeds 0 1 2 (hours)
    python benchmarks/summary.py --quick          # pbmc68k, seed 0, epochs capped at 20 (minutes)
    python benchmarks/summary.py                  # no runs: merge the result files that exist
    python benchmarks/summary.py --denoising results/denoise_peers.json results/denoise_ours.json
                                                  # the denoising task's tables -> results/denoise_summary.md

``--run`` calls ``bench.py`` once per group, each writing its own result file, so any group can be re-run
alone (``--run --methods scvgae``) and merged with the others::

    results/peers.json      none, alra, magic, scvi      (bench.py --methods none alra magic scvi --name peers)
    results/baselines.json  knn_fill, knn_fill_gated, knn_fill_2step, knn_fill_2step_gated
                            (bench.py --methods knn_fill knn_fill_gated knn_fill_2step knn_fill_2step_gated
                             --name baselines)
    results/scvgae.json     scvgae                       (bench.py --methods scvgae --name scvgae)
    results/gnnimpute.json  gnnimpute                    (bench.py --methods gnnimpute --name gnnimpute)

Merging: records are keyed by (dataset, seed, task, method); the first file listed wins a duplicate key
(``--inputs`` sets the files and their order). ``--combine NAME FILE...`` merges result files of partial runs
(e.g. scVI run with fewer seeds in a separate process) into ``results/NAME.json`` and ``.md``.

A *win* of method A against peer B on a (dataset, metric) cell: A's mean over its seeds is better than B's
mean over its seeds (higher ARI / AMI / NMI / Pearson / cosine, lower MSE / MAE); cells where either has no
result are not counted. The first line of ``summary.md`` gives these counts.

Denoising task (``--denoising FILE...``; also the denoising section of ``bench.py``'s and ``--combine``'s ``.md``):
one methods × datasets table per score (MCV loss, OpenProblems mse and poisson, Pearson, wall / CPU seconds, peak
MB), mean ± sd over seeds, per split fraction. Its first line says, per method, on how many datasets its mean MCV
loss beats MAGIC's and the best simple rival's (the lowest mean MCV among the k-NN averages and PCA of
``baselines.py``; a rival is compared with the best of the others).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATASETS = ("pbmc68k", "pbmc3k", "bladder", "baron_mouse")
PEER_METHODS = ("none", "alra", "magic", "scvi")
#: Model-free baselines (bench.py BASELINES): run in the main environment, listed with the peers.
BASELINE_METHODS = ("knn_fill", "knn_fill_gated", "knn_fill_2step", "knn_fill_2step_gated")
OURS = ("scvgae", "gnnimpute")
ORDER = (*PEER_METHODS, *BASELINE_METHODS, *OURS)
#: (key, heading, higher is better)
CLUSTERING = [
    (f"{p}_{m}", f"{p.capitalize() if p == 'paper' else 'Leiden'} {m.upper()}", True)
    for p in ("paper", "leiden")
    for m in ("ari", "ami", "nmi")
]
MASKED = [("mse", "MSE", False), ("mae", "MAE", False), ("pearson", "Pearson", True), ("cosine", "cosine", True)]
COST = [("seconds", "s", ".1f"), ("peak_mb", "peak MB", ".0f"), ("epochs", "epochs", ".0f")]
RIVALS = ("magic", "scvi", *BASELINE_METHODS)


def record_key(r: dict) -> tuple:
    """(dataset, seed, task, method, pipeline), and for the denoising task also the variant, split fraction,
    options and epoch cap (``bench.job_id``)."""
    if r.get("task") != "denoising":
        return (r["dataset"], r["seed"], r["task"], r["method"], r.get("pipeline"))
    return (
        r["dataset"],
        r["seed"],
        r["task"],
        r["method"],
        r.get("variant"),
        r.get("fraction"),
        r.get("pipeline"),
        json.dumps(r.get("options") or {}, sort_keys=True),
        r.get("max_epochs"),
    )


def load_records(paths: list[Path]) -> tuple[list[dict], dict]:
    """Records of the result files, first file winning duplicate keys (:func:`record_key`). Ablation variants
    are left out, except in the denoising task, where they are rows of their own."""
    seen, records, machines = set(), [], {}
    for path in paths:
        data = json.loads(path.read_text())
        machines[path.name] = {"machine": data.get("machine"), "command": data.get("command")}
        for r in data["records"]:
            if "error" in r or ("variant" in r and r.get("task") != "denoising"):
                continue
            key = record_key(r)
            if key not in seen:
                seen.add(key)
                records.append(r)
    return records, machines


def table(records: list[dict]) -> dict:
    """``{dataset: {task: {method: {metric: {"mean", "sd", "n"}}}}}`` plus the shape of each dataset."""
    out: dict = {}
    for r in records:
        if r["task"] not in ("clustering", "masked"):  # the denoising task has its own tables (denoising_section)
            continue
        ds = out.setdefault(r["dataset"], {"shape": [r["n_obs"], r["n_vars"]]})
        ds.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
    for ds in out.values():
        for task in ("clustering", "masked"):
            for method, rs in ds.get(task, {}).items():
                keys = [k for k, _, _ in (CLUSTERING if task == "clustering" else MASKED)] + [k for k, _, _ in COST]
                cell = {"seeds": sorted(r["seed"] for r in rs)}
                for k in keys:
                    v = np.asarray([r[k] for r in rs if r.get(k) is not None], dtype=float)
                    if v.size:
                        sd = float(v.std(ddof=1)) if v.size > 1 else None
                        cell[k] = {"mean": float(v.mean()), "sd": sd, "n": int(v.size)}
                ds[task][method] = cell
    return out


def wins(tab: dict) -> dict:
    """For each of our methods and each rival: cells won, cells compared, and which."""
    out = {}
    for ours in OURS:
        for rival in RIVALS:
            won, total, cells = 0, 0, []
            for ds, d in tab.items():
                for task, metrics in (("clustering", CLUSTERING), ("masked", MASKED)):
                    a, b = d.get(task, {}).get(ours), d.get(task, {}).get(rival)
                    if not a or not b:
                        continue
                    for key, _, higher in metrics:
                        if key not in a or key not in b or np.isnan(a[key]["mean"]) or np.isnan(b[key]["mean"]):
                            continue
                        total += 1
                        better = a[key]["mean"] > b[key]["mean"] if higher else a[key]["mean"] < b[key]["mean"]
                        if better:
                            won += 1
                            cells.append(f"{ds}:{key}")
            out[f"{ours}_vs_{rival}"] = {"won": won, "cells": total, "won_cells": cells}
    return out


def _fmt(cell: dict | None, fmt: str = ".3f", bold: bool = False) -> str:
    if not cell or np.isnan(cell["mean"]):
        return "–"
    s = f"{cell['mean']:{fmt}}" + (f" ± {cell['sd']:{fmt}}" if cell["sd"] is not None else "")
    return f"**{s}**" if bold else s


def render(tab: dict, win: dict, machines: dict, title: str, records: list[dict], note: str | None = None) -> str:
    """The summary as markdown; its first line is the win count."""
    names = {
        "magic": "MAGIC",
        "scvi": "scVI",
        "knn_fill": "the 15-NN fill",
        "knn_fill_gated": "the gated 15-NN fill",
        "knn_fill_2step": "the 2-step 15-NN fill",
        "knn_fill_2step_gated": "the gated 2-step 15-NN fill",
    }
    parts = []
    for ours in OURS:
        counts = [
            f"{win[f'{ours}_vs_{r}']['won']}/{win[f'{ours}_vs_{r}']['cells']} vs {names[r]}"
            for r in RIVALS
            if win[f"{ours}_vs_{r}"]["cells"]
        ]
        parts.append(f"{ours} wins {', '.join(counts)}" if counts else f"{ours}: no results to compare")
    lines = [
        f"**Wins** (dataset × metric cells): {'; '.join(parts)}. A win = better mean over seeds on that cell "
        "(higher ARI/AMI/NMI/Pearson/cosine, lower MSE/MAE); cells where either method has no result are not counted.",
        "",
        f"# {title}",
        "",
        *([note, ""] if note else []),
        "Timings: every job runs in a fresh process with `OMP_NUM_THREADS=1` and `torch.set_num_threads(1)`, "
        "on a shared 2-core machine (other people's work ran at the same time, and the run files below say how many "
        "benchmark jobs ran at once), so seconds are 1-thread and contended: compare orders of magnitude, not "
        "percent. Seconds = the imputation call only (imports and data loading excluded); peak MB = peak RSS of the "
        "process that imputed (ours: the benchmark process holding the data; peers: the child process holding the "
        "job's layer and counts). Bold: best mean in the column.",
        "",
        "Inputs:",
        "",
    ]
    for name, info in machines.items():
        m = info["machine"] or {}
        envs = "; ".join(
            f"{meth}: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "interpreter")
            for meth, env in (m.get("peer_envs") or {}).items()
        )
        lines.append(
            f"- `{name}`: `{info['command']}` — {m.get('platform')}, {m.get('cores')} cores, python {m.get('python')}, "
            f"torch {m.get('torch')} ({m.get('torch_threads')} thread), numpy {m.get('numpy', '?')}, "
            f"scanpy {m.get('scanpy')}, scvgae-sc {m.get('scvgae_sc')}, "
            f"OMP_NUM_THREADS={m.get('OMP_NUM_THREADS', '?')}, "
            f"{m.get('jobs_in_parallel', 1)} job(s) at a time" + (f"; {envs}" if envs else "") + "."
        )
    capped = sorted({(r["dataset"], r["method"], r["max_epochs"]) for r in records if r.get("max_epochs")})
    if capped:
        lines += [
            "",
            "Epochs capped below the method's default (`--max-epochs`): "
            + ", ".join(f"{m} on {ds} at {e}" for ds, m, e in capped)
            + ".",
        ]
    for ds in sorted(tab, key=lambda d: DATASETS.index(d) if d in DATASETS else 99):
        d = tab[ds]
        lines += ["", f"## {ds} ({d['shape'][0]} × {d['shape'][1]} after `pp.filter`)"]
        for task, metrics, head in (
            ("clustering", CLUSTERING, "Clustering (paper protocol on the sqrt layer; Leiden protocol)"),
            ("masked", MASKED, "Masked recovery (10 % of non-zeros hidden; linear normalized scale)"),
        ):
            rows = d.get(task, {})
            if not rows:
                continue
            methods = sorted(rows, key=lambda m: ORDER.index(m) if m in ORDER else 99)
            lines += ["", f"{head}, mean ± sd over seeds:", ""]
            lines.append(
                "| method | "
                + " | ".join(h for _, h, _ in metrics)
                + " | "
                + " | ".join(h for _, h, _ in COST)
                + " | seeds |"
            )
            lines.append("|" + " --- |" * (len(metrics) + len(COST) + 2))
            best = {}
            for key, _, higher in metrics:
                vals = [
                    (rows[m][key]["mean"], m) for m in methods if key in rows[m] and not np.isnan(rows[m][key]["mean"])
                ]
                if vals:
                    best[key] = (max if higher else min)(vals)[1]
            for m in methods:
                cells = [_fmt(rows[m].get(k), bold=best.get(k) == m) for k, _, _ in metrics]
                cells += [_fmt(rows[m].get(k), fmt) for k, _, fmt in COST]
                seeds = ",".join(str(s) for s in rows[m]["seeds"])
                lines.append(f"| {m} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def plot(tab: dict, path: Path) -> None:
    """Grouped bars: one row per dataset; clustering scores, masked-recovery scores, seconds (log)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            "clustering",
            [
                ("paper_ari", "paper ARI"),
                ("paper_ami", "paper AMI"),
                ("leiden_ari", "Leiden ARI"),
                ("leiden_ami", "Leiden AMI"),
            ],
        ),
        ("masked", [("pearson", "Pearson"), ("cosine", "cosine")]),
        (None, [("clustering", "clustering"), ("masked", "masked")]),
    ]
    datasets = sorted(tab, key=lambda d: DATASETS.index(d) if d in DATASETS else 99)
    methods = [m for m in ORDER if any(m in tab[d].get(t, {}) for d in datasets for t in ("clustering", "masked"))]
    colors = dict(zip(ORDER, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(
        len(datasets), 3, figsize=(15, 2.8 * len(datasets)), squeeze=False, gridspec_kw={"width_ratios": [4, 2, 2]}
    )
    width = 0.8 / max(len(methods), 1)
    secs = [
        c["seconds"]["mean"]
        for d in datasets
        for t in ("clustering", "masked")
        for c in tab[d].get(t, {}).values()
        if "seconds" in c
    ]
    time_lim = (min(secs, default=1.0) / 2, max(secs, default=10.0) * 2)
    for row, ds in enumerate(datasets):
        for col, (task, metrics) in enumerate(panels):
            ax = axes[row, col]
            for j, m in enumerate(methods):
                means, sds = [], []
                for key, _ in metrics:
                    cell = tab[ds].get(task or key, {}).get(m, {}).get("seconds" if task is None else key)
                    means.append(np.nan if not cell else cell["mean"])
                    sds.append(0.0 if not cell or cell["sd"] is None else cell["sd"])
                x = np.arange(len(metrics)) + (j - (len(methods) - 1) / 2) * width
                ax.bar(x, means, width, yerr=sds, color=colors[m], label=m, capsize=2)
            ax.set_xticks(np.arange(len(metrics)), [h for _, h in metrics])
            if task is None:
                ax.set_yscale("log")
                ax.set_ylim(*time_lim)
                ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_ylabel("seconds (1 thread)")
            else:
                ax.set_ylim(0, 1)
            ax.set_title(f"{ds}: " + (task or "imputation time"), fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=len(methods), loc="upper center", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (2.8 * len(datasets))))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# denoising task (molecular cross-validation and the OpenProblems scores)
# --------------------------------------------------------------------------------------------------

#: The model-free rivals of the denoising task (``baselines.DENOISING_RIVALS``): "the best simple rival" of a
#: dataset is the one of these with the lowest mean MCV loss there.
SIMPLE_RIVALS = (
    "knn_lin_1",
    "knn_lin_2",
    "knn_lin_3",
    "knn_log_1",
    "knn_log_2",
    "knn_log_3",
    "pca_log",
    "knn_explog_1",
    "knn_explog_2",
    "knn_explog_3",
)
#: Model-free versions of our outputs with the network replaced by the graph (the "network removed" ablations).
NETWORK_REMOVED = ("knn_post_2",)
DENOISING_ORDER = ("none", *SIMPLE_RIVALS, *NETWORK_REMOVED, "magic", "alra", "scvi", *OURS)
#: (key, heading, higher is better, format)
DENOISING = [
    ("mcv", "MCV loss", False, ".4f"),
    ("op_mse", "OpenProblems mse", False, ".4f"),
    ("op_poisson", "OpenProblems poisson", False, ".4f"),
    ("pearson", "Pearson", True, ".4f"),
    ("seconds", "wall s", False, ".1f"),
    ("cpu_seconds", "CPU s", False, ".1f"),
    ("peak_mb", "peak MB", False, ".0f"),
]


def denoising_label(r: dict) -> str:
    """Row name of a denoising record: the method, an ablation variant after a colon, a non-default input
    pipeline in brackets, options in parentheses."""
    name = r["method"] + (f": {r['variant']}" if r.get("variant") else "")
    if r.get("pipeline") not in (None, "default"):
        name += f" [{r['pipeline']}]"
    if r.get("options") and not r.get("variant"):
        name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(r["options"].items())) + ")"
    if r.get("max_epochs"):
        name += f" ({r['max_epochs']} epochs)"
    return name


def denoising_table(records: list[dict]) -> dict:
    """``{fraction: {dataset: {label: {"seeds", metric: {"mean", "sd", "n"}, ...}}}}`` of the denoising records,
    plus ``"shape"`` per dataset and, for ``pca_log``, the ranks chosen and best on the test half."""
    groups: dict = {}
    for r in records:
        if r.get("task") != "denoising" or "error" in r:
            continue
        f = float(r.get("fraction", 0.5))
        ds = groups.setdefault(f, {}).setdefault(r["dataset"], {"shape": [r["n_obs"], r["n_vars"]], "rows": {}})
        ds["rows"].setdefault(denoising_label(r), []).append(r)
    out: dict = {}
    for f, datasets in groups.items():
        for ds, d in datasets.items():
            rows = {}
            for label, rs in d["rows"].items():
                cell: dict = {"seeds": sorted(r["seed"] for r in rs), "method": rs[0]["method"]}
                for key, *_ in DENOISING + [("mcv_test_best",), ("rank",), ("rank_test_best",)]:
                    v = np.asarray([r[key] for r in rs if r.get(key) is not None], dtype=float)
                    if v.size:
                        cell[key] = {
                            "mean": float(v.mean()),
                            "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                            "n": int(v.size),
                        }
                if any("rank" in r for r in rs):
                    cell["ranks"] = {str(r["seed"]): [r["rank"], r.get("rank_test_best")] for r in rs if "rank" in r}
                rows[label] = cell
            out.setdefault(f, {})[ds] = {"shape": d["shape"], "rows": rows}
    return out


def _mcv(cell: dict | None) -> float | None:
    return cell["mcv"]["mean"] if cell and "mcv" in cell else None


def best_simple_rival(rows: dict, exclude: str | None = None) -> str | None:
    """The simple rival (``SIMPLE_RIVALS``, default options) with the lowest mean MCV loss among ``rows``."""
    cands = [(_mcv(rows[m]), m) for m in SIMPLE_RIVALS if m in rows and m != exclude and _mcv(rows[m]) is not None]
    return min(cands)[1] if cands else None


def denoising_wins(tab_f: dict) -> dict:
    """Per row label: datasets where its mean MCV beats MAGIC's, and the best simple rival's (itself excluded),
    out of the datasets where both have results."""
    labels = list(dict.fromkeys(lbl for d in tab_f.values() for lbl in d["rows"]))
    out = {}
    for label in labels:
        w = {"magic": [0, 0, []], "rival": [0, 0, []]}
        for ds, d in tab_f.items():
            mine = _mcv(d["rows"].get(label))
            if mine is None:
                continue
            magic = _mcv(d["rows"].get("magic"))
            if label != "magic" and magic is not None:
                w["magic"][1] += 1
                if mine < magic:
                    w["magic"][0] += 1
                    w["magic"][2].append(ds)
            best = best_simple_rival(d["rows"], exclude=label)
            if best is not None:
                w["rival"][1] += 1
                if mine < _mcv(d["rows"][best]):
                    w["rival"][0] += 1
                    w["rival"][2].append(ds)
        out[label] = {
            "beats_magic": w["magic"][0],
            "vs_magic": w["magic"][1],
            "beats_magic_on": w["magic"][2],
            "beats_best_rival": w["rival"][0],
            "vs_best_rival": w["rival"][1],
            "beats_best_rival_on": w["rival"][2],
        }
    return out


def _order(label: str) -> int:
    """Rank of a row label's method in ``DENOISING_ORDER`` (stable sorts keep the rows of one method in the order
    they were run)."""
    base = label.split(":")[0].split(" ")[0]
    return DENOISING_ORDER.index(base) if base in DENOISING_ORDER else 99


def denoising_wins_line(tab: dict) -> str:
    """One line: per method and split, on how many datasets it beats MAGIC and the best simple rival on MCV."""
    parts = []
    for f in sorted(tab):
        win = denoising_wins(tab[f])
        items = []
        for label in sorted(win, key=_order):
            w = win[label]
            magic = f"MAGIC {w['beats_magic']}/{w['vs_magic']}" if w["vs_magic"] else "MAGIC –"
            items.append(f"{label} {magic}, best simple rival {w['beats_best_rival']}/{w['vs_best_rival']}")
        parts.append(f"split {f:g}: " + "; ".join(items))
    return (
        "**Denoising, datasets where the method's MCV loss beats MAGIC / the best simple rival** (mean over seeds, "
        "lower is better; the best simple rival is, per dataset, the lowest of the k-NN averages and PCA; a rival "
        "is compared with the best of the others) — " + " — ".join(parts) + "."
    )


def denoising_section(records: list[dict]) -> str:
    """Markdown: the wins line first, then per split fraction one methods × datasets table per score."""
    tab = denoising_table(records)
    if not tab:
        return ""
    lines = [denoising_wins_line(tab), ""]
    for f in sorted(tab):
        datasets = sorted(tab[f], key=lambda d: DATASETS.index(d) if d in DATASETS else 99)
        what = "molecular cross-validation" if f == 0.5 else "the OpenProblems denoising split" if f == 0.9 else ""
        lines += [
            f"## Denoising, split {f:g}" + (f" ({what})" if what else ""),
            "",
            "Mean ± sd over seeds (seeds per cell in the last table). Each method sees only the train half; "
            "scores against the test half by `tl.score_denoising`. Bold: best score of the column.",
            "",
        ]
        labels = sorted(dict.fromkeys(lbl for d in datasets for lbl in tab[f][d]["rows"]), key=_order)
        heads = [f"{d} ({tab[f][d]['shape'][0]} × {tab[f][d]['shape'][1]})" for d in datasets]
        for key, head, higher, fmt in DENOISING:
            if not any(key in tab[f][d]["rows"].get(lbl, {}) for d in datasets for lbl in labels):
                continue
            best = {}
            if key in ("mcv", "op_mse", "op_poisson", "pearson"):
                for d in datasets:
                    vals = [(c[key]["mean"], m) for m, c in tab[f][d]["rows"].items() if key in c]
                    if vals:
                        best[d] = (max if higher else min)(vals)[1]
            lines += [f"{head}:", "", "| method | " + " | ".join(heads) + " |", "|" + " --- |" * (len(heads) + 1)]
            for lbl in labels:
                cells = [_fmt(tab[f][d]["rows"].get(lbl, {}).get(key), fmt, bold=best.get(d) == lbl) for d in datasets]
                lines.append(f"| {lbl} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["Seeds:", "", "| method | " + " | ".join(datasets) + " |", "|" + " --- |" * (len(datasets) + 1)]
        for lbl in labels:
            cells = [
                ",".join(map(str, tab[f][d]["rows"][lbl]["seeds"])) if lbl in tab[f][d]["rows"] else "–"
                for d in datasets
            ]
            lines.append(f"| {lbl} | " + " | ".join(cells) + " |")
        lines.append("")
        for d in datasets:
            rows = tab[f][d]["rows"]
            best = best_simple_rival(rows)
            note = f"- {d}: no simple rival"
            if best:
                note = f"- {d}: best simple rival {best} (MCV {_mcv(rows[best]):.4f})"
            pca = rows.get("pca_log")
            if pca and "ranks" in pca:
                ranks = ", ".join(f"seed {s}: {a} / {b}" for s, (a, b) in sorted(pca["ranks"].items()))
                note += (
                    f"; pca_log rank chosen on the inner split / best on the test half: {ranks} (MCV at the "
                    f"test-best rank {_fmt(pca.get('mcv_test_best'), '.4f')})"
                )
            lines.append(note + ".")
        lines.append("")
    return "\n".join(lines)


def denoising_summary(files: list[Path], name: str) -> None:
    """Merge denoising result files into ``results/NAME.md`` (first line: the wins) and ``.json``."""
    records, machines = load_records(files)
    records = [r for r in records if r.get("task") == "denoising"]
    if not records:
        raise SystemExit("no denoising records in " + ", ".join(str(f) for f in files))
    tab = denoising_table(records)
    body = denoising_section(records)
    first, _, rest = body.partition("\n")
    md = [first, "", f"# Denoising benchmark `{name}`", "", "Inputs:", ""]
    md += [f"- `{n}`: `{info['command']}`" for n, info in machines.items()]
    md += ["", rest.lstrip("\n")]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    win = {f"{f:g}": denoising_wins(t) for f, t in tab.items()}
    table_json = {f"{f:g}": t for f, t in tab.items()}
    (RESULTS / f"{name}.json").write_text(json.dumps({"inputs": machines, "wins": win, "table": table_json}, indent=1))
    print("\n".join(md))
    print(f"wrote {RESULTS / name}.md / .json")


def run_bench(methods: list[str], name: str, datasets: list[str], seeds: list[int], max_epochs: int | None) -> None:
    cmd = [sys.executable, str(HERE / "bench.py"), "--methods", *methods, "--datasets", *datasets, "--seeds"]
    cmd += [str(s) for s in seeds] + ["--name", name]
    if max_epochs is not None:
        cmd += ["--max-epochs", str(max_epochs)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def combine(name: str, files: list[Path]) -> None:
    """Merge result files of partial runs into ``results/NAME.json`` / ``.md`` (bench.py's format)."""
    sys.path.insert(0, str(HERE))
    from bench import summarize

    records, machines = load_records(files)
    commands = [
        f"{p.name}: {info['command'] or '(command not recorded: run stopped before its end)'}"
        for p, info in zip(files, machines.values(), strict=True)
    ]
    first = dict(next(iter(machines.values()))["machine"])
    first["peer_envs"] = {
        k: v for info in machines.values() for k, v in (info["machine"].get("peer_envs") or {}).items()
    }
    first["jobs_in_parallel"] = max(info["machine"].get("jobs_in_parallel", 1) for info in machines.values())
    total = sum(json.loads(p.read_text()).get("total_s", 0.0) for p in files)
    data = {"machine": first, "command": " ; ".join(commands), "total_s": total, "parts": machines, "records": records}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    md = [f"# Benchmark `{name}` (merged)\n", "Parts (each ran as its own command):\n"]
    md += [f"- `{c}`" for c in commands]
    md.append(
        f"\nRun time recorded by the parts that ran to their end: {total / 60:.1f} min (a stopped part records none; "
        "parts may have run at the same time).\n"
    )
    body = summarize(records)
    if body.startswith("**Denoising"):  # the denoising wins line is the file's first line
        first, _, body = body.partition("\n")
        md.insert(0, first + "\n")
    md.append(body)
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {RESULTS / name}.json / .md ({len(records)} records)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="store_true", help="run the benchmark jobs (bench.py) before summarizing")
    p.add_argument("--quick", action="store_true", help="run pbmc68k, seed 0, max 20 epochs; write summary_quick.*")
    p.add_argument("--methods", nargs="+", default=list(ORDER), help="methods to run with --run")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--inputs", nargs="+", type=Path, default=None, help="result files to merge (default: see above)")
    p.add_argument("--combine", nargs="+", metavar=("NAME", "FILE"), help="merge FILEs into results/NAME.json")
    p.add_argument(
        "--denoising",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="denoising tables of these result files into results/<--name, default denoise_summary>.md / .json",
    )
    p.add_argument("--name", default=None, help="output stem (default summary, or summary_quick)")
    p.add_argument("--note", default=None, help="a paragraph put under the title (e.g. how the runs were split)")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.combine:
        combine(args.combine[0], [Path(f) for f in args.combine[1:]])
        return 0
    if args.denoising:
        denoising_summary(args.denoising, args.name or "denoise_summary")
        return 0

    prefix = ""
    if args.quick:
        args.run, args.datasets, args.seeds = True, ["pbmc68k"], [0]
        args.max_epochs = args.max_epochs or 20
        prefix = "quick_"
    t0 = time.perf_counter()
    if args.run:
        peers = [m for m in args.methods if m in PEER_METHODS]
        if peers:
            run_bench(peers, prefix + "peers", args.datasets, args.seeds, args.max_epochs)
        baselines = [m for m in args.methods if m in BASELINE_METHODS]
        if baselines:
            run_bench(baselines, prefix + "baselines", args.datasets, args.seeds, None)
        for ours in (m for m in args.methods if m in OURS):
            run_bench([ours], prefix + ours, args.datasets, args.seeds, args.max_epochs)
    inputs = args.inputs or [RESULTS / f"{prefix}{n}.json" for n in ("peers", "baselines", *OURS)]
    inputs = [f for f in inputs if f.exists()]
    if not inputs:
        raise SystemExit("no result files to summarize; run with --run (or --quick) first.")
    records, machines = load_records(inputs)
    tab = table(records)
    win = wins(tab)
    name = args.name or ("summary_quick" if args.quick else "summary")
    title = "Benchmark summary: scvgae-sc vs MAGIC, scVI, ALRA" + (" (quick)" if args.quick else "")
    md = render(tab, win, machines, title, records, args.note)
    if args.run:
        md += f"\nRun time of this command: {(time.perf_counter() - t0) / 60:.1f} min.\n"
    (RESULTS / f"{name}.md").write_text(md)
    (RESULTS / f"{name}.json").write_text(json.dumps({"inputs": machines, "wins": win, "table": tab}, indent=1))
    plot(tab, RESULTS / f"{name}.png")
    print(md)
    print(f"wrote {RESULTS / name}.md / .json / .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
