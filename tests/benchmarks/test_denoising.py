"""The benchmark's denoising task: the model-free rivals (benchmarks/baselines.py), bench.py's denoising jobs and
their resumable result file, and summary.py's denoising table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def mods():
    """bench, summary and baselines as bench.py imports them (by name, from benchmarks/)."""
    sys.path.insert(0, str(BENCH))
    try:
        import baselines
        import bench
        import summary
    finally:
        sys.path.remove(str(BENCH))
    return bench, summary, baselines


@pytest.fixture
def split(_pbmc68k_cached):
    """pbmc68k after pp.filter, split 0.5, the train half normalized (total, log1p)."""
    a = _pbmc68k_cached.copy()
    sv.pp.filter(a)
    sv.pp.split_counts(a, random_state=0)
    sv.pp.normalize(a, method="total", counts_layer="mcv_train", key_added="train_total")
    sv.pp.normalize(a, method="log1p", counts_layer="mcv_train", key_added="train_log1p")
    return a


LAYERS = {"total": "train_total", "log1p": "train_log1p"}


def test_knn_mean_is_the_random_walk_average(mods, split):
    _, _, baselines = mods
    Y = baselines.knn_mean(split, "train_total", steps=2, graph_layer="train_log1p", key="g")
    B = (split.obsp["g_connectivities"] > 0).toarray() + np.eye(split.n_obs)
    P = B / B.sum(1, keepdims=True)
    X = split.layers["train_total"].toarray()
    np.testing.assert_allclose(Y, P @ (P @ X), rtol=1e-4, atol=1e-5)
    assert Y.dtype == np.float32 and Y.shape == X.shape


@pytest.mark.parametrize("name", ["knn_lin_1", "knn_log_2", "pca_log", "knn_post_2"])
def test_rivals_are_scored_on_their_input_scale_and_beat_no_imputation(mods, split, name):
    _, _, baselines = mods
    info = baselines.run_rival(split, name, layers=LAYERS, counts_layer="mcv_train", seed=0)
    assert split.uns[name]["params"]["counts_layer"] == "mcv_train"
    s = sv.tl.score_denoising(split, name)
    none = sv.tl.score_denoising(split, "mcv_train")
    assert s["mcv"] < none["mcv"]
    if name == "pca_log":
        assert info["rank"] in baselines.PCA_RANKS and set(info["inner_curve"]) <= set(baselines.PCA_RANKS)
        # the benchmark's own loss (used for the rank curves) is the scorer's MCV loss
        target = split.uns["scvgae_sc"]["normalize"]["train_log1p"]["target_sum"]
        own = baselines.mcv_loss_log1p(split.layers[name], target, split.layers["mcv_train"], split.layers["mcv_test"])
        assert own == pytest.approx(s["mcv"], rel=1e-5)


def test_nb_dispersion_recovers_the_simulated_one():
    import torch

    from scvgae_sc.tl._output import Evidence, nb_dispersion

    rng = np.random.default_rng(0)
    mean = rng.uniform(0.5, 8.0, size=(4000, 3))
    theta = np.array([0.5, 4.0, 60.0])
    counts = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float64)
    fitted = nb_dispersion(torch.from_numpy(mean.astype(np.float32)), Evidence(counts, np.ones(4000)))
    np.testing.assert_allclose(np.log(fitted), np.log(theta), atol=0.35)  # within one step of the grid's spacing


def test_copying_the_log1p_input_scores_as_no_imputation(mods, split):
    _, _, baselines = mods
    target = split.uns["scvgae_sc"]["normalize"]["train_log1p"]["target_sum"]
    own = baselines.mcv_loss_log1p(
        split.layers["train_log1p"].toarray(), target, split.layers["mcv_train"], split.layers["mcv_test"]
    )
    assert own == pytest.approx(sv.tl.score_denoising(split, "mcv_train")["mcv"], rel=1e-5)


def test_a_rival_that_saw_the_test_half_is_refused(mods, split):
    _, _, baselines = mods
    sv.pp.normalize(split, method="log1p", counts_layer="counts", key_added="full_log1p")  # all the molecules
    split.layers["cheat"] = baselines.knn_mean(split, "full_log1p", steps=1, graph_layer="full_log1p")
    baselines.register(split, "cheat", method="knn_log_1", layer="full_log1p", counts_layer="mcv_train")
    with pytest.raises(ValueError, match="test molecules"):
        sv.tl.score_denoising(split, "cheat")


def test_inner_split_rank_finds_low_rank_structure(mods):
    _, _, baselines = mods
    rng = np.random.default_rng(0)
    # 4 cell types, Poisson counts around their profiles: the inner split should prefer a small rank
    profiles = rng.gamma(0.6, 2.0, (4, 150))
    means = profiles[rng.integers(0, 4, 400)] * rng.uniform(0.7, 1.3, (400, 1))
    counts = sparse.csr_matrix(rng.poisson(means))
    rank, curve = baselines.choose_pca_rank(counts, ranks=(1, 2, 3, 4, 6, 10, 30, 60), seed=0)
    assert 2 <= rank <= 10
    assert curve[rank] < curve[60]


def test_denoising_jobs_run_and_score(mods):
    bench, _, _ = mods
    base = {"dataset": "pbmc68k", "seed": 1, "task": "denoising", "fraction": 0.5, "pipeline": "default"}
    none = bench.run_job({**base, "method": "none"})
    assert {"mcv", "pearson", "op_mse", "op_poisson", "n_cells"} <= set(none)
    pca = bench.run_job({**base, "method": "pca_log"})
    assert pca["mcv"] < none["mcv"] and pca["seconds"] > 0 and pca["peak_mb"] > 0
    assert pca["mcv_test_best"] <= pca["test_curve"][str(pca["rank"])] + 1e-12
    assert pca["test_curve"][str(pca["rank"])] == pytest.approx(pca["mcv"], rel=1e-5)
    # OpenProblems split: a different train share, the same protocol
    op = bench.run_job({**base, "method": "none", "fraction": 0.9})
    assert op["fraction"] == 0.9 and op["mcv"] != none["mcv"]


@pytest.mark.parametrize(
    ("method", "pipeline", "layer"),
    [("scvgae", "default", "sqrt"), ("gnnimpute", "default", "total"), ("scvgae", "total", "total")],
)
def test_our_methods_run_on_their_pipeline(mods, method, pipeline, layer):
    bench, _, _ = mods
    job = {
        "dataset": "pbmc68k",
        "seed": 0,
        "task": "denoising",
        "method": method,
        "pipeline": pipeline,
        "max_epochs": 2,
        "options": {"max_epochs": 2},
    }
    r = bench.run_job(job)
    assert r["input"] == layer and r["epochs"] <= 2 and np.isfinite(r["mcv"])


def test_clustering_job_scores_the_latent(mods):
    bench, _, _ = mods
    job = {"dataset": "pbmc68k", "seed": 0, "task": "clustering", "method": "scvgae", "max_epochs": 2}
    r = bench.run_job({**job, "options": {"max_epochs": 2}})
    assert 0 < r["latent_leiden_ari"] <= 1 and {"leiden_ari", "paper_ari", "latent_leiden_nmi"} <= set(r)
    assert "latent_leiden_ari" not in bench.run_job({**job, "method": "none"})


def test_clustering_runs_each_method_on_its_default_pipeline(mods, tmp_path, monkeypatch):
    bench, _, _ = mods
    job = {"dataset": "pbmc68k", "seed": 0, "task": "clustering", "method": "gnnimpute", "max_epochs": 2}
    r = bench.run_job({**job, "options": {"max_epochs": 2}})  # GNNImpute: the total layer, clustered on log1p
    assert r["input"] == "total" and 0 < r["leiden_ari"] <= 1 and 0 < r["latent_leiden_ari"] <= 1
    none_total, none = (bench.run_job({**job, "method": "none", "pipeline": p}) for p in ("total", None))
    assert (none_total["input"], none["input"]) == ("total", "sqrt")
    assert none_total["paper_ari"] != none["paper_ari"]
    ran = []
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "spawn", lambda j: ran.append((j["method"], j.get("pipeline"))) or {**j, "error": "x"})
    args = ["--tasks", "clustering", "--datasets", "pbmc68k", "--seeds", "0", "--name", "c"]
    bench.main([*args, "--methods", "none", "scvgae", "gnnimpute", "--pipelines", "default", "total"])
    assert ran == [("none", None), ("none", "total"), ("scvgae", None), ("scvgae", "total"), ("gnnimpute", None)]
    with pytest.raises(SystemExit, match="sqrt or total"):
        bench.run_job({**job, "pipeline": "log1p"})


def test_peer_scale_for_the_denoising_task(mods, split):
    bench, _, _ = mods
    import peers

    X = split.layers["train_total"]
    common = {"seed": 0, "max_epochs": None, "target_sqrt": None}
    Y, info = peers.impute("alra", X, split.layers["mcv_train"], task="denoising", library_size=1000.0, **common)
    assert Y.shape == X.shape and info["cpu_seconds"] >= 0
    # linear in, linear out: ALRA keeps the observed non-zeros' level (log1p -> ALRA -> expm1)
    Xd = X.toarray()
    nz = Xd > 0
    assert np.median(Y[nz] / Xd[nz]) == pytest.approx(1.0, rel=0.5)
    with pytest.raises(ValueError, match="unknown task"):
        peers.impute("alra", X, split.layers["mcv_train"], task="other", library_size=1.0, **common)


def test_result_file_is_appended_and_resumed(mods, tmp_path, monkeypatch):
    bench, _, _ = mods
    ran = []

    def fake_spawn(job):
        ran.append(job["method"])
        return {
            **job,
            "n_obs": 10,
            "n_vars": 5,
            "mcv": {"none": 0.2, "knn_log_1": 0.1}[job["method"]],
            "op_mse": 1.0,
            "op_poisson": 1.0,
            "pearson": 0.5,
            "n_cells": 10,
        }

    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "spawn", fake_spawn)
    args = ["--tasks", "denoising", "--datasets", "pbmc68k", "--seeds", "0", "--name", "d"]
    bench.main([*args, "--methods", "none"])
    bench.main([*args, "--methods", "none", "knn_log_1"])  # only the missing job runs
    assert ran == ["none", "knn_log_1"]
    data = json.loads((tmp_path / "d.json").read_text())
    assert [r["method"] for r in data["records"]] == ["none", "knn_log_1"]
    bench.main([*args[:-4], "--seeds", "1", "--name", "d", "--methods", "none"])  # another seed: appended
    assert len(json.loads((tmp_path / "d.json").read_text())["records"]) == 3
    bench.main([*args, "--methods", "none", "--fresh"])
    assert len(json.loads((tmp_path / "d.json").read_text())["records"]) == 1
    assert (tmp_path / "d.md").read_text().startswith("**Denoising")  # the wins line first


def test_options_reach_the_job(mods):
    bench, _, _ = mods
    assert bench.parse_options(["output=denoised", "max_epochs=50", "lr=2e-3"]) == {
        "output": "denoised",
        "max_epochs": 50,
        "lr": 2e-3,
    }
    with pytest.raises(SystemExit):
        bench.parse_options(["output"])
    a = {"dataset": "x", "seed": 0, "task": "denoising", "method": "scvgae", "options": {"output": "denoised"}}
    assert bench.job_id(a) != bench.job_id({**a, "options": {}})
    assert bench.job_id(a) != bench.job_id({**a, "fraction": 0.9})


def _rec(ds, method, seed, mcv, **kw):
    return {
        "dataset": ds,
        "seed": seed,
        "task": "denoising",
        "method": method,
        "fraction": 0.5,
        "pipeline": "default",
        "n_obs": 10,
        "n_vars": 5,
        "mcv": mcv,
        "op_mse": 1.0,
        "op_poisson": 1.0,
        "pearson": 0.5,
        "seconds": 1.0,
        **kw,
    }


def test_summary_first_line_counts_wins_over_magic_and_the_best_rival(mods):
    _, summary, _ = mods
    records = []
    for seed in (0, 1, 2):
        records += [
            _rec("pbmc3k", "magic", seed, 0.055),
            _rec("pbmc3k", "knn_log_2", seed, 0.052),
            _rec("pbmc3k", "pca_log", seed, 0.053, rank=8, rank_test_best=10, mcv_test_best=0.0521),
            _rec("pbmc3k", "scvgae", seed, 0.050),
            _rec("bladder", "magic", seed, 0.10),
            _rec("bladder", "knn_log_2", seed, 0.09),
            _rec("bladder", "scvgae", seed, 0.095),
            _rec("pbmc3k", "none", seed, 0.09, fraction=0.9),
        ]
    md = summary.denoising_section(records)
    first = md.splitlines()[0]
    assert "split 0.5" in first and "split 0.9" in first
    assert "scvgae MAGIC 2/2, best simple rival 1/2" in first
    assert "knn_log_2 MAGIC 2/2, best simple rival 1/1" in first  # vs the best of the others; none on bladder
    assert "magic MAGIC –, best simple rival 0/2" in first
    assert "| scvgae | **0.0500 ± 0.0000** | 0.0950 ± 0.0000 |" in md
    assert "pbmc3k: best simple rival knn_log_2" in md and "seed 0: 8 / 10" in md
    win = summary.denoising_wins(summary.denoising_table(records)[0.5])
    assert win["scvgae"]["beats_best_rival_on"] == ["pbmc3k"]


def test_summary_merges_denoising_files_keeping_splits_apart(mods, tmp_path, monkeypatch):
    _, summary, _ = mods
    monkeypatch.setattr(summary, "RESULTS", tmp_path)
    a = {"machine": {}, "command": "a", "records": [_rec("pbmc3k", "none", 0, 0.09)]}
    b = {
        "machine": {},
        "command": "b",
        "records": [_rec("pbmc3k", "none", 0, 0.2, fraction=0.9), _rec("pbmc3k", "none", 0, 0.5)],
    }  # duplicate: a wins
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    records, _ = summary.load_records([tmp_path / "a.json", tmp_path / "b.json"])
    assert sorted((r["fraction"], r["mcv"]) for r in records) == [(0.5, 0.09), (0.9, 0.2)]
    summary.main(["--denoising", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--name", "ds"])
    assert (tmp_path / "ds.md").read_text().startswith("**Denoising")
