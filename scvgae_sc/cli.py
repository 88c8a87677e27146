"""Command line: ``scvgae-sc impute IN.h5ad -o OUT.h5ad --method ...``, ``scvgae-sc demo``, ``scvgae-sc --version``.

Exit codes: 0 success, 1 bad input or a refused run (the reason on stderr, no traceback), 2 usage errors
(argparse), 130 interrupted. Progress and logs go to stderr, the one-line summary to stdout.
"""

from __future__ import annotations

import argparse
import ast
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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

    _demo_marker(adata)
    _demo_clustering(adata, random_state)
    if plot:
        print("8. sv.pl.embedding_comparison(adata, ['normalized', 'scvgae'], basis='umap'): UMAP of each layer")
        path = _plot_comparison(adata, figdir, random_state=random_state)
        print(f"   figure: {path}")
    step = 9 if plot else 8
    _demo_denoising(sv.datasets.pbmc68k(), step, max_epochs=max_epochs, device=device, random_state=random_state)
    return 0


#: PBMC markers the demo shows before and after imputation (the first one present is used).
_MARKERS = ("MS4A1", "CD79A", "NKG7", "LYZ", "CST3")


def _demo_marker(adata) -> None:
    """A marker gene's detection before and after: the denoised layer estimates it in every cell."""
    import numpy as np

    gene = next((g for g in _MARKERS if g in adata.var_names), adata.var_names[0])
    j = adata.var_names.get_loc(gene)
    before = np.asarray(adata.layers["normalized"][:, j].todense()).ravel()
    after = np.asarray(adata.layers["scvgae"][:, j]).ravel()
    print(f"6. one marker gene, {gene}: where it is expressed, and where the counts missed it")
    for label in adata.obs["cell_type"].cat.categories:
        cells = (adata.obs["cell_type"] == label).to_numpy()
        print(
            f"   {label[:28]:28s} detected in {np.mean(before[cells] > 0):4.0%} of cells; "
            f"mean before {before[cells].mean():.2f}, after {after[cells].mean():.2f}"
        )
    print(
        "   Zeros become small estimates where the gene is rare and larger ones in the cell types that express it:"
        " every entry is an estimate of the cell's expression, not a count."
    )


def _demo_clustering(adata, random_state: int) -> None:
    import scvgae_sc as sv

    print("7. clustering agreement with the cell-type labels (sv.tl.score_clustering; higher is better)")
    rows = []
    for layer in ("normalized", "scvgae"):
        for protocol in ("paper", "leiden"):
            s = sv.tl.score_clustering(adata, layer, protocol=protocol, random_state=random_state)
            rows.append({"layer": f"{layer} ({protocol})", **s})
    print(_table(rows, ["ari", "ami", "nmi", "n_clusters"]))
    print(
        "   Imputation is not meant to sharpen clusters: differences of a few hundredths are within the change"
        " between seeds. Cluster on the un-imputed layer or the latent space (obsm['X_scvgae'])."
    )


def _demo_denoising(adata, step: int, *, max_epochs, device, random_state: int) -> None:
    """Molecular cross-validation: impute half of each cell's molecules, score against the other half."""
    import scvgae_sc as sv

    print(f"{step}. does it denoise? split every count into two halves (sv.pp.split_counts), impute one half,")
    print("   and score against the other half (sv.tl.score_denoising; mean squared error on log values)")
    sv.pp.filter(adata)
    sv.pp.split_counts(adata, random_state=random_state)
    sv.pp.normalize(adata, counts_layer="mcv_train", key_added="train")
    sv.tl.impute(
        adata,
        method="scvgae",
        layer="train",
        counts_layer="mcv_train",
        max_epochs=max_epochs,
        device=device,
        random_state=random_state,
    )
    rows = [{"layer": name, **sv.tl.score_denoising(adata, layer)} for name, layer in (("un-imputed", "mcv_train"),
                                                                                      ("scvgae", "scvgae"))]
    print(_table(rows, ["mcv", "pearson"]))
    print(
        "   Lower mcv is better: the imputed half predicts the molecules it never saw better than the raw half"
        " does when its score is below the un-imputed one."
    )


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


class _Refused(Exception):
    """A run refused before or after imputing: exit code 1 with this message."""


def _normalize_raw(adata, args, layer: str) -> bool:
    """Raw counts in X and no default layer: normalize them as ``tl.impute`` does, saying so on stderr."""
    from .tl._impute import normalize_raw_counts

    try:
        made = normalize_raw_counts(adata, args.method, layer, args.counts_layer)
    except ValueError as err:
        raise _Refused(str(err)) from None
    if made and not args.quiet:
        norm = adata.uns["scvgae_sc"]["normalize"][layer]["method"]
        print(
            f"no layer {layer!r}: normalizing the raw counts in X ({norm!r}, the {args.method} default) into "
            f"layers[{layer!r}]; counts kept in layers[{args.counts_layer!r}]",
            file=sys.stderr,
        )
    return made is not None


_NORMALIZE_HINT = {
    "scvgae": "--normalize sqrt (the scVGAE paper's layer)",
    "gnnimpute": "--normalize total (the linear layer GNNImpute models)",
}


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``3``, ``0.5``, ``None``, ``(0.6, 0.2, 0.2)``), else a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. alpha=0.1), got {text!r}")
    value = value.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return key, value


def _random_state(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _write_atomically(adata, target: Path, *, mode: int, compression: str | None = None) -> None:
    """Write ``adata`` to a temporary file beside ``target``, then rename it over ``target``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp, compression=compression)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def impute_command(args: argparse.Namespace) -> int:
    """``scvgae-sc impute``: read IN, impute, write OUT atomically; print a one-line summary."""
    import scanpy as sc

    src = Path(args.input)
    out = src if args.inplace else Path(args.output)
    if not src.is_file():
        raise _Refused(f"{str(src)!r}: no such file.")
    if not args.inplace and out.exists() and not args.force:
        raise _Refused(f"{str(out)!r} exists; pass --force to overwrite it.")
    if out.exists() and out.is_dir():
        raise _Refused(f"{str(out)!r} is a folder; name an .h5ad file.")
    if not out.parent.is_dir():
        raise _Refused(f"the folder of {str(out)!r} does not exist.")
    if args.save_model is not None:
        model_dir = Path(args.save_model)
        if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())) and not args.force:
            raise _Refused(f"{str(model_dir)!r} exists; pass --force to overwrite it.")
    options = dict(args.option or [])
    options.setdefault("progress_bar", not args.quiet)
    with sc.settings.verbosity.override(1 if args.quiet else 2):
        return _impute(args, src, out, options)


def _impute(args: argparse.Namespace, src: Path, out: Path, options: dict[str, Any]) -> int:
    import time

    import anndata as ad

    import scvgae_sc as sv

    try:
        adata = ad.read_h5ad(src)
    except Exception as err:  # noqa: BLE001 - h5py / anndata raise many kinds; any of them means "cannot read"
        raise _Refused(f"cannot read {str(src)!r} as an .h5ad file: {type(err).__name__}: {err}") from err

    layer = None if args.layer == "X" else args.layer
    if args.normalize is not None:
        if layer is None:
            raise _Refused("--normalize writes a layer; name it with --layer (not X).")
        if layer in adata.layers:
            raise _Refused(
                f"{str(src)!r} already has a layer {layer!r}; drop --normalize to impute it, or name a new layer "
                "with --layer."
            )
        if not args.quiet:
            print(f"normalizing ({args.normalize!r}) into layers[{layer!r}]", file=sys.stderr)
        sv.pp.normalize(adata, method=args.normalize, counts_layer=args.counts_layer, key_added=layer)
    elif layer is not None and layer not in adata.layers and not _normalize_raw(adata, args, layer):
        have = ", ".join(repr(k) for k in adata.layers) or "none"
        raise _Refused(
            f"{str(src)!r} has no layer {layer!r} (layers: {have}). Run `scvgae_sc.pp.normalize(adata)` in Python and "
            f"save the h5ad before `scvgae-sc impute`, or let this command normalize the counts in X with "
            f"{_NORMALIZE_HINT[args.method]}; or name an existing layer with --layer."
        )
    if args.counts_layer not in adata.layers:
        have = ", ".join(repr(k) for k in adata.layers) or "none"
        raise _Refused(
            f"{str(src)!r} has no counts layer {args.counts_layer!r} (layers: {have}). Both methods also need the raw "
            "counts: `scvgae_sc.pp.normalize` keeps them in layers['counts']; or name the layer holding them with "
            "--counts-layer."
        )

    t0 = time.perf_counter()
    result = sv.tl.impute(
        adata,
        method=args.method,
        layer=layer,
        counts_layer=args.counts_layer,
        key_added=args.key_added,
        graph_key=args.graph_key,
        max_epochs=args.max_epochs,
        device=args.device,
        random_state=args.random_state,
        max_memory=args.max_memory,
        batch_key=args.batch_key,
        return_model=args.save_model is not None,
        **options,
    )
    key = args.key_added or args.method
    if args.save_model is not None:
        result.save(args.save_model, overwrite=args.force)
    target = out.resolve()  # through a symlink to the file it names, as a shell redirection would
    mode = stat.S_IMODE(os.stat(target).st_mode) if target.exists() else _new_file_mode()
    _write_atomically(adata, target, mode=mode, compression=args.compression)
    elapsed = time.perf_counter() - t0
    device = adata.uns[key]["device"]
    saved = f", model -> {args.save_model}" if args.save_model is not None else ""
    print(
        f"imputed {adata.n_obs} x {adata.n_vars} with {args.method} in {elapsed:.1f} s on {device} -> {out} "
        f"(layers[{key!r}]){saved}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="scvgae-sc", description="GNN dropout imputation for scRNA-seq.")
    parser.add_argument("--version", action="version", version=f"scvgae-sc {__version__}")
    sub = parser.add_subparsers(dest="command")

    p_imp = sub.add_parser(
        "impute",
        help="impute an .h5ad file into a new one (atomic write; IN is never changed unless --inplace)",
        description="Read IN.h5ad, impute with scVGAE or GNNImpute, write OUT.h5ad with the result in "
        "layers[KEY], obsm['X_KEY'], obsp['KEY_connectivities'] and uns[KEY] (as sv.tl.impute does). IN needs a "
        "normalized layer and the raw counts (sv.pp.normalize writes both), or pass --normalize. OUT is written "
        "to a temporary file beside it, then renamed: it appears complete or not at all. Exit codes: 0 done, "
        "1 bad input or refused (message on stderr), 2 usage, 130 interrupted.",
    )
    p_imp.add_argument("input", metavar="IN.h5ad", help="input AnnData file (read only, unless --inplace)")
    p_imp.add_argument("-o", "--output", metavar="OUT.h5ad", help="output file (required unless --inplace)")
    p_imp.add_argument("--method", required=True, choices=("scvgae", "gnnimpute"))
    p_imp.add_argument(
        "--layer", default="normalized", help="normalized input layer; 'X' for adata.X (default: %(default)s)"
    )
    p_imp.add_argument("--counts-layer", default="counts", help="layer of raw counts (default: %(default)s)")
    p_imp.add_argument("--key-added", default=None, help="where results go (default: the method's name)")
    p_imp.add_argument(
        "--graph-key", default=None, help="train on this graph from sv.pp.cell_graph (default: build one)"
    )
    p_imp.add_argument(
        "--batch-key",
        default=None,
        metavar="COLUMN",
        help="adata.obs column naming each cell's batch: the graph is built within batches (--option "
        "batch_mode=balanced: neighbours from every batch) and size factors are per batch (default: no batches)",
    )
    p_imp.add_argument("--max-epochs", type=_positive_int, default=None, help="training epochs (default: the method's)")
    p_imp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    p_imp.add_argument("--random-state", type=_random_state, default=0, help="seed, or 'none' (default: 0)")
    p_imp.add_argument(
        "--normalize",
        choices=("sqrt", "log1p", "total"),
        default=None,
        help="normalize the raw counts in X (or --counts-layer) into --layer first, as sv.pp.normalize(method=...)",
    )
    p_imp.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="a method option (repeatable; see sv.tl.scvgae_options() / gnnimpute_options()); VALUE is a Python "
        "literal (3, 0.5, None, true, (0.6, 0.2, 0.2)) or else a string",
    )
    p_imp.add_argument("--max-memory", type=float, default=None, help="bytes the run may use (default: available)")
    p_imp.add_argument("--compression", choices=("gzip", "lzf"), default=None, help="compress OUT's matrices")
    p_imp.add_argument("--save-model", metavar="DIR", default=None, help="also save the trained model to DIR")
    p_imp.add_argument("--inplace", action="store_true", help="write the result back into IN (atomically)")
    p_imp.add_argument("--force", action="store_true", help="overwrite an existing OUT (and --save-model DIR)")
    p_imp.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs on stderr")

    p_demo = sub.add_parser("demo", help="filter, normalize, build the graph, impute and score offline PBMC data")
    p_demo.add_argument("--max-epochs", type=int, default=None, help="training epochs (default: the method's)")
    p_demo.add_argument("--random-state", type=int, default=0)
    p_demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p_demo.add_argument(
        "--figdir", default=None, help="folder for demo_embedding_comparison.png (default: a new temporary folder)"
    )
    p_demo.add_argument("--no-plot", action="store_true", help="skip the UMAP comparison figure")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scvgae-sc`` command; returns the exit code (argparse's 2 for usage errors)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "impute":
            if args.inplace and args.output is not None:
                parser.error("impute: --inplace writes into IN; drop -o/--output")
            if not args.inplace and args.output is None:
                parser.error("impute: -o/--output OUT.h5ad is required (or --inplace to write into IN)")
            if not args.inplace and Path(args.output).resolve() == Path(args.input).resolve():
                parser.error("impute: OUT is IN; pass --inplace (without -o) to overwrite the input")
    except SystemExit as exit_:  # argparse: --help, --version (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "impute":
            return impute_command(args)
        if args.command == "demo":
            return demo(
                max_epochs=args.max_epochs,
                random_state=args.random_state,
                device=args.device,
                figdir=args.figdir,
                plot=not args.no_plot,
            )
    except (_Refused, ValueError, TypeError, FloatingPointError, OSError) as err:
        print(f"scvgae-sc: error: {err}", file=sys.stderr)
        return 1
    except MemoryError:
        print("scvgae-sc: error: out of memory (use fewer cells or genes)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "impute":
            what = f"{args.input} was left as it was" if args.inplace else f"{args.output} was not written"
        else:
            what = "stopped"
        print(f"scvgae-sc: interrupted; {what}", file=sys.stderr)
        return 130
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
