"""Peer imputation methods for the benchmark: ALRA (our implementation), MAGIC and scVI.

Never a dependency of the package: this module is imported by ``benchmarks/bench.py`` only.

Each peer runs in a fresh child interpreter (``python benchmarks/peers.py --child IN OUT``) that receives
exactly what our methods receive in the same job — the job's input layer (dense) and its counts layer
(``masked_counts`` in the masked task, so the hidden entries are zero there too) — plus the two scalars of
the normalization (median library size, target of the sqrt layer) and nothing else. The child returns the
imputed matrix **on the scale of the job's input layer**, the seconds of the imputation itself (imports and
data transfer excluded), its peak RSS and the epochs trained.

Interpreters (MAGIC needs numpy < 2; scVI brings its own torch stack):

- ``SCVGAE_SC_MAGIC_PYTHON`` / ``SCVGAE_SC_SCVI_PYTHON``: default ``.venv-peers/bin/python`` in the repository
  root (see ``benchmarks/README.md`` for the setup);
- ``SCVGAE_SC_ALRA_PYTHON``: default the interpreter running the benchmark (ALRA is numpy/scipy/sklearn only).

Scales and mappings (``task`` = the benchmark task):

clustering
    The input layer is the paper's sqrt layer ``S = sqrt(L)``, ``L`` = log1p(counts) with rows scaled to the
    median row sum ``t_sqrt`` (``pp.normalize(method="sqrt")``).
    MAGIC runs on ``S`` as given (it is already a variance-stabilized, library-normalized matrix, which is what
    MAGIC asks for). ALRA runs on ``L = S**2`` (log-normalized, as ALRA expects) and its output is mapped back
    with ``sqrt``. scVI trains on the raw counts; its ``get_normalized_expression(library_size=m)`` (``m`` =
    median library size, i.e. the ``normalize_total`` scale) is mapped to the sqrt scale exactly as
    ``pp.normalize(method="sqrt")`` maps counts: ``log1p``, rows scaled to ``t_sqrt``, ``sqrt``.
masked, denoising
    The input layer is linear: ``normalize_total`` to the median (masked: of the counts, the hidden entries set
    to 0; denoising: of the molecule split's train half ``mcv_train``, which is also the counts layer, so nothing
    of the test half reaches the child).
    MAGIC runs on ``sqrt`` of it (MAGIC's recommended transform) and its output is squared back. ALRA runs on
    ``log1p`` of it and its output is mapped back with ``expm1``. scVI trains on ``masked_counts`` and
    ``get_normalized_expression(library_size=m)`` is already on this scale (``m`` = the median library the
    layer was normalized to). In the denoising task scVI trains on ``mcv_train``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ("alra", "magic", "scvi")
#: Benchmark tasks whose input layer is linear (``normalize_total``); the clustering task's is the sqrt layer.
TASKS = ("clustering", "masked", "denoising")
DEFAULT_PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


# --------------------------------------------------------------------------------------------------
# ALRA (Linderman, Zhao, Roulis, Bielecki, Kluger, Nat. Commun. 13, 192 (2022)), after the authors' R code
# --------------------------------------------------------------------------------------------------


def _rsvd(A: np.ndarray, k: int, q: int, seed: int):
    from sklearn.utils.extmath import randomized_svd

    # rsvd::rsvd(A, k, q) in R: k components, 10 oversamples, q power iterations
    return randomized_svd(A, n_components=k, n_oversamples=10, n_iter=q, random_state=seed)


def choose_k(
    A: np.ndarray, K: int = 100, thresh: float = 6.0, noise_start: int = 80, q: int = 2, seed: int = 0
) -> tuple[int, np.ndarray]:
    """ALRA's rank heuristic: the last spacing of the top ``K`` singular values that lies more than
    ``thresh`` standard deviations above the mean spacing of the noise tail (values ``noise_start..K``).

    As the R ``choose_k`` (defaults K=100, thresh=6, noise_start=80, q=2); on matrices smaller than
    101 in either dimension, ``K`` and ``noise_start`` shrink so that the tail keeps 20 % of ``K``.
    Returns ``k`` (1-based, the number of components) and the singular values.
    """
    K_max = min(A.shape) - 1
    if K > K_max:
        K = K_max
        noise_start = max(2, int(round(0.8 * K)))
    if noise_start > K - 5:
        raise ValueError("ALRA needs at least 5 singular values considered noise; the matrix is too small.")
    _, d, _ = _rsvd(A, K, q, seed)
    diffs = d[:-1] - d[1:]  # diffs[i-1] = d_i - d_{i+1} (1-based i)
    noise = diffs[noise_start - 1 : K - 1]  # R: diffs[noise_svals - 1], noise_svals = noise_start:K (NA dropped)
    z = (diffs - noise.mean()) / noise.std(ddof=1)
    above = np.flatnonzero(z > thresh)
    if above.size == 0:
        raise ValueError("ALRA's choose_k found no singular-value gap above the threshold.")
    return int(above.max()) + 1, d


def alra(A_norm: np.ndarray, k: int = 0, q: int = 10, quantile_prob: float = 0.001, seed: int = 0) -> tuple:
    """ALRA completion of a log-normalized cells × genes matrix (the R ``alra``, output ``A_norm_rank_k_cor_sc``).

    1. rank-``k`` randomized SVD (``k = 0``: :func:`choose_k`);
    2. per gene, entries at or below ``|0.001 quantile|`` of the gene's low-rank values are set to 0;
    3. the remaining values of each gene are rescaled to the mean and sd of the gene's observed non-zeros;
    4. negatives are set to 0, and observed non-zeros that were zeroed by the threshold get their
       original value back (the other observed non-zeros keep the rescaled low-rank value, as in the R code).

    Returns the completed matrix (float64) and the rank used.
    """
    A = np.asarray(A_norm, dtype=np.float64)
    if k == 0:
        k, _ = choose_k(A, seed=seed)
    nonzero = A > 0
    U, d, Vt = _rsvd(A, k, q, seed)
    low = (U * d) @ Vt
    mins = np.abs(np.quantile(low, quantile_prob, axis=0))
    cor = np.where(low <= mins[None, :], 0.0, low)

    def mean_sd_nonzero(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nz = X != 0
        n = nz.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = X.sum(axis=0) / n
            ss = (np.where(nz, X - mu[None, :], 0.0) ** 2).sum(axis=0)
            sd = np.sqrt(ss / (n - 1))
        sd[n < 2] = np.nan  # R's sd of fewer than two values is NA
        return mu, sd

    mu_1, sigma_1 = mean_sd_nonzero(cor)
    mu_2, sigma_2 = mean_sd_nonzero(A)
    toscale = ~np.isnan(sigma_1) & ~np.isnan(sigma_2) & ~((sigma_1 == 0) & (sigma_2 == 0)) & (sigma_1 != 0)
    out = cor.copy()
    ratio = np.where(toscale, sigma_2 / np.where(toscale, sigma_1, 1.0), 1.0)
    shift = np.where(toscale, mu_2 - mu_1 * ratio, 0.0)
    out[:, toscale] = cor[:, toscale] * ratio[toscale] + shift[toscale]
    out[cor == 0] = 0.0
    out[out < 0] = 0.0
    restore = nonzero & (out == 0)
    out[restore] = A[restore]
    return out, k


# --------------------------------------------------------------------------------------------------
# the three peers on the job's layer scale
# --------------------------------------------------------------------------------------------------


def to_sqrt_scale(N: np.ndarray, target_sqrt: float) -> np.ndarray:
    """Map a matrix on the counts / ``normalize_total`` scale to the sqrt layer, as ``pp.normalize(method="sqrt")``
    maps counts: ``log1p``, rows scaled to ``target_sqrt`` (the sqrt layer's row-sum target), ``sqrt``.
    """
    L = np.log1p(np.maximum(N, 0).astype(np.float64))
    totals = L.sum(axis=1)
    scale = np.divide(target_sqrt, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.sqrt(L * scale[:, None])


def run_alra(X: np.ndarray, task: str, seed: int) -> tuple[np.ndarray, dict]:
    A = X.astype(np.float64) ** 2 if task == "clustering" else np.log1p(X.astype(np.float64))
    out, k = alra(A, seed=seed)
    Y = np.sqrt(out) if task == "clustering" else np.expm1(out)
    return Y, {"alra_k": k}


def run_magic(X: np.ndarray, task: str, seed: int) -> tuple[np.ndarray, dict]:
    import magic

    op = magic.MAGIC(random_state=seed, n_jobs=1, verbose=0)  # defaults: knn=5, decay=1, t=3, n_pca=100
    Z = X.astype(np.float64) if task == "clustering" else np.sqrt(X.astype(np.float64))
    out = np.asarray(op.fit_transform(Z), dtype=np.float64)
    Y = out if task == "clustering" else np.maximum(out, 0) ** 2
    return Y, {"magic_t": op.t, "magic_knn": op.knn}


def run_scvi(
    counts: sparse.spmatrix,
    task: str,
    seed: int,
    max_epochs: int | None,
    library_size: float,
    target_sqrt: float | None,
) -> tuple[np.ndarray, dict]:
    import anndata
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    ad = anndata.AnnData(X=sparse.csr_matrix(counts, dtype=np.float32))
    scvi.model.SCVI.setup_anndata(ad)
    model = scvi.model.SCVI(ad)  # defaults: n_latent 10, n_hidden 128, 1 layer, ZINB
    model.train(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
    epochs = len(model.history["elbo_train"])
    N = np.asarray(model.get_normalized_expression(library_size=library_size, return_numpy=True), dtype=np.float64)
    Y = to_sqrt_scale(N, target_sqrt) if task == "clustering" else N
    return Y, {"epochs": int(epochs), "max_epochs_default": max_epochs is None}


# --------------------------------------------------------------------------------------------------
# parent side: hand one job's data to a child interpreter
# --------------------------------------------------------------------------------------------------


def python_for(method: str) -> str:
    """The interpreter that runs ``method`` (environment variable, else the default)."""
    var = f"SCVGAE_SC_{method.upper()}_PYTHON"
    default = sys.executable if method == "alra" else str(DEFAULT_PEERS_PYTHON)
    python = os.environ.get(var, default)
    if not Path(python).exists():
        raise SystemExit(
            f"{method}: interpreter {python} not found. Create the peers' environment (benchmarks/README.md, "
            f"'Peers') or point {var} at a Python with the package installed."
        )
    return python


def versions(python: str) -> dict:
    """Versions of the peers' packages in the environment of ``python``."""
    code = (
        "import json, importlib.metadata as m, platform\n"
        "v = {'python': platform.python_version()}\n"
        "for p in ('numpy', 'scipy', 'scikit-learn', 'torch', 'magic-impute', 'scvi-tools', 'lightning'):\n"
        "    try: v[p] = m.version(p)\n"
        "    except Exception: pass\n"
        "print(json.dumps(v))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-300:]}


def impute(
    method: str,
    X,
    counts,
    *,
    task: str,
    seed: int,
    max_epochs: int | None,
    library_size: float,
    target_sqrt: float | None,
) -> tuple[np.ndarray, dict]:
    """Run peer ``method`` in a child interpreter on the job's layer ``X`` and counts; return (imputed, info)."""
    if method not in PEERS:
        raise ValueError(f"unknown peer {method!r}; choose from {PEERS}.")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}.")
    python = python_for(method)
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    with tempfile.TemporaryDirectory(prefix="scvgae_peer_") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "X.npy", X.astype(np.float32))
        sparse.save_npz(tmp / "counts.npz", sparse.csr_matrix(counts, dtype=np.float32))
        spec = {
            "method": method,
            "task": task,
            "seed": seed,
            "max_epochs": max_epochs,
            "library_size": library_size,
            "target_sqrt": target_sqrt,
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        out = subprocess.run(
            [python, __file__, "--child", str(tmp)], capture_output=True, text=True, check=False, env=env
        )
        if out.returncode != 0:
            raise RuntimeError(f"{method} failed:\n{out.stderr[-3000:]}")
        Y = np.load(tmp / "Y.npy")
        info = json.loads((tmp / "info.json").read_text())
    if Y.shape != X.shape or not np.isfinite(Y).all():
        raise RuntimeError(f"{method} returned shape {Y.shape} (expected {X.shape}) or non-finite values.")
    return Y.astype(np.float32), info


def _child(folder: str) -> None:
    tmp = Path(folder)
    spec = json.loads((tmp / "spec.json").read_text())
    X = np.load(tmp / "X.npy")
    counts = sparse.load_npz(tmp / "counts.npz")
    method, task, seed = spec["method"], spec["task"], spec["seed"]
    try:  # one torch thread in every peer (scVI; MAGIC/ALRA do not use torch but may import it)
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    if method == "alra":
        Y, info = run_alra(X, task, seed)
    elif method == "magic":
        Y, info = run_magic(X, task, seed)
    else:
        Y, info = run_scvi(counts, task, seed, spec["max_epochs"], spec["library_size"], spec["target_sqrt"])
    info["seconds"] = time.perf_counter() - t0
    info["cpu_seconds"] = cpu() - c0
    info["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(tmp / "Y.npy", np.asarray(Y, dtype=np.float32))
    (tmp / "info.json").write_text(json.dumps(info))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        raise SystemExit("usage: python benchmarks/peers.py --child FOLDER (called by benchmarks/bench.py)")
