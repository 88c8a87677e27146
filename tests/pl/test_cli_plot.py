from __future__ import annotations

import importlib

import scvgae_sc as sv

cli = importlib.import_module("scvgae_sc.cli")


def test_demo_figure_written(imputed, tmp_path):
    path = cli._plot_comparison(imputed, str(tmp_path / "figs"), random_state=0)
    assert path == tmp_path / "figs" / "demo_embedding_comparison.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "X_umap_scvgae" in imputed.obsm and "X_umap_normalized" in imputed.obsm
    assert sv.__name__ == "scvgae_sc"


def test_demo_plot_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "demo", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["demo", "--no-plot", "--figdir", "out", "--max-epochs", "1"]) == 0
    assert seen["plot"] is False and seen["figdir"] == "out" and seen["max_epochs"] == 1
    assert cli.main(["demo"]) == 0
    assert seen["plot"] is True and seen["figdir"] is None


def test_demo_teaches_without_warnings(capsys):
    """The demo runs end to end, shows a marker, the clustering table and the denoising score, warning-free."""
    import warnings

    from scvgae_sc import cli

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert cli.demo(max_epochs=2, plot=False) == 0
    out = capsys.readouterr().out
    assert "one marker gene" in out and "clustering agreement" in out
    assert "un-imputed" in out and "mcv" in out and "Lower mcv is better" in out
