"""Scaling of both methods with the number of cells: per-epoch time and peak memory on simulated data.

Each (method, n_cells) job runs in a fresh process on ``datasets.simulate(n_cells, n_genes)`` (normalized
with ``pp.normalize(method="total")``), trains ``--epochs`` epochs (early stopping off for GNNImpute
through ``max_epochs``) and records wall and CPU seconds of ``tl.impute``, the seconds per epoch, and the
process's peak resident memory. Results go to ``benchmarks/results/<name>.json`` and ``.md``, with the
fitted exponents of time and memory against cells when there are two sizes or more::

    python benchmarks/scaling.py --cells 10000 20000 --epochs 2
    python benchmarks/scaling.py --cells 10000 30000 100000 --methods scvgae --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_job(job: dict) -> dict:
    import scanpy as sc

    import scvgae_sc as sv

    sc.settings.verbosity = 0
    adata = sv.datasets.simulate(job["n_cells"], job["n_genes"], n_groups=5, random_state=0)
    for key in ("true_counts", "true_mean"):  # truth is not needed here: keep the data as a user would have it
        adata.layers.pop(key, None)
    sv.pp.normalize(adata, method="total", key_added="total")
    data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # time each epoch (wall and CPU) by wrapping the trainer's epoch; benchmark-only instrumentation
    from scvgae_sc.nn import _trainer

    epochs: list[tuple[float, float]] = []
    inner = _trainer.Trainer._train_epoch

    def timed(self, *a, **k):
        w, c = time.perf_counter(), _cpu()
        try:
            return inner(self, *a, **k)
        finally:
            epochs.append((time.perf_counter() - w, _cpu() - c))
            print(
                f"epoch {len(epochs)}: {epochs[-1][0]:.1f} s wall, {epochs[-1][1]:.1f} s CPU",
                file=sys.stderr,
                flush=True,
            )

    _trainer.Trainer._train_epoch = timed
    kwargs = {"batching": job["batching"]} if job.get("batching") else {}
    kwargs.update(job.get("options") or {})
    t0, c0 = time.perf_counter(), _cpu()
    sv.tl.impute(
        adata,
        method=job["method"],
        layer="total",
        max_epochs=job["epochs"],
        device=job["device"],
        progress_bar=False,
        **kwargs,
    )
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    hist = adata.uns[job["method"]]["history"]
    params = adata.uns[job["method"]]["params"]
    return {
        **job,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "epoch_seconds": [e[0] for e in epochs],
        "epoch_cpu_seconds": [e[1] for e in epochs],
        "batching_used": str(params.get("batching_used", "full")),
        "epochs_run": int(len(hist["loss"])),
        "data_mb": data_mb,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _per_epoch(r: dict) -> tuple[float, float]:
    """Mean wall and CPU seconds of the epochs after the first (all epochs when there is one)."""
    w, c = r.get("epoch_seconds") or [float("nan")], r.get("epoch_cpu_seconds") or [float("nan")]
    w, c = (w[1:] or w), (c[1:] or c)
    return sum(w) / len(w), sum(c) / len(c)


def _fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cells", nargs="+", type=int, default=[10_000, 20_000])
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--methods", nargs="*", default=["scvgae", "gnnimpute"], help="none: only list --add records")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--batching", default="auto", help="the methods' batching option (auto, full, subgraph)")
    p.add_argument("--name", default="scaling")
    p.add_argument("--options", default="{}", help="JSON of further tl.impute options, e.g. '{\"graph_fill\": false}'")
    p.add_argument(
        "--add",
        nargs="+",
        default=[],
        metavar="JSON",
        help="also list these records (a worker's JSON line, or a results/<name>.json) in the table; "
        "they join the fits (time per epoch and peak memory do not depend on the number of epochs)",
    )
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_job(json.loads(args.worker))))
        return 0
    records = []
    for path in args.add:
        text = Path(path).read_text().strip()
        loaded = json.loads(text.splitlines()[-1]) if not text.startswith("{\n") else json.loads(text)
        records.extend(loaded["records"] if "records" in loaded else [loaded])
    options = json.loads(args.options)
    for method in args.methods:
        for n in args.cells:
            job = {"method": method, "n_cells": n, "n_genes": args.genes, "epochs": args.epochs, "device": args.device}
            job["batching"] = args.batching
            if options:
                job["options"] = options
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                rec = {**job, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
            else:
                rec = json.loads(out.stdout.strip().splitlines()[-1])
            records.append(rec)
            print(json.dumps(rec), flush=True)
    md = [
        f"# Scaling (`python benchmarks/scaling.py {' '.join(argv if argv is not None else sys.argv[1:])}`)\n",
        "Simulated counts (`datasets.simulate`, 5 groups), `pp.normalize(method='total')`, "
        f"{args.epochs} epoch(s) per run; time of `tl.impute` (graph construction included), "
        "peak resident memory of the process (data included; `data MB` is the peak before imputing).\n",
        "Per epoch: the mean over the epochs after the first (the first also builds caches and histories).\n",
        "| method | batching | cells | genes | wall s | CPU s | epoch wall s | epoch CPU s | epochs | data MB "
        "| peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        name = r["method"] + (f" `{json.dumps(r['options'])}`" if r.get("options") else "")
        head = f"| {name} | {r.get('batching_used', r.get('batching', ''))} | {r['n_cells']} | {r['n_genes']} |"
        if "error" in r:
            md.append(f"{head} error: {r['error']} | | | | | | |")
        else:
            ew, ec = _per_epoch(r)
            md.append(
                f"{head} {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {ew:.1f} | {ec:.1f} | {r['epochs_run']} | "
                f"{r['data_mb']:.0f} | {r['peak_mb']:.0f} |"
            )
    for method in dict.fromkeys(r["method"] for r in records):
        ok = [r for r in records if r["method"] == method and "error" not in r]
        cells = [r["n_cells"] for r in ok]
        e_t = _fit_exponent(cells, [_per_epoch(r)[1] for r in ok])
        e_m = _fit_exponent(cells, [r["peak_mb"] - r["data_mb"] for r in ok])
        e_p = _fit_exponent(cells, [r["peak_mb"] for r in ok])
        if e_t is not None:
            md.append(
                f"\n{method}: fitted exponent against cells of CPU time per epoch {e_t:.2f}, of peak memory {e_p:.2f}, "
                f"of memory added by imputing {e_m:.2f}."
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"records": records}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
