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
