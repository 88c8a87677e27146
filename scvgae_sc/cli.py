"""Command line: ``scvgae-sc --version``, ``scvgae-sc demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _describe(adata) -> str:
    lines = [f"  {adata.n_obs} cells × {adata.n_vars} genes"]
    for attr in ("layers", "obsm", "obsp"):
        keys = list(getattr(adata, attr).keys())
        if keys:
            lines.append(f"  adata.{attr}: {', '.join(keys)}")
    uns = [k for k in adata.uns if k not in ("source",)]
    if uns:
        lines.append(f"  adata.uns: {', '.join(uns)}")
    return "\n".join(lines)


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    head = ["layer", *columns]
    body = [[r["layer"], *(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [head, *body])


def demo(
    *,
    max_epochs: int | None = None,
    random_state: int = 0,
    device: str = "auto",
    figdir: str | None = None,
    plot: bool = True,
) -> int:
    """Run the whole pipeline on the offline ``pbmc68k`` data and print what went where.

    With ``plot``, writes ``demo_embedding_comparison.png`` (UMAP of the normalized and the imputed layer) into
    ``figdir`` (default: a new temporary folder, never the working directory) and prints its path.
    """
    import scanpy as sc

    import scvgae_sc as sv

    sc.settings.verbosity = 1
    print("1. data: scvgae_sc.datasets.pbmc68k() — real UMI counts, offline")
    adata = sv.datasets.pbmc68k()
    print(_describe(adata))
    print("2. sv.pp.filter(adata): keep genes/cells detected in > 5 % of cells/genes")
    sv.pp.filter(adata)
    print(_describe(adata))
    print("3. sv.pp.normalize: counts kept in layers['counts']; sqrt layer 'normalized', linear layer 'total'")
    sv.pp.normalize(adata)
    sv.pp.normalize(adata, method="total", key_added="total")
    print("4. sv.pp.cell_graph(adata): 15-NN graph on 50 PCs -> obsp['cell_graph_connectivities']")
    sv.pp.cell_graph(adata, random_state=random_state)
    print("5. sv.tl.impute(adata, method='scvgae', graph_key='cell_graph') -> layers['scvgae']")
    sv.tl.impute(
        adata, method="scvgae", graph_key="cell_graph", max_epochs=max_epochs, device=device, random_state=random_state
    )
    u = adata.uns["scvgae"]
    print(f"   trained {len(u['history']['loss'])} epochs on {u['device']} in {u['runtime_s']:.1f} s")
    print(_describe(adata))

    print("6. clustering agreement with the cell-type labels (sv.tl.score_clustering)")
    rows = []
    for layer in ("normalized", "scvgae"):
        for protocol in ("paper", "leiden"):
            s = sv.tl.score_clustering(adata, layer, protocol=protocol, random_state=random_state)
            rows.append({"layer": f"{layer} ({protocol})", **s})
    print(_table(rows, ["ari", "ami", "nmi", "n_clusters"]))

    if plot:
        print("7. sv.pl.embedding_comparison(adata, ['normalized', 'scvgae'], basis='umap'): UMAP of each layer")
        path = _plot_comparison(adata, figdir, random_state=random_state)
        print(f"   figure: {path}")

    step = 8 if plot else 7
    print(f"{step}. masked recovery: hide 10 % of non-zeros of layers['total'], impute, score the hidden entries")
    sv.pp.mask_dropouts(adata, layer="total", random_state=random_state)
    sv.tl.impute(
        adata,
        method="scvgae",
        layer="masked",
        counts_layer="masked_counts",
        key_added="scvgae_masked",
        max_epochs=max_epochs,
        device=device,
        random_state=random_state,
    )
    rows = [
        {"layer": name, **sv.tl.score_imputation(adata, layer, truth_layer="total")}
        for name, layer in (("un-imputed", "masked"), ("scvgae", "scvgae_masked"))
    ]
    print(_table(rows, ["mse", "mae", "pearson", "cosine", "n"]))
    return 0


def _plot_comparison(adata, figdir: str | None, *, random_state: int) -> Path:
    """UMAP of the normalized vs the imputed layer, saved as a PNG; returns its path."""
    import tempfile

    import matplotlib.pyplot as plt

    import scvgae_sc as sv

    folder = Path(figdir) if figdir is not None else Path(tempfile.mkdtemp(prefix="scvgae-sc-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo_embedding_comparison.png"
    fig = sv.pl.embedding_comparison(
        adata, ["normalized", "scvgae"], basis="umap", random_state=random_state, return_fig=True
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scvgae-sc`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="scvgae-sc", description="GNN dropout imputation for scRNA-seq.")
    parser.add_argument("--version", action="version", version=f"scvgae-sc {__version__}")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="filter, normalize, build the graph, impute and score offline PBMC data")
    p_demo.add_argument("--max-epochs", type=int, default=None, help="training epochs (default: the method's)")
    p_demo.add_argument("--random-state", type=int, default=0)
    p_demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p_demo.add_argument(
        "--figdir", default=None, help="folder for demo_embedding_comparison.png (default: a new temporary folder)"
    )
    p_demo.add_argument("--no-plot", action="store_true", help="skip the UMAP comparison figure")
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            return demo(
                max_epochs=args.max_epochs,
                random_state=args.random_state,
                device=args.device,
                figdir=args.figdir,
                plot=not args.no_plot,
            )
        except (ValueError, TypeError) as e:
            print(f"scvgae-sc: error: {e}", file=sys.stderr)
            return 1
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
