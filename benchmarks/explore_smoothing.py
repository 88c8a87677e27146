"""Model-free baselines: how much does averaging over the cell graph alone move the clustering scores?

Scores, on one dataset's clustering task (``pp.filter`` → ``pp.normalize`` → the sqrt layer) or masked task
(``bench.py``'s protocol, ``--task masked``), the un-imputed layer and simple neighbourhood fills computed from a
k-NN graph (``pp.cell_graph``, the cell included):

- ``smooth``: every entry replaced by the mean over the cell's neighbourhood;
- ``fill mean``: observed values kept, zeros filled with the mean of the neighbourhood's non-zeros;
- ``fill mean, gated``: the same, times ``min(1, detection rate / 0.4)`` — scVGAE's ``fill_gate=0.4`` applied to
  a model-free prediction.

If these baselines already lose what an imputation loses, the loss comes from the graph (which cells are
averaged), not from the network. Printed as a table; ``--out`` also writes JSON::

    python benchmarks/explore_smoothing.py bladder --neighbors 5 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import sparse

from scvgae_sc._utils import to_dense_array

sys.path.insert(0, str(Path(__file__).resolve().parent))


def neighbourhood_operator(adata, n_neighbors: int, layer: str) -> sparse.csr_matrix:
    """Row-stochastic averaging over each cell's k-NN graph neighbourhood, the cell itself included."""
    import scvgae_sc as sv

    key = f"smooth{n_neighbors}"
    sv.pp.cell_graph(adata, layer=layer, n_neighbors=n_neighbors, key_added=key)
    C = (adata.obsp[f"{key}_connectivities"] > 0).astype(np.float32) + sparse.eye(adata.n_obs, dtype=np.float32)
    return sparse.csr_matrix(sparse.diags(1.0 / np.asarray(C.sum(axis=1)).ravel()) @ C)


def log1p_layer(adata, layer: str) -> str:
    """Write ``log1p`` of a sparse linear layer to ``layers[f"{layer}_log1p"]`` and return that key.

    The models build their graph on ``log1p`` of a linear layer (``transform="log1p"``); the baselines do too.
    """
    key = f"{layer}_log1p"
    adata.layers[key] = adata.layers[layer].copy()
    adata.layers[key].data = np.log1p(adata.layers[key].data)
    return key


def neighbourhood_fills(X: np.ndarray, C: sparse.csr_matrix, gate: float, hops: int = 1) -> dict[str, np.ndarray]:
    """``smooth`` (every entry ← neighbourhood mean), ``fill`` and ``gated`` (see the module docstring) of dense
    ``X`` under the averaging operator ``C`` applied ``hops`` times (the neighbourhood a ``hops``-step walk
    reaches)."""
    observed = X > 0
    rate, smooth = observed.astype(np.float32), X
    for _ in range(hops):
        rate, smooth = C @ rate, C @ smooth
    fill = smooth / np.maximum(rate, 1e-6)
    return {
        "smooth": smooth,
        "fill": np.where(observed, X, fill),
        "gated": np.where(observed, X, fill * np.minimum(1.0, rate / gate)) if gate > 0 else None,
    }


def knn_fill(
    adata, layer: str, *, n_neighbors: int = 15, gate: float = 0.0, hops: int = 1, graph_layer: str | None = None
):
    """The model-free baseline of ``bench.py`` (methods ``knn_fill`` / ``knn_fill_gated``).

    Observed values of ``layer`` kept; each zero filled with the mean of the non-zero values of that gene among
    the cell's ``n_neighbors``-NN neighbourhood (``pp.cell_graph`` on ``graph_layer``, default ``layer``; the cell
    included), times ``min(1, detection rate / gate)`` when ``gate > 0`` (scVGAE's ``fill_gate``). ``hops > 1``:
    mean and rate over the cells a ``hops``-step random walk on that graph reaches (scVGAE's ``fill_hops``).
    """
    X = to_dense_array(adata.layers[layer])
    fills = neighbourhood_fills(X, neighbourhood_operator(adata, n_neighbors, graph_layer or layer), gate, hops)
    return (fills["gated"] if gate > 0 else fills["fill"]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    import scanpy as sc
    from bench import load

    import scvgae_sc as sv

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="pbmc68k, or a ../shared/data file stem (pbmc3k, bladder, baron_mouse)")
    p.add_argument("--neighbors", nargs="+", type=int, default=[5, 15])
    p.add_argument("--gate", type=float, default=0.4)
    p.add_argument("--hops", nargs="+", type=int, default=[1], help="graph steps of the fills (e.g. 1 2)")
    p.add_argument("--task", choices=["clustering", "masked"], default="clustering")
    p.add_argument("--seed", type=int, default=0, help="seed of pp.mask_dropouts (masked task)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    sc.settings.verbosity = 0
    adata = load(args.dataset)
    sv.pp.filter(adata)
    if args.task == "clustering":
        sv.pp.normalize(adata)
        layer = graph_layer = "normalized"
    else:  # bench.py's masked task; the graph on log1p of the masked linear layer
        sv.pp.normalize(adata, method="total", key_added="total")
        sv.pp.mask_dropouts(adata, layer="total", random_state=args.seed)
        layer = "masked"
        graph_layer = log1p_layer(adata, layer)
    X = to_dense_array(adata.layers[layer])

    variants: dict[str, np.ndarray] = {"un-imputed": X}
    for k in args.neighbors:
        C = neighbourhood_operator(adata, k, graph_layer)
        for hops in args.hops:
            fills = neighbourhood_fills(X, C, args.gate, hops)
            name = f"{k}-NN" + (f", {hops} steps," if hops > 1 else "")
            variants[f"{name} smooth"] = fills["smooth"]
            variants[f"{name} fill mean"] = fills["fill"]
            variants[f"{name} fill mean, gated {args.gate}"] = fills["gated"]

    if args.task == "masked":
        columns = ["Pearson", "MSE", "MAE", "cosine"]

        def score(key: str) -> dict:
            return sv.tl.score_imputation(adata, key, truth_layer="total")

        def cells(s: dict) -> list[float]:
            return [s["pearson"], s["mse"], s["mae"], s["cosine"]]
    else:
        columns = ["paper ARI", "paper AMI", "Leiden ARI", "Leiden AMI"]

        def score(key: str) -> dict:
            return {p: sv.tl.score_clustering(adata, key, protocol=p) for p in ("paper", "leiden")}

        def cells(s: dict) -> list[float]:
            return [s["paper"]["ari"], s["paper"]["ami"], s["leiden"]["ari"], s["leiden"]["ami"]]

    print(f"{args.dataset}, {args.task}: {adata.n_obs} x {adata.n_vars}")
    print("| variant | " + " | ".join(columns) + " |\n|" + " --- |" * (len(columns) + 1))
    rows = []
    for name, Y in variants.items():
        if Y is None:  # --gate 0: no gated variant
            continue
        adata.layers["_variant"] = np.asarray(Y, dtype=np.float32)
        s = score("_variant")
        rows.append({"variant": name, **s})
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells(s)) + " |")
    if args.out:
        args.out.write_text(json.dumps({"dataset": args.dataset, "task": args.task, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
