from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

import scvgae_sc as sv


def _labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_scvgae_history_components(imputed):
    fig = sv.pl.training_history(imputed, "scvgae", return_fig=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    hist = imputed.uns["scvgae"]["history"]
    components = [k for k, v in hist.items() if k != "epoch" and np.asarray(v).ndim == 1]
    assert components and "loss" in components
    assert sorted(_labels(ax)) == sorted(components)
    assert _labels(ax)[0] == "loss"
    assert ax.get_title() == "scvgae" and ax.get_xlabel() == "epoch"
    # each line holds the recorded values; no best-epoch line without a validation curve
    lines = {line.get_label(): line for line in ax.get_lines()}
    for k in components:
        np.testing.assert_allclose(lines[k].get_ydata(), hist[k])
        np.testing.assert_array_equal(lines[k].get_xdata(), hist["epoch"])
    assert not any(lbl.startswith("best epoch") for lbl in _labels(ax))
    values = np.concatenate([hist[k] for k in components])
    expected_log = values.min() > 0 and values.max() / values.min() >= 10
    assert ax.get_yscale() == ("log" if expected_log else "linear")


def test_gnnimpute_validation_curves_and_best_epoch(imputed):
    ax = sv.pl.training_history(imputed, "gnnimpute", show=False, log=True)
    labels = _labels(ax)
    hist = imputed.uns["gnnimpute"]["history"]
    assert "loss (validation)" in labels and "mse (validation)" in labels
    best = int(hist["best_epoch"])
    vlines = [line for line in ax.get_lines() if line.get_label().startswith("best epoch")]
    assert len(vlines) == 1 and vlines[0].get_label().startswith(f"best epoch {best} (weights kept)")
    assert np.all(np.asarray(vlines[0].get_xdata()) == best)
    val = next(line for line in ax.get_lines() if line.get_label() == "loss (validation)")
    assert val.get_linestyle() == "--"
    assert ax.get_yscale() == "log" and ax.get_title() == "gnnimpute"


def test_early_stop_label_and_components(imputed):
    n = 30
    val = np.r_[np.linspace(5, 1, 20), np.linspace(1.1, 2, 10)]
    imputed.uns["gi"] = {
        "params": {"method": "gnnimpute"},
        "history": {
            "epoch": np.arange(n),
            "loss": np.linspace(5, 0.5, n),
            "mse": np.linspace(4, 0.4, n),
            "val_loss": val,
            "val_mse": val * 0.8,
            "best_epoch": np.asarray(19),
            "stopped_epoch": np.asarray(29),
            "stopped_early": np.asarray(True),
        },
    }
    ax = sv.pl.training_history(imputed, "gi", components="loss", log=False, show=False)
    assert _labels(ax) == ["loss", "loss (validation)", "best epoch 19 (weights kept); stopped early at 29"]
    assert ax.get_title() == "gi (gnnimpute)" and ax.get_yscale() == "linear"


def test_draws_into_given_ax(imputed):
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2)
    out = sv.pl.training_history(imputed, "scvgae", ax=a2, show=False)
    assert out is a2 and a2.get_lines() and not a1.get_lines()
    assert sv.pl.training_history(imputed, "gnnimpute", ax=a1, return_fig=True) is fig


@pytest.mark.parametrize(
    ("key", "kwargs", "err", "match"),
    [
        ("nope", {}, ValueError, r"no training history \(keys with one: 'scvgae', 'gnnimpute'\)"),
        ("scvgae", {"components": ["loss", "kl"]}, ValueError, r"\['kl'\] not in the history"),
        ("scvgae", {"log": "yes"}, TypeError, "log must be"),
        ("scvgae", {"ax": 1}, TypeError, "ax must be"),
    ],
)
def test_bad_input(imputed, snapshot, key, kwargs, err, match):
    snap = snapshot(imputed)
    with pytest.raises(err, match=match):
        sv.pl.training_history(imputed, key, show=False, **kwargs)
    snap.assert_unchanged(imputed)


def test_empty_history(imputed):
    imputed.uns["empty"] = {"history": {"epoch": np.zeros(0, dtype=int)}}
    with pytest.raises(ValueError, match="records no epochs"):
        sv.pl.training_history(imputed, "empty", show=False)


def test_history_read_back_from_h5ad(imputed, tmp_path):
    import anndata as ad

    imputed.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    ax = sv.pl.training_history(back, "gnnimpute", show=False)
    best = int(imputed.uns["gnnimpute"]["history"]["best_epoch"])
    assert any(t.get_text().startswith(f"best epoch {best}") for t in ax.get_legend().get_texts())
