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


def _table(rows: list[dict], columns: Sequence[str], first: str = "layer") -> str:
    head = [first, *columns]
    body = [[r[first], *(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [head, *body])


def _say(text: str) -> None:
    """Print a sentence of the demo, wrapped and indented under its step."""
    import textwrap

    print(textwrap.fill(text, width=110, initial_indent="   ", subsequent_indent="   "))


def demo(
    *,
    max_epochs: int | None = None,
    random_state: int = 0,
    device: str = "auto",
    figdir: str | None = None,
    plot: bool = True,
) -> int:
    """Run the whole pipeline on the offline ``pbmc68k`` data and show where imputation helps and where it does not.

    After filtering, normalizing, building the cell graph and imputing with scVGAE, it prints one marker gene per
    cell type before and after imputation, the clustering scores against the known cell types, and the denoising
    score (:func:`scvgae_sc.pp.split_counts` and :func:`scvgae_sc.tl.score_denoising`: half of the molecules
    imputed, scored against the other half), each with a sentence on what the numbers say, and a summary.

    With ``plot``, writes ``demo_embedding_comparison.png`` (UMAP of the normalized and the imputed layer) and
    ``demo_marker_GENE.png`` (the marker gene before and after, on the normalized layer's UMAP) into ``figdir``
    (default: a new temporary folder, never the working directory) and prints their paths.
    """
    import scanpy as sc

    import scvgae_sc as sv

    sc.settings.verbosity = 1
    adata = _demo_prepare(random_state)
    print("5. sv.tl.impute(adata, method='scvgae', graph_key='cell_graph') -> layers['scvgae']")
    sv.tl.impute(
        adata, method="scvgae", graph_key="cell_graph", max_epochs=max_epochs, device=device, random_state=random_state
    )
    u = adata.uns["scvgae"]
    print(f"   trained {len(u['history']['loss'])} epochs on {u['device']} in {u['runtime_s']:.1f} s")
    print(_describe(adata))

    marker = _demo_marker(adata)
    deltas = _demo_clustering(adata, random_state)
    if plot:
        print("8. sv.pl.embedding_comparison(adata, ['normalized', 'scvgae'], basis='umap'): UMAP of each layer")
        path = _plot_comparison(adata, figdir, random_state=random_state)
        print(f"   figure: {path}")
        print(f"   figure: {_plot_marker(adata, marker['gene'], path.parent)} ({marker['gene']} before and after)")
    step = 9 if plot else 8
    mcv = _demo_denoising(step, max_epochs=max_epochs, device=device, random_state=random_state)
    _demo_summary(step + 1, marker, deltas, mcv)
    return 0


def _demo_prepare(random_state: int):
    """Steps 1-4: the data, filtered and normalized, with a cell graph."""
    import scvgae_sc as sv

    from ._constants import DEFAULT_NORMALIZATION

    print("1. data: scvgae_sc.datasets.pbmc68k() — real UMI counts, offline")
    adata = sv.datasets.pbmc68k()
    print(_describe(adata))
    print("2. sv.pp.filter(adata): keep genes/cells detected in > 5 % of cells/genes")
    sv.pp.filter(adata)
    print(_describe(adata))
    norm = DEFAULT_NORMALIZATION["scvgae"]
    print(f"3. sv.pp.normalize(adata, method={norm!r}): counts kept in layers['counts'], layer 'normalized'")
    sv.pp.normalize(adata, method=norm)
    print("4. sv.pp.cell_graph(adata): 15-NN graph on 50 PCs -> obsp['cell_graph_connectivities']")
    sv.pp.cell_graph(adata, random_state=random_state)
    return adata


#: PBMC markers the demo shows before and after imputation (the first one present is used).
_MARKERS = ("MS4A1", "CD79A", "NKG7", "LYZ", "CST3")


def _column(X, j: int):
    """Column ``j`` of a dense or sparse matrix as a 1-d float array."""
    import numpy as np
    from scipy import sparse

    col = X[:, j]
    return np.asarray(col.toarray() if sparse.issparse(col) else col, dtype=np.float64).ravel()


def _demo_marker(adata) -> dict[str, Any]:
    """A marker gene per cell type before and after; what it shows, as numbers for the summary."""
    import numpy as np

    gene = next((g for g in _MARKERS if g in adata.var_names), adata.var_names[0])
    j = adata.var_names.get_loc(gene)
    before, after = _column(adata.layers["normalized"], j), _column(adata.layers["scvgae"], j)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    print(f"6. one marker gene, {gene}, per cell type: share of cells where no molecule was counted, and the mean")
    print("   of layers['normalized'] (before) and layers['scvgae'] (after imputation), on the same scale")
    rows = []
    for label in sorted(set(labels)):
        cells = labels == label
        rows.append(
            {
                "cell type": label,
                "cells": int(cells.sum()),
                "zero before": f"{np.mean(before[cells] == 0):.0%}",
                "mean before": float(before[cells].mean()),
                "mean after": float(after[cells].mean()),
            }
        )
    print(_table(rows, ["cells", "zero before", "mean before", "mean after"], first="cell type"))
    top = max(rows, key=lambda r: r["mean before"])["cell type"]
    cells = labels == top
    m = {"gene": gene, "top": top, "zero": float(np.mean(before[cells] == 0))}
    m["zero_after"], m["zero_top_after"] = float(np.mean(after == 0)), float(np.mean(after[cells] == 0))
    m["fold"] = tuple(_fold(x[cells].mean(), x[~cells].mean()) for x in (before, after))
    after_zero = (
        "no cell is zero"
        if m["zero_after"] == 0
        else f"{m['zero_top_after']:.0%} of them ({m['zero_after']:.0%} of all cells) are zero"
    )
    _say(
        f"{gene} is highest in {top}: in {m['zero']:.0%} of those cells no {gene} molecule was counted. After "
        f"imputation {after_zero}: each entry is an estimate of the cell's expression, not a count. {top} cells "
        f"stand out {m['fold'][0]} from the other cells before and {m['fold'][1]} after."
    )
    return m


def _fold(a: float, b: float) -> str:
    """``a / b`` as a fold change for text (``"completely"`` when ``b`` is zero)."""
    return f"{a / b:.1f}-fold" if b > 0 else "completely (no other cell has any)"


def _demo_clustering(adata, random_state: int) -> list[float]:
    """The clustering table and one line on what it means; the ARI changes (imputed minus normalized)."""
    import scvgae_sc as sv

    print("7. clustering agreement with the cell-type labels (sv.tl.score_clustering; higher is better)")
    rows, ari = [], {}
    for layer in ("normalized", "scvgae"):
        for protocol in ("paper", "leiden"):
            s = sv.tl.score_clustering(adata, layer, protocol=protocol, random_state=random_state)
            rows.append({"layer": f"{layer} ({protocol})", **s})
            ari[layer, protocol] = s["ari"]
    print(_table(rows, ["ari", "ami", "nmi", "n_clusters"]))
    deltas = [ari["scvgae", p] - ari["normalized", p] for p in ("paper", "leiden")]
    change = f"ARI {deltas[0]:+.3f} with the paper protocol, {deltas[1]:+.3f} with Leiden"
    if min(deltas) > 0.02:
        verdict = f"The imputed layer clusters better here ({change})"
    elif max(deltas) < -0.02:
        verdict = f"The imputed layer clusters worse here ({change})"
    else:
        verdict = f"Imputation does not change clustering consistently here ({change})"
    _say(
        f"{verdict}. Imputation is not meant to sharpen clusters: it moves each cell towards its neighbours in a "
        "graph found from the un-imputed data, which adds no cell-type information; cluster the un-imputed layer."
    )
    return deltas


def _demo_denoising(step: int, *, max_epochs, device, random_state: int) -> tuple[float, float]:
    """Molecular cross-validation on fresh data: impute half of each cell's molecules, score against the other half.

    Returns the MCV loss without and with imputation.
    """
    import scvgae_sc as sv

    from ._constants import DEFAULT_NORMALIZATION

    print(f"{step}. does it denoise? split every count into two halves (sv.pp.split_counts), impute one half,")
    print("   and score against the other half (sv.tl.score_denoising)")
    adata = sv.datasets.pbmc68k()
    sv.pp.filter(adata)
    sv.pp.split_counts(adata, random_state=random_state)
    sv.pp.normalize(adata, method=DEFAULT_NORMALIZATION["scvgae"], counts_layer="mcv_train", key_added="train")
    sv.tl.impute(
        adata,
        method="scvgae",
        layer="train",
        counts_layer="mcv_train",
        max_epochs=max_epochs,
        device=device,
        random_state=random_state,
    )
    layers = (("no imputation", "train"), ("scvgae", "scvgae"))
    rows = [{"layer": name, **sv.tl.score_denoising(adata, layer)} for name, layer in layers]
    print(_table(rows, ["mcv", "pearson"]))
    before, after = rows[0]["mcv"], rows[1]["mcv"]
    _say(
        "mcv: how far each layer, made from one half of the molecules, is from the other half, which the method "
        "never saw (mean squared difference of log expression); lower is better."
    )
    if after < before:
        _say(f"Imputation lowers it by {1 - after / before:.0%}: it removes more sampling noise than signal.")
    else:
        _say(f"Imputation does not lower it ({after / before - 1:+.0%}): it does not denoise these cells.")
    return before, after


def _demo_summary(step: int, marker: dict[str, Any], deltas: list[float], mcv: tuple[float, float]) -> None:
    """Where imputation helped and where it did not, from the numbers above."""
    helps, fails = [], []
    target = helps if mcv[1] < mcv[0] else fails
    target.append(f"estimating expression (mcv {mcv[0]:.3f} -> {mcv[1]:.3f})")
    if marker["zero"] > marker["zero_top_after"]:
        helps.append(f"filling in {marker['gene']} where it was missed in {marker['top']} cells ({marker['zero']:.0%})")
    if marker["zero_after"] == 0:
        fails.append(f"telling which cells lack a gene: every cell gets a value ({marker['gene']})")
    target = helps if min(deltas) > 0.02 else fails
    target.append("separating cell types (ARI " + ", ".join(f"{d:+.3f}" for d in deltas) + ")")
    print(f"{step}. in short")
    _say("Helps: " + ("; ".join(helps) or "nothing in this run") + ".")
    _say("Does not help: " + ("; ".join(fails) or "nothing in this run") + ".")


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


def _plot_marker(adata, gene: str, folder: Path) -> Path:
    """``gene`` in the normalized and the imputed layer on the normalized layer's UMAP (one colour scale); its path.

    Needs the UMAP :func:`_plot_comparison` computes (``obsm['X_umap_normalized']``).
    """
    import warnings

    import matplotlib.pyplot as plt
    import scanpy as sc

    j = adata.var_names.get_loc(gene)
    vmax = max(float(_column(adata.layers[k], j).max()) for k in ("normalized", "scvgae"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
    for ax, (layer, what) in zip(axes, (("normalized", "before"), ("scvgae", "after imputation")), strict=True):
        with warnings.catch_warnings():  # scanpy's own use of matplotlib's Colormap.set_bad, not ours to fix
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sc.pl.embedding(
                adata,
                basis="X_umap_normalized",
                color=gene,
                layer=layer,
                use_raw=False,
                vmin=0,
                vmax=vmax,
                ax=ax,
                show=False,
                title=f"{gene}, {what} (layers['{layer}'])",
                size=12,
            )
        ax.set_xlabel("UMAP1 (normalized)")
        ax.set_ylabel("UMAP2 (normalized)")
    path = folder / f"demo_marker_{gene}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


class _Refused(Exception):
    """A run refused before or after imputing: exit code 1 with this message."""


def _normalize_raw(adata, args, layer: str) -> bool:
    """No default layer: make it from the raw counts as ``tl.impute`` does, saying so on stderr (even with -q)."""
    import scanpy as sc

    from .tl._impute import normalize_raw_counts

    try:
        with sc.settings.verbosity.override(0):  # this message replaces tl.impute's warning and the normalize log
            made = normalize_raw_counts(adata, args.method, layer, args.counts_layer)
    except ValueError as err:
        raise _Refused(str(err)) from None
    if made:
        norm = adata.uns["scvgae_sc"]["normalize"][layer]["method"]
        kept = "" if made["source"] != "X" else f"; counts kept in layers[{args.counts_layer!r}]"
        print(
            f"warning: no layer {layer!r}: normalizing the raw counts in {made['source']} ({norm!r}, the "
            f"{args.method} default) into layers[{layer!r}]{kept}",
            file=sys.stderr,
        )
    return made is not None


def _normalize_hint(method: str) -> str:
    from ._constants import DEFAULT_NORMALIZATION

    return f"--normalize {DEFAULT_NORMALIZATION[method]} (the {method} default)"


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
            f"{_normalize_hint(args.method)}; or name an existing layer with --layer."
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
    from ._constants import DEFAULT_NORMALIZATION

    defaults = ", ".join(f"{m}: {norm}" for m, norm in DEFAULT_NORMALIZATION.items())

    parser = argparse.ArgumentParser(prog="scvgae-sc", description="GNN dropout imputation for scRNA-seq.")
    parser.add_argument("--version", action="version", version=f"scvgae-sc {__version__}")
    sub = parser.add_subparsers(dest="command")

    p_imp = sub.add_parser(
        "impute",
        help="impute an .h5ad file into a new one (atomic write; IN is never changed unless --inplace)",
        description="Read IN.h5ad, impute with scVGAE or GNNImpute, write OUT.h5ad with the result in "
        "layers[KEY], obsm['X_KEY'], obsp['KEY_connectivities'] and uns[KEY] (as sv.tl.impute does). IN needs the "
        "raw counts (in X or --counts-layer) and a normalized layer (sv.pp.normalize writes both); when the default "
        f"layer 'normalized' is missing, it is made from the counts with the method's default normalization "
        f"({defaults}), or with --normalize. OUT is written "
        "to a temporary file beside it, then renamed: it appears complete or not at all. Exit codes: 0 done, "
        "1 bad input or refused (message on stderr), 2 usage, 130 interrupted.",
    )
    p_imp.add_argument("input", metavar="IN.h5ad", help="input AnnData file (read only, unless --inplace)")
    p_imp.add_argument("-o", "--output", metavar="OUT.h5ad", help="output file (required unless --inplace)")
    p_imp.add_argument("--method", required=True, choices=("scvgae", "gnnimpute"))
    p_imp.add_argument(
        "--layer",
        default="normalized",
        help="normalized input layer; 'X' for adata.X (default: %(default)s, made from the counts if missing; any "
        "other missing layer is an error)",
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

    p_demo = sub.add_parser("demo", help="impute offline PBMC data and show where imputation helps and where not")
    p_demo.add_argument("--max-epochs", type=int, default=None, help="training epochs (default: the method's)")
    p_demo.add_argument("--random-state", type=int, default=0)
    p_demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p_demo.add_argument(
        "--figdir",
        default=None,
        help="folder for demo_embedding_comparison.png and demo_marker_GENE.png (default: a new temporary folder)",
    )
    p_demo.add_argument("--no-plot", action="store_true", help="skip the UMAP figures")
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
