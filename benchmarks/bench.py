"""Benchmark of imputation methods: clustering (paper and Leiden protocols) and masked-dropout recovery.

One command runs everything and writes ``benchmarks/results/<name>.json`` and ``.md``::

    python benchmarks/bench.py                         # scvgae + un-imputed on the shared data, 3 seeds
    python benchmarks/bench.py --methods none scvgae gnnimpute --datasets pbmc3k pbmc68k
    python benchmarks/bench.py --ablation              # scVGAE ablation table on pbmc3k
    python benchmarks/bench.py --quick                 # one dataset, one seed, few epochs
    python benchmarks/bench.py --methods none alra magic scvi --datasets pbmc68k pbmc3k --name peers
    python benchmarks/bench.py --tasks denoising --methods none knn_log_2 pca_log magic --name denoise_peers
    python benchmarks/bench.py --tasks denoising --methods scvgae --options output=denoised --name denoise_try

Peers (``alra``, ``magic``, ``scvi``; ``benchmarks/peers.py``) run in a child interpreter of their own environment
(MAGIC needs numpy < 2; see ``benchmarks/README.md``) on exactly the job's input layer and counts layer, and
return the imputation on that layer's scale; scoring happens here, with the same code for every method.

Every (dataset, seed, method, task) job runs in a fresh Python process, so its wall time and peak
memory (``ru_maxrss`` measured right after imputation: data, graph, model and result) are its own.
Jobs run one at a time: on a 2-core machine, parallel jobs distort each other's timings.

Protocols:

clustering
    ``pp.filter`` → ``pp.normalize(method="sqrt")`` → impute the ``normalized`` layer →
    ``tl.score_clustering`` with ``protocol="paper"`` and ``"leiden"``. GNNImpute (and any method with
    ``--pipelines total``) runs on its own default pipeline instead: ``pp.normalize(method="total")`` → impute the
    ``total`` layer → ``log1p`` of the result is clustered (``none`` with ``--pipelines total``: ``log1p`` of the
    ``total`` layer).
masked
    ``pp.filter`` → ``pp.normalize(method="total", key_added="total")`` → ``pp.mask_dropouts(layer="total")``
    → impute ``layer="masked", counts_layer="masked_counts"`` → ``tl.score_imputation(truth_layer="total")``.
denoising
    ``pp.filter`` → ``pp.split_counts(fraction=--fraction, random_state=seed)`` → each method on the train half
    ``mcv_train`` only, on its default pipeline: scVGAE on ``pp.normalize(method="sqrt")`` of it, GNNImpute on
    ``method="total"`` (``--pipelines default total`` adds scVGAE on the linear ``total`` layer), MAGIC / ALRA / scVI
    on the ``total`` layer as the masked task gives it to them (``peers.py``), the model-free rivals
    (``baselines.py``) on the ``total`` and ``log1p`` layers → ``tl.score_denoising`` (MCV loss, Pearson,
    OpenProblems mse / poisson). ``--fraction 0.5`` is molecular cross-validation, ``0.9`` the OpenProblems split.

Result files are appended to: a rerun with the same ``--name`` keeps the file's successful records and runs only
the jobs it lacks (the default for ``--tasks denoising``, ``--resume`` for the others; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("SCVGAE_SC_DATA", HERE.parent.parent / "shared" / "data"))
DATASETS = ("pbmc3k", "baron_mouse", "bladder")
#: Jobs run at a time (``--parallel``), recorded with the machine.
_PARALLEL = 1
#: Methods run by ``benchmarks/peers.py`` in their own interpreter.
PEERS = ("alra", "magic", "scvi")
#: Model-free baselines of the masked task (``baselines.knn_fill``): zeros filled with the 15-NN mean of the gene's
#: non-zeros, ungated (as GNNImpute's ``fill_gate=0``) and gated as scVGAE's default (``fill_gate=0.4``). Seconds.
#: The 2-step variants average over the cells a 2-step walk on that graph reaches (scVGAE's ``fill_hops=2``).
#: Name -> (gate, steps).
BASELINES = {
    "knn_fill": (0.0, 1),
    "knn_fill_gated": (0.4, 1),
    "knn_fill_2step": (0.0, 2),
    "knn_fill_2step_gated": (0.4, 2),
}
sys.path.insert(0, str(HERE))
#: Our methods and the normalization of their default input layer in the denoising task.
OURS_DEFAULT_LAYER = {"scvgae": "sqrt", "gnnimpute": "total"}

#: scVGAE ablations (paper's Table 3 and our fixes): name -> options passed to tl.impute.
ABLATIONS = {
    "default": {},
    "no ZINB (alpha=1)": {"alpha": 1.0},
    "no reconstruction (alpha=0)": {"alpha": 0.0},
    "no add-back": {"add_back": False},
    "kernel graph": {"graph": "kernel"},
    "variational": {"variational": True},
    "ZINB on normalized values": {"zinb_target": "normalized"},
    "decoder from ZINB mean (paper shape)": {"decoder_input": "mean"},
    "no self-supervised masking": {"mask_rate": 0.0},
    "every zero filled (fill_gate=0)": {"fill_gate": 0.0},
    "output = reconstruction (calibrated)": {"output": "recon"},
    "no calibration to the input scale": {"calibrate": False, "output": "recon"},
    "add-back scale starts at 0.1": {"add_back_init": 0.1},
    "bf16": {"precision": "bf16"},
    "subgraph mini-batches": {"batching": "subgraph"},
    "subgraph mini-batches, bf16": {"batching": "subgraph", "precision": "bf16"},
    "40 epochs, lr 2.5e-3": {"max_epochs": 40, "lr": 2.5e-3},
    "40 epochs, lr 2.5e-3, bf16": {"max_epochs": 40, "lr": 2.5e-3, "precision": "bf16"},
    "60 epochs, lr 2e-3, bf16": {"max_epochs": 60, "lr": 2e-3, "precision": "bf16"},
    "50 epochs, lr 2e-3, bf16": {"max_epochs": 50, "lr": 2e-3, "precision": "bf16"},
}

#: scVGAE variants of the denoised output (``--ablation --tasks denoising``); the network's part replaced by the
#: graph average under the same posterior is the rival ``knn_post_2`` (``--methods knn_post_2``).
DENOISING_ABLATIONS = {
    "default": {},
    "reconstruction objective (the count model fits the counts it reads)": {"objective": "reconstruct"},
    "heads gcn (one more graph step)": {"heads": "gcn"},
    "count model's mean alone (posterior=False)": {"posterior": False},
    "n_neighbors 30": {"n_neighbors": 30},
    "published objective (alpha 0.05, mask_rate 0.1, lr 1e-3)": {"alpha": 0.05, "mask_rate": 0.1, "lr": 1e-3},
}

#: GNNImpute variants of the denoised output (``--ablation --ablation-method gnnimpute --tasks denoising``); the
#: network replaced by the graph average under the same posterior is the rival ``knn_post_2``.
GNN_DENOISING_ABLATIONS = {
    "default": {},
    "decoder's mean alone (posterior=False)": {"posterior": False},
    "120 epochs": {"max_epochs": 120},
    "n_neighbors 15": {"n_neighbors": 15},
}

#: GNNImpute variants (``--ablation --method gnnimpute``).
GNN_ABLATIONS = {
    "default": {},
    "bf16": {"precision": "bf16"},
    "patience 100": {"patience": 100},
    "bf16, patience 100": {"precision": "bf16", "patience": 100},
    "bf16, patience 100, lr 2e-3": {"precision": "bf16", "patience": 100, "lr": 2e-3},
    "fill gated (fill_gate=0.4, scVGAE's default)": {"fill_gate": 0.4},
    "no self-supervised masking (published)": {"mask_rate": 0.0},
    "no graph term in the fill": {"graph_fill": False, "fill_hops": 2},
    "patience 50": {"patience": 50},
    "patience 25": {"patience": 25},
}


def load(name: str):
    """A dataset by name: the shared files, or ``pbmc68k`` / ``sim<N>`` from ``scvgae_sc.datasets``."""
    import anndata as ad

    import scvgae_sc as sv

    if name == "pbmc68k":
        return sv.datasets.pbmc68k()
    if name.startswith("sim"):
        return sv.datasets.simulate(int(name[3:]), 2000, n_groups=5, de_scale=0.4)
    path = SHARED / f"{name}.h5ad"
    if not path.exists():
        raise SystemExit(f"{path} not found; set SCVGAE_SC_DATA to the folder holding the shared .h5ad files.")
    return ad.read_h5ad(path)


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _median_library(counts) -> float:
    """Median positive library size (the target of ``pp.normalize(method="total")``)."""
    import numpy as np

    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    return float(np.median(totals[totals > 0]))


def run_job(job: dict) -> dict:
    """Run one job in this process and return its record."""
    import scanpy as sc
    import torch

    import scvgae_sc as sv

    torch.set_num_threads(int(job.get("threads", 1)))
    sc.settings.verbosity = 0
    adata = load(job["dataset"])
    sv.pp.filter(adata)
    method, seed, task = job["method"], job["seed"], job["task"]
    options = dict(job.get("options", {}))
    if job.get("max_epochs") is not None:
        options["max_epochs"] = job["max_epochs"]
    record = {**job, "n_obs": adata.n_obs, "n_vars": adata.n_vars}
    if task == "denoising":
        return _denoising_job(adata, job, record, options)
    if task == "clustering":
        pipeline = _clustering_pipeline(method, job.get("pipeline"))
        if pipeline == "total":
            sv.pp.normalize(adata, method="total", key_added="total")
            layer, impute_kw = "total", {"layer": "total"}
        else:
            sv.pp.normalize(adata)
            layer, impute_kw = "normalized", {"layer": "normalized"}
        record["input"] = pipeline
    else:
        sv.pp.normalize(adata, method="total", key_added="total")
        sv.pp.mask_dropouts(adata, layer="total", random_state=seed)
        layer = "masked"
        impute_kw = {"layer": "masked", "counts_layer": "masked_counts"}
    base_mb = peak_mb()
    if method in PEERS:
        import peers

        norm = adata.uns["scvgae_sc"]["normalize"]
        Y, info = peers.impute(
            method,
            adata.layers[impute_kw["layer"]],
            adata.layers[impute_kw.get("counts_layer", "counts")],
            task=task,
            seed=seed,
            max_epochs=job.get("max_epochs"),
            library_size=norm["total"]["target_sum"] if task == "masked" else _median_library(adata.layers["counts"]),
            target_sqrt=norm["normalized"]["target_sum"] if task == "clustering" else None,
        )
        adata.layers[method] = Y
        record.update(info)
        record["data_mb"] = base_mb
        layer = method
    elif method in BASELINES:
        from baselines import knn_fill, log1p_layer

        # the graph on log1p of the masked task's linear layer, as the models build theirs
        graph_layer = log1p_layer(adata, "masked") if task == "masked" else impute_kw["layer"]
        t0, c0 = time.perf_counter(), cpu_seconds()
        gate, hops = BASELINES[method]
        adata.layers[method] = knn_fill(
            adata, impute_kw["layer"], n_neighbors=15, gate=gate, hops=hops, graph_layer=graph_layer
        )
        record["seconds"] = time.perf_counter() - t0
        record["cpu_seconds"] = cpu_seconds() - c0
        record["peak_mb"] = peak_mb()
        record["data_mb"] = base_mb
        layer = method
    elif method != "none":
        t0, c0 = time.perf_counter(), cpu_seconds()
        sv.tl.impute(adata, method=method, random_state=seed, progress_bar=False, **impute_kw, **options)
        record["seconds"] = time.perf_counter() - t0
        # CPU time of this process (all its threads): equals the wall time of a 1-thread run on an idle machine,
        # and unlike wall time it does not grow when other processes share the cores.
        record["cpu_seconds"] = cpu_seconds() - c0
        record["peak_mb"] = peak_mb()
        record["data_mb"] = base_mb
        hist = adata.uns[method]["history"]
        record["epochs"] = int(len(hist["loss"]))
        if "best_epoch" in hist:
            record["best_epoch"] = int(hist["best_epoch"])
        if "val_loss" in hist:  # the early-stopping curve, for analyses of the stopping rule
            record["val_loss"] = [round(float(v), 6) for v in hist["val_loss"]]
        layer = method
    if task == "clustering":
        latent_key = f"X_{layer}"
        if record["input"] == "total":  # a linear layer is clustered on its log1p, as a Scanpy user would
            import numpy as np

            values = adata.layers[layer]
            adata.layers[f"{layer}_log1p"] = values.log1p() if hasattr(values, "log1p") else np.log1p(values)
            layer = f"{layer}_log1p"
        for protocol in ("paper", "leiden"):
            s = sv.tl.score_clustering(adata, layer, protocol=protocol, random_state=seed)
            record.update({f"{protocol}_{k}": v for k, v in s.items() if k in ("ari", "ami", "nmi")})
        if latent_key in adata.obsm:  # the network's latent, clustered as scVI users cluster theirs
            import anndata
            import numpy as np

            latent = anndata.AnnData(np.asarray(adata.obsm[latent_key]), obs=adata.obs[["cell_type"]].copy())
            s = sv.tl.score_clustering(latent, None, protocol="leiden", random_state=seed)
            record.update({f"latent_leiden_{k}": v for k, v in s.items() if k in ("ari", "ami", "nmi")})
    else:
        s = sv.tl.score_imputation(adata, layer, truth_layer="total")
        record.update({k: v for k, v in s.items() if k in ("mse", "mae", "pearson", "cosine")})
    return record


def _clustering_pipeline(method: str, pipeline: str | None) -> str:
    """The clustering task's input layer: the job's ``pipeline``, else the method's default layer (sqrt for the
    methods without one)."""
    if pipeline in (None, "default"):
        return OURS_DEFAULT_LAYER.get(method, "sqrt")
    if pipeline not in ("sqrt", "total"):
        raise SystemExit(f"the clustering task runs the sqrt or total pipeline, not {pipeline!r}.")
    return pipeline


def _train_layer(adata, method: str, counts_layer: str = "mcv_train") -> str:
    """Normalize the split's train half with ``method`` (``pp.normalize``) into ``train_<method>``, once."""
    import scvgae_sc as sv

    key = f"train_{method}"
    if key not in adata.layers:
        sv.pp.normalize(adata, method=method, counts_layer=counts_layer, key_added=key)
    return key


def _denoising_job(adata, job: dict, record: dict, options: dict) -> dict:
    """The denoising task (molecular cross-validation) for one job."""
    import baselines

    import scvgae_sc as sv

    method, seed = job["method"], job["seed"]
    fraction = float(job.get("fraction", 0.5))
    sv.pp.split_counts(adata, fraction=fraction, random_state=seed)
    counts = "mcv_train"
    layers = {"total": _train_layer(adata, "total"), "log1p": _train_layer(adata, "log1p")}
    pipeline = job.get("pipeline") or "default"
    record["fraction"], record["pipeline"] = fraction, pipeline
    base_mb = peak_mb()
    if method == "none":
        layer = counts
        record["input"] = counts
    elif method in PEERS:
        import peers

        norm = adata.uns["scvgae_sc"]["normalize"]
        Y, info = peers.impute(
            method,
            adata.layers[layers["total"]],
            adata.layers[counts],
            task="denoising",
            seed=seed,
            max_epochs=job.get("max_epochs"),
            library_size=norm[layers["total"]]["target_sum"],
            target_sqrt=None,
        )
        adata.layers[method] = Y
        baselines.register(adata, method, method=method, layer=layers["total"], counts_layer=counts)
        record.update(info)
        record["data_mb"] = base_mb
        record["input"] = "total"
        layer = method
    elif method in baselines.DENOISING_RIVALS:
        t0, c0 = time.perf_counter(), cpu_seconds()
        info = baselines.run_rival(adata, method, layers=layers, counts_layer=counts, seed=seed)
        record["seconds"] = time.perf_counter() - t0
        record["cpu_seconds"] = cpu_seconds() - c0
        record["peak_mb"] = peak_mb()
        record["data_mb"] = base_mb
        record["input"] = info["input"]
        if "steps" in info:
            record["steps"] = info["steps"]
        if "rank" in info:  # pca_log: the inner-split rank, and (reported only) the rank best on the test half
            target = adata.uns["scvgae_sc"]["normalize"][layers["log1p"]]["target_sum"]
            test_curve = {
                k: baselines.mcv_loss_log1p(R, target, adata.layers[counts], adata.layers["mcv_test"])
                for k, R in info["lowrank"].reconstructions(baselines.PCA_RANKS)
            }
            best = min(test_curve, key=test_curve.get)
            record["rank"] = int(info["rank"])
            record["inner_curve"] = {str(k): round(v, 6) for k, v in info["inner_curve"].items()}
            record["test_curve"] = {str(k): round(v, 6) for k, v in test_curve.items()}
            record["rank_test_best"], record["mcv_test_best"] = int(best), float(test_curve[best])
        layer = method
    elif method in OURS_DEFAULT_LAYER:
        norm = OURS_DEFAULT_LAYER[method] if pipeline == "default" else pipeline
        if norm not in ("sqrt", "log1p", "total"):
            raise SystemExit(f"unknown pipeline {pipeline!r}; use default, sqrt, log1p or total.")
        input_layer = _train_layer(adata, norm)
        record["input"] = norm
        base_mb = peak_mb()
        t0, c0 = time.perf_counter(), cpu_seconds()
        sv.tl.impute(
            adata,
            method=method,
            layer=input_layer,
            counts_layer=counts,
            random_state=seed,
            progress_bar=False,
            **options,
        )
        record["seconds"] = time.perf_counter() - t0
        record["cpu_seconds"] = cpu_seconds() - c0
        record["peak_mb"] = peak_mb()
        record["data_mb"] = base_mb
        hist = adata.uns[method]["history"]
        record["epochs"] = int(len(hist["loss"]))
        if "best_epoch" in hist:
            record["best_epoch"] = int(hist["best_epoch"])
        layer = method
    else:
        raise SystemExit(
            f"unknown method {method!r} for the denoising task; choose from none, {', '.join(PEERS)}, "
            f"{', '.join(baselines.DENOISING_RIVALS)}, {', '.join(OURS_DEFAULT_LAYER)}."
        )
    s = sv.tl.score_denoising(adata, layer)
    record.update({k: (int(v) if k == "n_cells" else float(v)) for k, v in s.items()})
    return record


def spawn(job: dict) -> dict:
    """Run ``job`` in a fresh interpreter (own timing and memory)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        return {**job, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(records: list[dict] | None = None) -> dict:
    import anndata
    import scanpy
    import torch
    import torch_geometric

    import scvgae_sc

    peer_envs = {}
    if any(r.get("method") in PEERS for r in records or []):
        import peers

        for method in sorted({r["method"] for r in records if r.get("method") in PEERS}):
            python = os.environ.get(f"SCVGAE_SC_{method.upper()}_PYTHON", None) or (
                sys.executable if method == "alra" else str(peers.DEFAULT_PEERS_PYTHON)
            )
            peer_envs[method] = {"interpreter": python, **peers.versions(python)}
    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return {
        "git": git.stdout.strip() or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": max([int(r.get("threads", 1)) for r in records or []], default=1),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "scanpy": scanpy.__version__,
        "anndata": anndata.__version__,
        "scvgae_sc": scvgae_sc.__version__,
        "cuda": torch.cuda.is_available(),
        "numpy": __import__("numpy").__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "jobs_in_parallel": _PARALLEL,
        "peer_envs": peer_envs,
    }


def _mean_sd(values: list[float], fmt: str = ".3f") -> str:
    import numpy as np

    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"


_COST = {"seconds": ".1f", "cpu_seconds": ".1f", "peak_mb": ".0f", "epochs": ".0f"}
_TABLES = {
    "clustering": (
        "Clustering of the imputed layer (paper and Leiden protocols; `[total]`: log1p of a linear layer), mean ± sd "
        "over seeds:",
        ("paper_ari", "paper_ami", "leiden_ari", "leiden_ami"),
        ("paper ARI", "paper AMI", "Leiden ARI", "Leiden AMI"),
    ),
    "masked": (
        "Masked recovery (10 % of non-zeros hidden; linear normalized scale), mean ± sd over seeds:",
        ("pearson", "mse", "mae", "cosine"),
        ("Pearson", "MSE", "MAE", "cosine"),
    ),
}


def _row_label(r: dict, group: str) -> str:
    """A table row's name: the record's ``group`` value (its method where it has none, e.g. a rival's record in an
    ablation's file), and its input pipeline in brackets when one was named."""
    pipeline, name = r.get("pipeline"), r.get(group, r["method"])
    return f"{name} [{pipeline}]" if pipeline not in (None, "default") else str(name)


def summarize(records: list[dict], group: str = "method") -> str:
    """Markdown tables (mean ± sd over seeds) of clustering and masked recovery per dataset, and the denoising
    tables (``summary.denoising_section``: methods × datasets, its first line the wins on MCV)."""
    lines = []
    denoising = [r for r in records if r.get("task") == "denoising" and "error" not in r]
    if denoising:
        from summary import denoising_section

        lines.append(denoising_section(denoising))
    for ds in dict.fromkeys(r["dataset"] for r in records):
        rs = [r for r in records if r["dataset"] == ds and "error" not in r and r.get("task") != "denoising"]
        if not rs:
            continue
        lines.append(f"\n### {ds} ({rs[0]['n_obs']} × {rs[0]['n_vars']} after `pp.filter`)\n")
        groups = list(dict.fromkeys(_row_label(r, group) for r in rs))
        for task, (title, keys, heads) in _TABLES.items():
            task_rs = [r for r in rs if r["task"] == task]
            if not task_rs:
                continue
            lines += [f"\n{title}\n", f"| {group} | " + " | ".join(heads) + " | wall s | CPU s | peak MB | epochs |"]
            lines.append("|" + " --- |" * (len(keys) + 5))
            for g in groups:
                sub = [r for r in task_rs if _row_label(r, group) == g]
                if sub:
                    cells = [_mean_sd([r.get(k) for r in sub]) for k in keys]
                    cells += [_mean_sd([r.get(k) for r in sub], fmt) for k, fmt in _COST.items()]
                    lines.append(f"| {g} | " + " | ".join(cells) + " |")
    errors = [r for r in records if "error" in r]
    if errors:
        lines.append("\nFailed jobs:\n")
        lines.extend(f"- {r['dataset']} {r.get(group)} seed {r['seed']} {r['task']}: {r['error']}" for r in errors)
    return "\n".join(lines)


def parse_options(items: list[str]) -> dict:
    """``["output=denoised", "max_epochs=50"]`` -> ``{"output": "denoised", "max_epochs": 50}`` (JSON values, else
    text)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--options takes KEY=VALUE pairs, got {item!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def job_id(r: dict) -> tuple:
    """What makes a job: finished records with the same id are not run again when a result file is resumed."""
    return (
        r["dataset"],
        r["seed"],
        r["task"],
        r["method"],
        r.get("variant"),
        r.get("fraction"),
        r.get("pipeline"),
        json.dumps(r.get("options") or {}, sort_keys=True),
        r.get("max_epochs"),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=["none", "scvgae"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--tasks", nargs="+", default=["clustering", "masked"], choices=["clustering", "masked", "denoising"]
    )
    p.add_argument(
        "--fraction",
        nargs="+",
        type=float,
        default=[0.5],
        help="denoising: train share of the molecule split (0.5 molecular cross-validation, 0.9 OpenProblems)",
    )
    p.add_argument(
        "--pipelines",
        nargs="+",
        default=["default"],
        choices=["default", "sqrt", "log1p", "total"],
        help="denoising and clustering: input layer of scvgae / gnnimpute (default: sqrt / total; 'total' = the "
        "linear layer, clustered on its log1p)",
    )
    p.add_argument(
        "--options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options passed to tl.impute for scvgae / gnnimpute (values read as JSON, else as text), "
        "e.g. --options output=denoised max_epochs=50",
    )
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--ablation", action="store_true", help="ablation table (on --datasets, default pbmc3k)")
    p.add_argument("--ablation-method", default="scvgae", choices=["scvgae", "gnnimpute"], help="method of --ablation")
    p.add_argument("--only", nargs="+", default=None, help="ablation rows to run (names as in ABLATIONS)")
    p.add_argument("--quick", action="store_true", help="pbmc3k, one seed, 20 epochs")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per job (default 1; use the core count, alone on an idle machine, for wall-time figures)",
    )
    p.add_argument("--parallel", type=int, default=1, help="jobs at a time (default 1: parallel jobs distort timings)")
    p.add_argument("--name", default=None, help="results file stem (default: scvgae / ablation / quick)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the successful records of results/<name>.json and run only the missing jobs (the default when "
        "every task is denoising)",
    )
    p.add_argument("--fresh", action="store_true", help="overwrite results/<name>.json instead of appending to it")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_job(json.loads(args.worker))))
        return 0

    if args.quick:
        args.datasets, args.seeds, args.max_epochs = ["pbmc3k"], [0], args.max_epochs or 20
    options = parse_options(args.options)

    def variants(task: str, method: str) -> list[dict]:
        """Per-task extras of a job: the split fraction and, for our methods, the input pipeline."""
        if task == "clustering":  # a pipeline other than the method's default layer is named in the job
            own = _clustering_pipeline(method, None)
            names = dict.fromkeys("default" if pl == own else pl for pl in args.pipelines)
            return [{} if pl == "default" else {"pipeline": pl} for pl in names]
        if task != "denoising":
            return [{}]
        pipelines = ["default"]
        if method in OURS_DEFAULT_LAYER:  # a pipeline naming the method's default layer is its default
            own = OURS_DEFAULT_LAYER[method]
            pipelines = list(dict.fromkeys("default" if pl == own else pl for pl in args.pipelines))
        return [{"fraction": f, "pipeline": pl} for f in args.fraction for pl in pipelines]

    jobs = []
    if args.ablation:
        datasets = args.datasets if args.datasets != list(DATASETS) else ["pbmc3k"]
        table = ABLATIONS if args.ablation_method == "scvgae" else GNN_ABLATIONS
        if set(args.tasks) == {"denoising"}:
            table = DENOISING_ABLATIONS if args.ablation_method == "scvgae" else GNN_DENOISING_ABLATIONS
        rows = {k: v for k, v in table.items() if args.only is None or k in args.only}
        for ds in datasets:
            for seed in args.seeds:
                for task in args.tasks:
                    for name, opts in rows.items():
                        for extra in variants(task, args.ablation_method):
                            jobs.append(
                                {
                                    "dataset": ds,
                                    "seed": seed,
                                    "task": task,
                                    "method": args.ablation_method,
                                    "variant": name,
                                    "options": {**opts, **options},
                                    "max_epochs": args.max_epochs,
                                    "threads": args.threads,
                                    **extra,
                                }
                            )
        name, group = args.name or ("ablation" if args.ablation_method == "scvgae" else "ablation_gnnimpute"), "variant"
    else:
        for ds in args.datasets:
            for seed in args.seeds:
                for task in args.tasks:
                    for method in args.methods:
                        for extra in variants(task, method):
                            job = {
                                "dataset": ds,
                                "seed": seed,
                                "task": task,
                                "method": method,
                                "max_epochs": args.max_epochs,
                                "threads": args.threads,
                                **extra,
                            }
                            if options and method in OURS_DEFAULT_LAYER:
                                job["options"] = dict(options)
                            jobs.append(job)
        name, group = args.name or ("quick" if args.quick else "scvgae"), "method"

    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = ("python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    kept: list[dict] = []
    resume = not args.fresh and (args.resume or set(args.tasks) == {"denoising"})
    if resume and (RESULTS / f"{name}.json").exists():
        old = json.loads((RESULTS / f"{name}.json").read_text())
        kept = [r for r in old["records"] if "error" not in r]  # appended to: records of other jobs stay
        jobs = [j for j in jobs if job_id(j) not in {job_id(r) for r in kept}]
        old_cmd = old["command"].replace(" [partial: still running or stopped]", "")
        cmd = old_cmd if cmd in old_cmd else f"{old_cmd} ; {cmd}"
        print(f"resuming {name}: {len(kept)} records kept, {len(jobs)} job(s) to run", flush=True)
    global _PARALLEL
    _PARALLEL = args.parallel
    m = None
    done: dict[int, dict] = {}
    t_start = time.perf_counter()

    def one(i: int, job: dict) -> None:
        t0 = time.perf_counter()
        done[i] = spawn(job)
        rec = done[i]
        print(
            f"[{len(done)}/{len(jobs)}] {job['dataset']} {job.get('variant', job['method'])} seed {job['seed']} "
            f"{job['task']}: {'ERROR ' + rec['error'] if 'error' in rec else 'ok'} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(one, i, job) for i, job in enumerate(jobs)]
        for future in as_completed(futures):
            future.result()
            records = kept + [done[i] for i in sorted(done)]
            m = m or machine(kept + jobs)
            partial = {"machine": m, "command": cmd + " [partial: still running or stopped]", "records": records}
            (RESULTS / f"{name}.json").write_text(json.dumps(partial, indent=1))
    records = kept + [done[i] for i in sorted(done)]
    total = time.perf_counter() - t_start
    md = [f"# Benchmark `{name}`\n", f"Command: `{cmd.strip()}` — total {total / 60:.1f} min.\n"]
    m = m or machine(kept + jobs)
    md.append(
        f"Machine: {m['platform']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"PyG {m['torch_geometric']}, scanpy {m['scanpy']}, scvgae-sc {m['scvgae_sc']}, CUDA: {m['cuda']}; "
        f"OMP_NUM_THREADS={m['OMP_NUM_THREADS']}, {args.parallel} job(s) at a time.\n"
    )
    for method, env in m["peer_envs"].items():
        md.append(f"{method}: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".\n")
    body = summarize(records, group=group)
    if body.startswith("**Denoising"):  # the denoising wins line is the file's first line
        first, _, body = body.partition("\n")
        md.insert(0, first + "\n")
    md.append(body)
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": m, "command": cmd.strip(), "total_s": total, "records": records}, indent=1)
    )
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
