"""``scvgae-sc impute``: round trips through h5ad files, refusals and exit codes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import scvgae_sc as sv
from scvgae_sc.cli import main

EPOCHS = "2"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory, _pbmc68k_cached):
    """pbmc68k as ``raw.h5ad`` (counts in X only) and ``norm.h5ad`` (filtered, normalized: 'counts' and
    'normalized'); the tests other than the round trip use their first 150 cells (``small=True``)."""
    folder = tmp_path_factory.mktemp("cli")
    for small in (False, True):
        adata = _pbmc68k_cached[:150].copy() if small else _pbmc68k_cached.copy()
        sub = folder / ("small" if small else "full")
        sub.mkdir()
        adata.write_h5ad(sub / "raw.h5ad")
        sv.pp.filter(adata)
        sv.pp.normalize(adata)
        adata.write_h5ad(sub / "norm.h5ad")
    return folder


def _copy_inputs(files, tmp_path, which: str):
    for name in ("raw.h5ad", "norm.h5ad"):
        (tmp_path / name).write_bytes((files / which / name).read_bytes())
    return tmp_path


@pytest.fixture
def work(files, tmp_path):
    """A fresh folder holding copies of the input files (150 cells)."""
    return _copy_inputs(files, tmp_path, "small")


@pytest.fixture
def work_full(files, tmp_path):
    """A fresh folder holding copies of the input files (all of pbmc68k)."""
    return _copy_inputs(files, tmp_path, "full")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(*args) -> int:
    return main(["impute", *map(str, args)])


def test_impute_round_trip(work_full, capsys):
    work = work_full
    src, out = work / "norm.h5ad", work / "out.h5ad"
    before = sha256(src)
    assert run(src, "-o", out, "--method", "scvgae", "--max-epochs", EPOCHS, "--device", "cpu") == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    assert lines[0].startswith("imputed 700 x 699 with scvgae in ") and "on cpu -> " in lines[0]
    assert lines[0].endswith(f"{out} (layers['scvgae'])")
    assert "Training" in captured.err  # the progress bar on stderr
    assert sha256(src) == before, "IN is byte-identical"

    res, inp = ad.read_h5ad(out), ad.read_h5ad(src)
    assert {"scvgae", "normalized", "counts"} <= set(res.layers)
    assert res.layers["scvgae"].shape == inp.shape and res.obsm["X_scvgae"].shape[0] == inp.n_obs
    assert "scvgae_connectivities" in res.obsp and len(res.uns["scvgae"]["history"]["loss"]) == int(EPOCHS)
    assert (res.X != inp.X).nnz == 0, "X as it was"
    assert sorted(p.name for p in work.iterdir()) == ["norm.h5ad", "out.h5ad", "raw.h5ad"], "no temporary file left"

    # the same run in Python gives the same matrix (the CLI adds nothing of its own)
    sv.tl.impute(inp, method="scvgae", max_epochs=int(EPOCHS), device="cpu", progress_bar=False)
    np.testing.assert_array_equal(res.layers["scvgae"], inp.layers["scvgae"])


def test_existing_output_force_and_inplace(work, capsys):
    src, out = work / "norm.h5ad", work / "out.h5ad"
    out.write_bytes(b"precious")
    assert run(src, "-o", out, "--method", "scvgae", "--max-epochs", "1", "-q") == 1
    err = capsys.readouterr().err
    assert "exists; pass --force" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious"

    assert run(src, "-o", out, "--method", "scvgae", "--max-epochs", "1", "-q", "--force", "--key-added", "k") == 0
    assert "k" in ad.read_h5ad(out).layers
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask(), "a new file gets the usual permissions"

    before = sha256(src)
    assert run(src, "--inplace", "--method", "scvgae", "--max-epochs", "1", "-q", "--key-added", "here") == 0
    assert sha256(src) != before
    back = ad.read_h5ad(src)
    assert {"here", "normalized", "counts"} <= set(back.layers)
    assert "(layers['here'])" in capsys.readouterr().out


def test_inplace_through_a_symlink_keeps_the_link(work):
    real, link = work / "norm.h5ad", work / "link.h5ad"
    link.symlink_to(real.name)
    real.chmod(0o640)
    assert run(link, "--inplace", "--method", "scvgae", "--max-epochs", "1", "-q", "--compression", "gzip") == 0
    assert link.is_symlink() and "scvgae" in ad.read_h5ad(real).layers
    assert real.stat().st_mode & 0o777 == 0o640, "the file keeps its permissions"
    assert sorted(p.name for p in work.iterdir()) == ["link.h5ad", "norm.h5ad", "raw.h5ad"]


def test_normalize_options_and_saved_model(work, capsys):
    src, out, model_dir = work / "raw.h5ad", work / "out.h5ad", work / "model"
    # a layer named explicitly and missing: a clear message naming the ways out, no traceback
    assert run(src, "-o", out, "--method", "gnnimpute", "-q", "--layer", "mine") == 1
    err = capsys.readouterr().err
    assert "no layer 'mine'" in err and "scvgae_sc.pp.normalize" in err and "--normalize total" in err
    assert "Traceback" not in err and not out.exists()

    args = [src, "-o", out, "--method", "gnnimpute", "--max-epochs", EPOCHS, "-q", "--normalize", "total"]
    args += [
        "--layer",
        "total",
        "--option",
        "patience=5",
        "--option",
        "split=(0.5, 0.3, 0.2)",
        "--option",
        "output=recon",
    ]
    assert run(*args, "--save-model", model_dir, "--random-state", "3") == 0
    res = ad.read_h5ad(out)
    params = res.uns["gnnimpute"]["params"]
    assert params["patience"] == 5 and list(params["split"]) == [0.5, 0.3, 0.2] and params["output"] == "recon"
    assert params["random_state"] == 3
    assert res.uns["scvgae_sc"]["normalize"]["total"]["method"] == "total"
    model = sv.tl.ImputationModel.load(model_dir)
    np.testing.assert_array_equal(model.predict(res, device="cpu"), res.layers["gnnimpute"])

    # --normalize on an existing layer is refused rather than silently recomputed
    assert run(out, "-o", work / "o2.h5ad", "--method", "gnnimpute", "--normalize", "total", "--layer", "total") == 1
    assert "already has a layer 'total'" in capsys.readouterr().err
    # the model folder exists: refused without --force
    assert run(work / "norm.h5ad", "-o", work / "o3.h5ad", "--method", "scvgae", "--save-model", model_dir) == 1
    assert "pass --force" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "scvgae"], "-o/--output OUT.h5ad is required"),
        (["-o", "{src}", "--method", "scvgae"], "OUT is IN"),
        (["-o", "x.h5ad", "--inplace", "--method", "scvgae"], "drop -o"),
        (["-o", "x.h5ad"], "--method"),
        (["-o", "x.h5ad", "--method", "magic"], "invalid choice"),
        (["-o", "x.h5ad", "--method", "scvgae", "--option", "alpha"], "KEY=VALUE"),
        (["-o", "x.h5ad", "--method", "scvgae", "--max-epochs", "0"], "positive integer"),
    ],
)
def test_usage_errors_exit_2(work, capsys, args, message):
    src = work / "norm.h5ad"
    before = sha256(src)
    assert main(["impute", str(src), *(a.format(src=src) for a in args)]) == 2
    assert message in capsys.readouterr().err
    assert sha256(src) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "nope"], "no layer 'nope'"),
        (["--counts-layer", "nope"], "no counts layer 'nope'"),
        (["--option", "alpha=2.0"], "alpha must be"),
        (["--option", "decoder=big"], "Unknown option"),
        (["--device", "tpu"], "device"),
        (["--graph-key", "missing"], "No graph 'missing'"),
        (["--max-memory", "1000"], "max_memory is 0.00 GB"),
    ],
)
def test_bad_input_exit_1(work, capsys, extra, message):
    src, out = work / "norm.h5ad", work / "out.h5ad"
    before = sha256(src)
    assert run(src, "-o", out, "--method", "scvgae", "--max-epochs", "1", "-q", *extra) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("scvgae-sc: error: ") and "Traceback" not in err
    assert sha256(src) == before and not out.exists()
    assert sorted(p.name for p in work.iterdir()) == ["norm.h5ad", "raw.h5ad"]


def test_unreadable_and_missing_input(work, capsys):
    bad = work / "bad.h5ad"
    bad.write_text("not hdf5")
    assert run(bad, "-o", work / "o.h5ad", "--method", "scvgae") == 1
    assert "cannot read" in capsys.readouterr().err
    assert run(work / "missing.h5ad", "-o", work / "o.h5ad", "--method", "scvgae") == 1
    assert "no such file" in capsys.readouterr().err
    assert run(work / "norm.h5ad", "-o", work / "nodir" / "o.h5ad", "--method", "scvgae") == 1
    assert "does not exist" in capsys.readouterr().err


def test_interrupt_writes_nothing(work, capsys, monkeypatch):
    from scvgae_sc.nn import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    src = work / "norm.h5ad"
    before = sha256(src)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        assert run(src, "--inplace", "--method", "scvgae", "--max-epochs", "2", "-q") == 130
    assert "interrupted" in capsys.readouterr().err
    assert sha256(src) == before
    assert sorted(p.name for p in work.iterdir()) == ["norm.h5ad", "raw.h5ad"]


def test_exit_codes_of_the_real_process(work):
    """The console entry point passes main's return value to the shell (exit code 1: see the tests above)."""
    cmd = [sys.executable, "-m", "scvgae_sc.cli", "impute"]
    usage = subprocess.run([*cmd, str(work / "norm.h5ad")], capture_output=True, text=True)
    assert usage.returncode == 2 and "required" in usage.stderr
    assert usage.stdout == ""


def test_raw_counts_just_work(work, capsys):
    """Counts in X and no layer: the method's default normalization is made, said on stderr and recorded."""
    src, out = work / "raw.h5ad", work / "out.h5ad"
    assert run(src, "-o", out, "--method", "scvgae", "--max-epochs", EPOCHS) == 0
    err = capsys.readouterr().err
    assert "normalizing the raw counts in X ('sqrt', the scvgae default)" in err
    res = ad.read_h5ad(out)
    assert {"scvgae", "normalized", "counts"} <= set(res.layers)
    assert res.uns["scvgae_sc"]["normalize"]["normalized"]["by_impute"]


def test_raw_count_refusal_when_X_is_not_counts(work, capsys):
    src, out = work / "raw.h5ad", work / "out.h5ad"
    adata = ad.read_h5ad(src)
    adata.X = adata.X.astype(np.float32) * 0.5
    adata.write_h5ad(src)
    assert run(src, "-o", out, "--method", "scvgae", "-q") == 1
    err = capsys.readouterr().err
    assert "does not hold raw counts" in err and "Traceback" not in err and not out.exists()


def test_counts_layer_and_log_X_just_work(work, capsys):
    """Scanpy's layout (counts in layers['counts'], log values in X), no 'normalized': made from the counts layer."""
    src, out = work / "raw.h5ad", work / "out.h5ad"
    adata = ad.read_h5ad(src)
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X.astype(np.float32))
    adata.write_h5ad(src)
    assert run(src, "-o", out, "--method", "gnnimpute", "--max-epochs", EPOCHS, "-q") == 0
    err = capsys.readouterr().err  # said even with -q: the data were transformed
    assert "normalizing the raw counts in layers['counts'] ('total', the gnnimpute default)" in err
    assert err.count("no layer 'normalized'") == 1
    res = ad.read_h5ad(out)
    assert res.uns["scvgae_sc"]["normalize"]["normalized"]["method"] == "total"
    assert (abs(res.X - adata.X) > 0).nnz == 0  # X as it was


def test_explicit_missing_layer_is_never_made(work, capsys):
    src, out = work / "raw.h5ad", work / "out.h5ad"
    assert run(src, "-o", out, "--method", "scvgae", "-q", "--layer", "normalised") == 1
    err = capsys.readouterr().err
    assert "no layer 'normalised'" in err and "--normalize sqrt (the scvgae default)" in err and not out.exists()
