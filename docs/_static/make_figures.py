"""Make the example figures of ``scvgae_sc.pl`` shown in the docs (``docs/_static/pl_*.png``).

Run from the repository root (a few minutes on one CPU core)::

    OMP_NUM_THREADS=1 python docs/_static/make_figures.py

Data: the offline ``pbmc68k`` (700 PBMCs, 10 labelled types); scVGAE for 20 epochs, GNNImpute with early
stopping (patience 25, at most 400 epochs); the benchmark chart reads ``benchmarks/results/scvgae.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import scanpy as sc  # noqa: E402

import scvgae_sc as sv  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1] / "benchmarks" / "results" / "scvgae.json"
DPI = 100


def main(argv: list[str] | None = None) -> int:
    """Write the four example figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs (default: docs/_static)")
    p.add_argument("--scvgae-epochs", type=int, default=20)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sc.settings.verbosity = 1

    adata = sv.datasets.pbmc68k()
    sv.pp.filter(adata)
    sv.pp.normalize(adata)  # 'normalized' (sqrt, the scVGAE paper's)
    sv.pp.normalize(adata, method="total", key_added="total")  # linear, GNNImpute's input
    sv.tl.impute(adata, method="scvgae", max_epochs=args.scvgae_epochs)
    sv.tl.impute(adata, method="gnnimpute", layer="total", max_epochs=400, patience=25)

    def write(fig, name: str) -> None:
        path = args.out / name
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        print(path)

    # layers=None: each imputation's input layer, then the imputed layers
    write(sv.pl.embedding_comparison(adata, basis=("umap", "tsne"), return_fig=True), "pl_embedding_comparison.png")

    fig, axs = plt.subplots(1, 2, figsize=(13, 4), layout="constrained")
    sv.pl.training_history(adata, "scvgae", ax=axs[0], show=False)
    sv.pl.training_history(adata, "gnnimpute", ax=axs[1], show=False)
    write(fig, "pl_training_history.png")

    fig, axs = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    sv.pl.scores(BENCH, "ARI", ax=axs[0], show=False)
    sv.pl.scores(BENCH, "pearson", ax=axs[1], show=False)
    write(fig, "pl_scores.png")

    write(sv.pl.marker_heatmap(adata, groupby="cell_type", n_genes=5, return_fig=True), "pl_marker_heatmap.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
