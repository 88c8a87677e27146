r"""How low the MCV loss can go: the Poisson noise of the test half, estimated per dataset and seed.

The MCV loss of any output :math:`f` is :math:`E[(f - T)^2]` with :math:`T = \log(1 + Y \cdot t / \ell^{(2)})` the
test half's normalized count (``tl.score_denoising``). The test half is drawn independently of everything a method
sees, so no output scores below :math:`E[\mathrm{Var}(T \mid \lambda)]`, the variance of :math:`T` under Poisson
sampling of the cell's true expression :math:`\lambda`. This script plugs in an estimate of :math:`\lambda` (the
``knn_post_2`` rival's posterior means, ``baselines.py``), draws nothing, and sums the variance exactly over the
Poisson counts (the delta method above mean 250):

    python benchmarks/noise_floor.py --datasets pbmc68k pbmc3k bladder baron_mouse --seeds 0 1 2

It writes ``results/noise_floor.md``: per dataset, the mean floor over seeds, the mean MCV loss of no imputation, and
for MAGIC, the best simple rival, ``knn_post_2`` and our methods (their means in ``results/denoise_peers.json``,
same seeds) the share of the reducible error (no imputation minus floor) that each removes. The floor is an
estimate: it uses smoothed means in place of the true ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import sparse

RESULTS = Path(__file__).parent / "results"
#: Poisson means below each bound are summed up to the paired count (the tail beyond is negligible); larger
#: means use the delta method.
_SUM_TIERS = ((1.0, 16), (5.0, 32), (25.0, 80), (60.0, 160), (250.0, 420))


def log1p_variance(mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    r""":math:`\mathrm{Var}[\log(1 + Y / r)]`, :math:`Y \sim \mathrm{Poisson}(\mu)`, elementwise (``scale`` is
    :math:`r`, broadcast to ``mean``)."""
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 0.0)
    r = np.broadcast_to(np.asarray(scale, dtype=np.float64), mean.shape)
    out = np.empty_like(mean)
    low = 0.0
    for high, max_count in _SUM_TIERS:
        sel = (mean >= low) & (mean < high)
        m, rs = mean[sel], r[sel]
        p, e1, e2 = np.exp(-m), np.zeros_like(m), np.zeros_like(m)
        for k in range(max_count):
            p = p * m / (k + 1)
            v = np.log1p((k + 1) / rs)
            e1 += p * v
            e2 += p * v * v
        out[sel] = np.maximum(e2 - e1**2, 0.0)
        low = high
    big, rb = mean[mean >= low], r[mean >= low]
    out[mean >= low] = (big / rb**2) / (1.0 + big / rb) ** 2  # delta method: Var(Y / r) · (d log1p)^2
    return out


def floor(dataset: str, seed: int) -> float:
    """The estimated floor of the MCV loss of ``dataset`` split with ``seed`` (see the module docstring)."""
    import baselines
    import bench
    import scanpy as sc
    import torch

    import scvgae_sc as sv

    torch.set_num_threads(1)
    sc.settings.verbosity = 0
    adata = bench.load(dataset)
    sv.pp.filter(adata)
    sv.pp.split_counts(adata, random_state=seed)
    sv.pp.normalize(adata, method="total", counts_layer="mcv_train", key_added="total")
    sv.pp.normalize(adata, method="log1p", counts_layer="mcv_train", key_added="log1p")
    lam = baselines.knn_mean(adata, "total", steps=2, graph_layer="log1p", key="knn15")
    baselines.knn_posterior(lam, adata.layers["mcv_train"])  # expected counts at the median train library
    X1 = sparse.csr_matrix(adata.layers["mcv_train"], dtype=np.float64)
    X2 = sparse.csr_matrix(adata.layers["mcv_test"], dtype=np.float64)
    lib1, lib2 = (np.asarray(X.sum(axis=1)).ravel() for X in (X1, X2))
    cells = np.flatnonzero((lib1 > 0) & (lib2 > 0))
    target = float(np.median(lib1[lib1 > 0]))  # the library of the layer's means (pp.normalize's target)
    t = float(np.median(lib1[cells]))  # the scoring library (tl.score_denoising)
    total = 0.0
    for start in range(0, cells.size, 256):
        rows = cells[start : start + 256]
        r = (lib2[rows] / t)[:, None]  # test count = Y, scored as log1p(Y / r)
        total += float(log1p_variance(lam[rows].astype(np.float64) * lib2[rows, None] / target, r).sum())
    return total / (cells.size * adata.n_vars)


#: Columns of the table: methods of ``denoise_peers.json`` (and the best simple rival per dataset).
REPORTED = ("magic", "best simple rival", "knn_post_2", "scvgae", "gnnimpute")


def _best_simple(scores: dict, dataset: str) -> float | None:
    """The lowest mean MCV loss of the model-free rivals (``summary.SIMPLE_RIVALS``) on ``dataset``."""
    from summary import SIMPLE_RIVALS

    values = [v for (d, m), v in scores.items() if d == dataset and m in SIMPLE_RIVALS]
    return min(values) if values else None


def _scores(path: Path, datasets: list[str], seeds: list[int]) -> dict:
    """Mean MCV loss per (dataset, method) over ``seeds`` in the denoising results (split 0.5, default rows)."""
    if not path.exists():
        return {}
    per: dict = {}
    for r in json.loads(path.read_text())["records"]:
        if r.get("task") != "denoising" or r.get("fraction", 0.5) != 0.5 or r.get("variant") or "mcv" not in r:
            continue
        default = r.get("pipeline", "default") == "default" and not r.get("options") and r.get("max_epochs") is None
        if default and r["dataset"] in datasets and r["seed"] in seeds:
            per.setdefault((r["dataset"], r["method"]), {})[r["seed"]] = r["mcv"]
    return {k: float(np.mean(list(v.values()))) for k, v in per.items() if set(v) == set(seeds)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["pbmc68k", "pbmc3k", "bladder", "baron_mouse"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args(argv)
    scores = _scores(RESULTS / "denoise_peers.json", args.datasets, args.seeds)
    shown = [m for m in REPORTED if m == "best simple rival" or any(m == k[1] for k in scores)]
    lines = [
        "# Noise floor of the MCV loss",
        "",
        f"`python benchmarks/noise_floor.py --datasets {' '.join(args.datasets)} --seeds "
        f"{' '.join(map(str, args.seeds))}`: the Poisson variance of the test half given estimated true means "
        "(`knn_post_2`'s), mean over seeds; no output can score below it. Then, per method (MCV loss in "
        "`denoise_peers.json`, same seeds), the share of the reducible error (no imputation − floor) it removes; "
        "`best simple rival`: the lowest of the k-NN averages and PCA.",
        "",
        "| dataset | floor (estimate) | none | " + " | ".join(shown) + " | floor per seed |",
        "|" + " --- |" * (len(shown) + 4),
    ]
    for ds in args.datasets:
        per_seed = [floor(ds, s) for s in args.seeds]
        f = float(np.mean(per_seed))
        none = scores.get((ds, "none"))
        cells = [ds, f"{f:.4f}", f"{none:.4f}" if none else "–"]
        for m in shown:
            v = _best_simple(scores, ds) if m == "best simple rival" else scores.get((ds, m))
            cells.append(f"{(none - v) / (none - f):.1%} ({v:.4f})" if v is not None and none else "–")
        cells.append(" / ".join(f"{v:.4f}" for v in per_seed))
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    (RESULTS / "noise_floor.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'noise_floor.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
