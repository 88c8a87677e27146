"""Which input scale does MAGIC's masked-recovery figure depend on? (pbmc3k, masked task, seed 0.)

Runs MAGIC (defaults) on the masked linear layer as given, on its sqrt (squared back: the benchmark's choice)
and on its log1p (expm1 back), and scores each on the linear scale like ``bench.py``. Run in the peers' env::

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv-peers/bin/python benchmarks/magic_scale_check.py

Output used in ``benchmarks/README.md`` (section "Peer figures against the ones quoted in the issues").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anndata as ad
import magic
import numpy as np

import scvgae_sc as sv

DATA = Path(os.environ.get("SCVGAE_SC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

adata = ad.read_h5ad(DATA / "pbmc3k.h5ad")
sv.pp.filter(adata)
sv.pp.normalize(adata, method="total", key_added="total")
sv.pp.mask_dropouts(adata, layer="total", random_state=0)
X = adata.layers["masked"].toarray().astype(np.float64)
variants = {
    "linear (as given)": (lambda x: x, lambda y: np.maximum(y, 0)),
    "sqrt, squared back (benchmark)": (np.sqrt, lambda y: np.maximum(y, 0) ** 2),
    "log1p, expm1 back": (np.log1p, lambda y: np.expm1(np.maximum(y, 0))),
}
print("| MAGIC input | Pearson | MSE | MAE | cosine | s |\n| --- | --- | --- | --- | --- | --- |")
for name, (forward, back) in variants.items():
    t0 = time.perf_counter()
    Y = back(np.asarray(magic.MAGIC(random_state=0, n_jobs=1, verbose=0).fit_transform(forward(X))))
    seconds = time.perf_counter() - t0
    adata.layers["magic"] = Y.astype(np.float32)
    s = sv.tl.score_imputation(adata, "magic", truth_layer="total")
    print(f"| {name} | {s['pearson']:.3f} | {s['mse']:.2f} | {s['mae']:.3f} | {s['cosine']:.3f} | {seconds:.1f} |")
