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
    marker = cli._plot_marker(imputed, "MS4A1", path.parent)  # on the UMAP just computed
    assert marker == tmp_path / "figs" / "demo_marker_MS4A1.png"
    assert marker.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_plot_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "demo", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["demo", "--no-plot", "--figdir", "out", "--max-epochs", "1"]) == 0
    assert seen["plot"] is False and seen["figdir"] == "out" and seen["max_epochs"] == 1
    assert cli.main(["demo"]) == 0
    assert seen["plot"] is True and seen["figdir"] is None


def test_demo_teaches_without_warnings(capsys):
    """The demo runs end to end, shows a marker, the clustering table and the denoising score, warning-free."""
    import io
    import warnings

    import scanpy as sc

    from scvgae_sc import cli

    log, old_log, old_verbosity = io.StringIO(), sc.settings.logfile, sc.settings.verbosity
    sc.settings.logfile = log  # the package's warnings (scanpy's logger), e.g. an undefined correlation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            assert cli.demo(max_epochs=2, plot=False) == 0
    finally:
        sc.settings.logfile, sc.settings.verbosity = old_log, old_verbosity
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())  # sentences are wrapped
    assert "one marker gene, MS4A1" in out and "CD19+ B" in out and "clustering agreement" in out
    assert "Imputation is not meant to sharpen clusters" in out
    assert "no imputation" in out and "mcv" in out and "lower is better" in out
    assert "Helps:" in out and "Does not help:" in out
    text = (out + captured.err + log.getvalue()).lower()
    assert "nan" not in text.split() and " nan " not in text and "undefined" not in text and "warning" not in text
