"""One scVGAE configuration on one dataset: clustering and masked recovery, printed as one JSON line.

The quick exploration behind the defaults (single seed; see results/scvgae_exploration.md)::

    python benchmarks/explore_scvgae.py '{"max_epochs": 100, "output": "recon"}' clustering,masked
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import anndata as ad
import scanpy as sc

import scvgae_sc as sv

sc.settings.verbosity = 0
SHARED = Path(os.environ.get("SCVGAE_SC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
tasks = sys.argv[2].split(",") if len(sys.argv) > 2 else ["clustering", "masked"]
ds = opts.pop("dataset", "pbmc3k")
a0 = ad.read_h5ad(SHARED / f"{ds}.h5ad")
sv.pp.filter(a0)
res = {"opts": opts}
if "clustering" in tasks:
    a = a0.copy()
    sv.pp.normalize(a)
    t = time.time()
    sv.tl.impute(a, method="scvgae", progress_bar=False, **opts)
    res["t_cl"] = round(time.time() - t, 1)
    x = a.layers["normalized"].toarray()
    r = a.layers["scvgae"]
    # also the full reconstruction
    for name, layer in [("out", "scvgae")]:
        s = sv.tl.score_clustering(a, layer, protocol="paper")
        res[f"paper_{name}"] = (round(s["ari"], 3), round(s["ami"], 3))
        s = sv.tl.score_clustering(a, layer, protocol="leiden")
        res[f"leiden_{name}"] = (round(s["ari"], 3), round(s["ami"], 3))
    res["loss_last"] = {
        k: round(float(v[-1]), 4) for k, v in a.uns["scvgae"]["history"].items() if v.ndim == 1 and k != "epoch"
    }
if "masked" in tasks:
    a = a0.copy()
    sv.pp.normalize(a, method="total", key_added="total")
    sv.pp.mask_dropouts(a, layer="total")
    t = time.time()
    sv.tl.impute(a, method="scvgae", layer="masked", counts_layer="masked_counts", progress_bar=False, **opts)
    res["t_mk"] = round(time.time() - t, 1)
    s = sv.tl.score_imputation(a, "scvgae", truth_layer="total")
    res["masked"] = {k: round(v, 3) for k, v in s.items() if k != "n"}
    params = a.uns["scvgae"]["params"]
    res["fill_weights"] = [round(float(params.get(k, 0.0)), 3) for k in ("fill_scale_used", "graph_weight_used")]
res["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(res), flush=True)
