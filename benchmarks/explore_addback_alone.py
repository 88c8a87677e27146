"""What the paper protocol says about scVGAE's add-back term alone, with no model.

The published scVGAE adds the input standardized per gene and per cell (``BatchNorm(X) + BatchNorm(Xᵀ)ᵀ``) to its
decoder output. This scores that term alone, made from the un-imputed sqrt layer, next to the layer itself, with
``tl.score_clustering(protocol="paper")`` (deterministic: KMeans / spectral with fixed seeds)::

    python benchmarks/explore_addback_alone.py [pbmc3k bladder baron_mouse]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np

import scvgae_sc as sv

DATA = Path(os.environ.get("SCVGAE_SC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main(names: list[str]) -> None:
    print("| dataset | layer | paper ARI | paper AMI |\n| --- | --- | --- | --- |")
    for name in names:
        adata = ad.read_h5ad(DATA / f"{name}.h5ad")
        sv.pp.filter(adata)
        sv.pp.normalize(adata, method="sqrt")
        X = adata.layers["normalized"]
        X = (X.toarray() if hasattr(X, "toarray") else np.asarray(X)).astype(np.float64)
        gene_z = (X - X.mean(0)) / np.sqrt(X.var(0) + 1e-5)
        cell_z = (X - X.mean(1, keepdims=True)) / np.sqrt(X.var(1, keepdims=True) + 1e-5)
        adata.layers["gene_z"] = gene_z.astype(np.float32)
        adata.layers["add_back"] = (gene_z + cell_z).astype(np.float32)
        for layer in ("normalized", "gene_z", "add_back"):
            s = sv.tl.score_clustering(adata, layer, labels_key="cell_type", protocol="paper")
            print(f"| {name} | {layer} | {s['ari']:.3f} | {s['ami']:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["pbmc3k", "bladder", "baron_mouse"])
