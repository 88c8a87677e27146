"""Both methods' outputs on ``datasets.pbmc68k()``, pinned across refactors.

The arrays in ``tests/data/pinned_*.npy`` were computed with every option at its default, written out, except
``precision="32"`` and ``max_epochs=10``. When a change alters a default or the output on purpose, regenerate
them in that change (``python tests/tl/test_pinned_outputs.py``) and say why in its commit message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import scvgae_sc as sv

DATA = Path(__file__).resolve().parents[1] / "data"
#: The imputed layer is stored on every other cell (the whole matrix would exceed 2 MB); the latent whole.
ROWS = slice(None, None, 2)
RTOL = 1e-5
#: Absolute tolerance for float32 noise on values near zero (the layers are sqrt-normalized, values up to ~30).
ATOL = 1e-5

SCVGAE = {
    "graph": "knn",
    "n_neighbors": 15,
    "n_pcs": 50,
    "percentile": 85,
    "alpha": 0.05,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "hidden": 128,
    "decoder_hidden": 256,
    "decoder_input": "latent",
    "heads": "gcn",
    "variational": False,
    "kl_weight": 1.0,
    "zinb_target": "counts",
    "add_back": True,
    "add_back_init": 1.0,
    "calibrate": True,
    "mask_rate": 0.1,
    "mask_weight": 1.0,
    "output": "fill",
    "fill_scale": "auto",
    "fill_gate": 0.4,
    "fill_hops": 2,
    "graph_fill": True,
    "transform": "auto",
    "batch_mode": "within",
    "batch_size": 512,
    "batching": "auto",
    "precision": "32",
}
GNNIMPUTE = {
    "n_neighbors": 5,
    "n_pcs": 50,
    "patience": "auto",
    "lr": 2e-3,
    "weight_decay": 5e-4,
    "hidden": 512,
    "latent": 50,
    "heads": 3,
    "dropout": 0.5,
    "attention_dropout": 0.6,
    "split": (0.6, 0.2, 0.2),
    "mask_rate": 0.1,
    "mask_weight": 1.0,
    "output": "fill",
    "fill_gate": 0.0,
    "fill_scale": "auto",
    "fill_hops": 3,
    "graph_fill": "auto",
    "batch_mode": "within",
    "precision": "32",
    "batching": "auto",
    "batch_size": 512,
}
OPTIONS = {"scvgae": SCVGAE, "gnnimpute": GNNIMPUTE}


def compute(method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(imputed rows, latent)`` of ``method`` on filtered, sqrt-normalized pbmc68k."""
    adata = sv.datasets.pbmc68k()
    sv.pp.filter(adata)
    sv.pp.normalize(adata)
    sv.tl.impute(
        adata,
        method=method,
        layer="normalized",
        counts_layer="counts",
        key_added=None,
        graph_key=None,
        max_epochs=10,
        device="cpu",
        random_state=0,
        batch_key=None,
        progress_bar=False,
        **OPTIONS[method],
    )
    imputed = np.ascontiguousarray(adata.layers[method][ROWS], dtype=np.float32)
    latent = np.ascontiguousarray(adata.obsm[f"X_{method}"], dtype=np.float32)
    return imputed, latent


@pytest.mark.parametrize("method", ["scvgae", "gnnimpute"])
def test_pinned_outputs(method):
    # one BLAS / OpenMP thread, as when the arrays were made: the PCA behind the graph rounds by thread count
    with threadpool_limits(1):
        imputed, latent = compute(method)
    want_imputed = np.load(DATA / f"pinned_{method}_imputed.npy")
    want_latent = np.load(DATA / f"pinned_{method}_latent.npy")
    np.testing.assert_allclose(imputed, want_imputed, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(latent, want_latent, rtol=RTOL, atol=ATOL)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # as in the test session (tests/conftest.py)
    for name in OPTIONS:
        with threadpool_limits(1):
            imp, lat = compute(name)
        np.save(DATA / f"pinned_{name}_imputed.npy", imp)
        np.save(DATA / f"pinned_{name}_latent.npy", lat)
        print(name, imp.shape, lat.shape)
