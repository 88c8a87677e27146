from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

import scvgae_sc as sv

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "scvgae.json"


def _containers(ax) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _bars(ax) -> list:
    return [p for c in _containers(ax) for p in c.patches]


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    recs = []
    for ds in ("d1", "d2"):
        for method in ("none", "scvgae", "gnnimpute"):
            for seed in range(3):
                recs.append(
                    {"dataset": ds, "method": method, "seed": seed, "task": "clustering", "paper_ari": rng.random()}
                )
                recs.append({"dataset": ds, "method": method, "seed": seed, "task": "masked", "pearson": rng.random()})
    return recs


def test_from_benchmark_json():
    records = json.loads(BENCH.read_text())["records"]
    clus = [r for r in records if r["task"] == "clustering" and "error" not in r]
    ax = sv.pl.scores(BENCH, "ARI", show=False)
    datasets = list(dict.fromkeys(r["dataset"] for r in clus))
    methods = list(dict.fromkeys(r["method"] for r in clus))
    pairs = {(r["dataset"], r["method"]) for r in clus}  # a method may lack a dataset: no bar there
    assert len(_bars(ax)) == len(pairs)
    assert [t.get_text() for t in ax.get_xticklabels()] == datasets
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["un-imputed" if m == "none" else m for m in methods]
    assert ax.get_ylabel() == "ARI (paper protocol)"
    # bar heights are the means of the records' values over seeds, bars grouped by method
    for container, m in zip(_containers(ax), methods, strict=True):
        want = [
            np.mean([r["paper_ari"] for r in clus if r["dataset"] == d and r["method"] == m])
            for d in datasets
            if (d, m) in pairs
        ]
        np.testing.assert_allclose([p.get_height() for p in container.patches], want)
    # str path and the leiden column
    ax = sv.pl.scores(str(BENCH), "leiden_ari", show=False)
    assert ax.get_ylabel() == "ARI (Leiden protocol)"
    # un-imputed has no Pearson (constant); scvgae keeps its colour from the ARI chart
    colour = _containers(ax)[methods.index("scvgae")].patches[0].get_facecolor()
    ax = sv.pl.scores(BENCH, "pearson", show=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scvgae"]
    assert _containers(ax)[0].patches[0].get_facecolor() == colour


def test_mean_and_sd_over_seeds():
    recs = _records()
    df = pd.DataFrame(recs)
    ax = sv.pl.scores(df, "ARI", show=False)
    assert len(_containers(ax)) == 3 and len(_bars(ax)) == 6
    for container, m in zip(_containers(ax), ["none", "scvgae", "gnnimpute"], strict=True):
        sub = df[(df.method == m) & (df.task == "clustering")]
        means = sub.groupby("dataset", sort=False)["paper_ari"].mean().to_numpy()
        sds = sub.groupby("dataset", sort=False)["paper_ari"].std().to_numpy()
        np.testing.assert_allclose([p.get_height() for p in container.patches], means)
        segments = container.errorbar.lines[2][0].get_segments()
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], 2 * sds)
    assert "mean ± sd" in ax.get_title()


def test_records_selection_and_order():
    recs = _records() + [{"dataset": "d1", "method": "magic", "seed": 0, "task": "masked", "error": "boom"}]
    ax = sv.pl.scores(recs, "Pearson", groups=["scvgae", "none"], datasets=["d2"], show=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scvgae", "un-imputed"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["d2"]
    assert len(_bars(ax)) == 2
    assert ax.get_ylabel().startswith("Pearson")


def test_missing_combination_left_out_and_ax_given():
    import matplotlib.pyplot as plt

    recs = [
        {"dataset": "a", "method": "x", "ARI": 0.5},
        {"dataset": "b", "method": "x", "ARI": 0.6},
        {"dataset": "b", "method": "y", "ARI": 0.7},
        {"dataset": "a", "method": "y", "ARI": float("nan")},
    ]
    fig, ax = plt.subplots()
    assert sv.pl.scores(recs, ax=ax, return_fig=True) is fig
    assert sorted(p.get_height() for p in _bars(ax)) == [0.5, 0.6, 0.7]
    assert ax.get_title() == ""  # one run per bar: no sd


def test_group_by_variant():
    recs = [
        {"dataset": "pbmc3k", "method": "scvgae", "variant": v, "paper_ari": a}
        for v, a in (("default", 0.6), ("bf16", 0.5))
    ]
    ax = sv.pl.scores(recs, group="variant", show=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["default", "bf16"]


@pytest.mark.parametrize(
    ("data", "kwargs", "err", "match"),
    [
        ("/nonexistent/bench.json", {}, ValueError, "is not a file"),
        (42, {}, TypeError, "data must be"),
        ({"machine": {}}, {}, ValueError, "must hold 'records'"),
        ([1, 2], {}, TypeError, "records"),
        ([{"dataset": "a", "method": "x", "mse": 1.0}], {"metric": "f1"}, ValueError, r"no metric 'f1' .*mse"),
        ([{"dataset": "a", "mse": 1.0}], {"metric": "mse"}, ValueError, "no column 'method'"),
        ([{"dataset": "a", "method": "x", "mse": 1.0}], {"metric": "mse", "groups": ["y"]}, ValueError, r"\['y'\]"),
        ([{"dataset": "a", "method": "x", "mse": float("nan")}], {"metric": "mse"}, ValueError, "no finite values"),
    ],
)
def test_bad_input(data, kwargs, err, match):
    with pytest.raises(err, match=match):
        sv.pl.scores(data, show=False, **kwargs)


def test_bad_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sv.pl.scores(p, show=False)
