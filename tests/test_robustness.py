"""Property-based robustness: every public ``pp`` / ``tl`` function on random small AnnData objects.

For dense / CSR / CSC matrices of integer and float dtypes, views, odd shapes (one gene, two cells, ...), all-zero
rows and columns, duplicated names and bad values (non-integer counts, negatives, NaN), each function either
returns its documented result or raises a ``ValueError`` / ``TypeError`` — never another exception — and:

* on failure the AnnData is exactly as it was (values, keys, names, shape);
* ``X`` and ``raw`` are never modified (``pp.filter`` subsets them, as documented);
* with ``copy=True`` the input is untouched either way.

Kept fast for CI: 25 examples per property, shapes of at most 12 × 6, one training epoch of tiny networks.
"""

from __future__ import annotations

import atexit
import copy as copy_module
import os
import shutil
import tempfile
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import sparse

import scvgae_sc as sv

#: ``SCVGAE_SC_ROBUSTNESS_EXAMPLES=500`` for a longer hunt than CI's 25 examples per property.
SETTINGS = settings(
    max_examples=int(os.environ.get("SCVGAE_SC_ROBUSTNESS_EXAMPLES", 25)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: ``SCVGAE_SC_ROBUSTNESS_LOG=path`` appends every error message raised to ``path`` (to review their wording).
_LOG = os.environ.get("SCVGAE_SC_ROBUSTNESS_LOG")
_TMP = tempfile.mkdtemp(prefix="scvgae_sc_robustness_")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

pytestmark = pytest.mark.filterwarnings("ignore")  # duplicated names, implicit copies, scanpy's notes: all expected

INT_DTYPES = (np.int32, np.int64, np.uint8, np.uint16)
FLOAT_DTYPES = (np.float32, np.float64)


# ------------------------------------------------------------------------------------------- strategies
@st.composite
def matrices(
    draw, *, min_obs: int = 1, max_obs: int = 12, max_vars: int = 6, values: str | None = None, sparsity: int = 3
):
    """A small expression matrix: dense / CSR / CSC, int or float, with zero rows / columns and bad values."""
    n = draw(st.integers(min_obs, max_obs))
    g = draw(st.integers(1, max_vars))
    X = draw(hnp.arrays(np.int64, (n, g), elements=st.sampled_from([0] * sparsity + [1, 1, 2, 3, 7, 40])))
    if draw(st.booleans()):
        X[draw(st.integers(0, n - 1))] = 0  # an all-zero cell
    if draw(st.booleans()):
        X[:, draw(st.integers(0, g - 1))] = 0  # an all-zero gene
    kind = values or draw(st.sampled_from(["counts"] * 6 + ["float_counts"] * 2 + ["fraction", "negative", "nan"]))
    if kind == "counts":
        X = X.astype(draw(st.sampled_from(INT_DTYPES + FLOAT_DTYPES)))
    else:
        X = X.astype(draw(st.sampled_from(FLOAT_DTYPES)))
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, g - 1))
        if kind == "fraction":
            X[i, j] = 0.5
        elif kind == "negative":
            X[i, j] = -1
        elif kind == "nan":
            X[i, j] = np.nan
    layout = draw(st.sampled_from(["dense", "csr", "csc"]))
    return X if layout == "dense" else sparse.csr_matrix(X) if layout == "csr" else sparse.csc_matrix(X)


@st.composite
def anndatas(draw, *, view: bool | None = None, **matrix_kwargs):
    """An AnnData around :func:`matrices`, maybe with duplicated names, ``raw``, labels, and as a view."""
    X = draw(matrices(**matrix_kwargs))
    n, g = X.shape
    make_view = draw(st.booleans()) if view is None else view
    if make_view:  # one extra cell, sliced off again
        extra = sparse.csr_matrix(X[:1]) if sparse.issparse(X) else X[:1]
        X = sparse.vstack([X, extra], format=X.format) if sparse.issparse(X) else np.vstack([X, extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(X)
        dup_obs, dup_var = draw(st.booleans()), draw(st.booleans())
        adata.obs_names = [f"c{i // 2 if dup_obs else i}" for i in range(adata.n_obs)]
        adata.var_names = [f"g{j // 2 if dup_var else j}" for j in range(adata.n_vars)]
        labels = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=adata.n_obs, max_size=adata.n_obs))
        adata.obs["cell_type"] = pd.Categorical(labels)
        if draw(st.booleans()):
            adata.raw = adata.copy()
    return adata[:n] if make_view else adata


# --------------------------------------------------------------------------------------------- helpers
def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.array(X, copy=True)


def _kind(X) -> str:
    """``"dense"`` or the sparse format (a view's ``ArrayView`` is dense)."""
    return X.format if sparse.issparse(X) else "dense"


def _uns_equal(a, b) -> bool:
    if isinstance(a, dict) or hasattr(a, "keys"):
        return hasattr(b, "keys") and set(a.keys()) == set(b.keys()) and all(_uns_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray | list | tuple):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


class State:
    """Everything a failed call must leave as it was."""

    def __init__(self, adata: ad.AnnData) -> None:
        self.shape = adata.shape
        self.is_view = adata.is_view
        self.X = None if adata.X is None else _dense(adata.X)
        self.X_kind = None if adata.X is None else _kind(adata.X)
        self.X_dtype = None if adata.X is None else adata.X.dtype
        self.raw = None if adata.raw is None else _dense(adata.raw.X)
        self.layers = {k: (_kind(v), _dense(v)) for k, v in adata.layers.items()}
        self.obsm = {k: np.array(v, copy=True) for k, v in adata.obsm.items()}
        self.obsp = {k: _dense(v) for k, v in adata.obsp.items()}
        self.uns = copy_module.deepcopy(dict(adata.uns))
        self.obs = adata.obs.copy()
        self.var = adata.var.copy()
        self.names = (list(adata.obs_names), list(adata.var_names))

    def assert_X_and_raw(self, adata: ad.AnnData, rows=None, cols=None) -> None:
        """``X`` and ``raw`` as they were (the kept ``rows`` / ``cols`` of them after a subset)."""
        rows = slice(None) if rows is None else rows
        cols = slice(None) if cols is None else cols
        assert _kind(adata.X) == self.X_kind and adata.X.dtype == self.X_dtype
        np.testing.assert_array_equal(_dense(adata.X), self.X[rows][:, cols])
        if self.raw is None:
            assert adata.raw is None
        else:
            np.testing.assert_array_equal(_dense(adata.raw.X), self.raw[rows])

    def assert_unchanged(self, adata: ad.AnnData) -> None:
        assert adata.shape == self.shape and adata.is_view == self.is_view
        self.assert_X_and_raw(adata)
        assert set(adata.layers) == set(self.layers)
        for k, (kind, v) in self.layers.items():
            assert _kind(adata.layers[k]) == kind
            np.testing.assert_array_equal(_dense(adata.layers[k]), v)
        assert set(adata.obsm) == set(self.obsm) and set(adata.obsp) == set(self.obsp)
        for k, v in self.obsm.items():
            np.testing.assert_array_equal(np.asarray(adata.obsm[k]), v)
        for k, v in self.obsp.items():
            np.testing.assert_array_equal(_dense(adata.obsp[k]), v)
        assert _uns_equal(dict(adata.uns), self.uns)
        pd.testing.assert_frame_equal(adata.obs, self.obs)
        pd.testing.assert_frame_equal(adata.var, self.var)
        assert (list(adata.obs_names), list(adata.var_names)) == self.names


def attempt(func, adata: ad.AnnData, *args, **kwargs) -> tuple[bool, object, State]:
    """Call ``func(adata, ...)``; return ``(succeeded, output, state before)``.

    ``output`` is the AnnData written to (the returned copy with ``copy=True``) for functions with ``copy``, else
    the return value. A ``ValueError`` / ``TypeError`` must leave everything as it was; any other exception
    propagates and fails the property.
    """
    before = State(adata)
    try:
        result = func(adata, *args, **kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert len(message) > 20, f"{func.__name__}: unhelpful message {message!r}"
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{func.__name__}\t{type(err).__name__}\t{message}\n")
        before.assert_unchanged(adata)
        event(f"{func.__name__}: refused ({message[:60]})")
        return False, None, before
    event(f"{func.__name__}: done")
    if "copy" not in kwargs:
        return True, result, before
    if kwargs["copy"]:
        before.assert_unchanged(adata)
        assert isinstance(result, ad.AnnData) and result is not adata
        return True, result, before
    assert result is None
    return True, adata, before


def _draw_fraction(draw):
    return draw(st.sampled_from([0.0, 0.05, 0.3, 0.99, -0.1, 1.0, "a", True]))


# ------------------------------------------------------------------------------------------- properties
@SETTINGS
@given(data=st.data())
def test_filter(data):
    adata = data.draw(anndatas())
    fc, fg, copy = _draw_fraction(data.draw), _draw_fraction(data.draw), data.draw(st.booleans())
    ok, out, before = attempt(sv.pp.filter, adata, min_cell_fraction=fc, min_gene_fraction=fg, copy=copy)
    if not ok:
        return
    X = before.X
    nnz = X != 0
    gene_mask = nnz.sum(axis=0) > int(fc * X.shape[0])
    cell_mask = nnz.sum(axis=1) > int(fg * X.shape[1])
    # documented semantics: both masks from the unfiltered matrix; values not touched
    assert out.shape == (int(cell_mask.sum()), int(gene_mask.sum()))
    before.assert_X_and_raw(out, rows=cell_mask, cols=gene_mask)
    assert out.uns["scvgae_sc"]["filter"]["n_obs_before"] == X.shape[0]


@SETTINGS
@given(data=st.data())
def test_normalize(data):
    adata = data.draw(anndatas())
    method = data.draw(st.sampled_from(["sqrt", "log1p", "total", "zscore"]))
    key = data.draw(st.sampled_from(["normalized", "normalized", "counts", 3]))
    copy = data.draw(st.booleans())
    if data.draw(st.booleans()) and not adata.is_view:  # counts already in a layer
        adata.layers["counts"] = adata.X.copy()
    ok, out, before = attempt(sv.pp.normalize, adata, method=method, key_added=key, copy=copy)
    if not ok:
        return
    Y = out.layers[key]
    C = out.layers["counts"]
    assert Y.shape == C.shape == before.shape and Y.dtype == np.float32
    assert sparse.issparse(Y) == sparse.issparse(C)
    Yd, Cd = _dense(Y), _dense(C)
    assert np.isfinite(Yd).all() and Yd.min() >= 0
    np.testing.assert_array_equal(Yd != 0, Cd != 0)  # zeros stay zeros, non-zeros stay non-zero
    np.testing.assert_array_equal(Cd, before.X if "counts" not in before.layers else before.layers["counts"][1])
    assert out.uns["scvgae_sc"]["normalize"][key]["method"] == method
    before.assert_X_and_raw(out)


@SETTINGS
@given(data=st.data())
def test_cell_graph(data):
    adata = data.draw(anndatas(max_obs=10))
    kwargs = {
        "layer": None,
        "method": data.draw(st.sampled_from(["knn", "knn", "kernel"])),
        "n_neighbors": data.draw(st.sampled_from([2, 3, 5, 1])),
        "n_pcs": data.draw(st.sampled_from([None, 0, 2, 50])),
        "percentile": data.draw(st.sampled_from([0, 50, 85, 99.9, 100])),
        "self_loops": data.draw(st.booleans()),
        "normalize": data.draw(st.sampled_from([None, "row"])),
        "copy": data.draw(st.booleans()),
    }
    ok, out, before = attempt(sv.pp.cell_graph, adata, **kwargs)
    if not ok:
        return
    A = out.obsp["cell_graph_connectivities"]
    n = before.shape[0]
    assert sparse.isspmatrix_csr(A) and A.shape == (n, n) and A.dtype == np.float32
    Ad = A.toarray()
    assert np.isfinite(Ad).all() and Ad.min() >= 0
    if kwargs["normalize"] == "row":
        sums = Ad.sum(axis=1)
        np.testing.assert_allclose(sums[sums > 0], 1, rtol=1e-5)
    elif kwargs["method"] == "knn":
        np.testing.assert_array_equal(Ad, Ad.T)
    if not kwargs["self_loops"]:
        assert not np.diag(Ad).any()
    before.assert_X_and_raw(out)


@SETTINGS
@given(data=st.data())
def test_cell_graph_batches(data):
    """``batch_key`` (the drawn 'cell_type' labels as batches, a missing column, NaN labels, tiny batches)."""
    adata = data.draw(anndatas(max_obs=12))
    if data.draw(st.booleans()) and not adata.is_view:
        labels = adata.obs["cell_type"].astype(object)
        labels.iloc[data.draw(st.integers(0, adata.n_obs - 1))] = np.nan
        adata.obs["cell_type"] = labels
    kwargs = {
        "layer": None,
        "method": data.draw(st.sampled_from(["knn", "knn", "knn", "kernel"])),
        "n_neighbors": data.draw(st.sampled_from([2, 3, 5])),
        "n_pcs": data.draw(st.sampled_from([None, 2, 50])),
        "self_loops": data.draw(st.booleans()),
        "normalize": data.draw(st.sampled_from([None, "row"])),
        "batch_key": data.draw(st.sampled_from(["cell_type", "cell_type", "nope"])),
        "batch_mode": data.draw(st.sampled_from(["within", "balanced", "both"])),
        "copy": data.draw(st.booleans()),
    }
    ok, out, before = attempt(sv.pp.cell_graph, adata, **kwargs)
    if not ok:
        return
    A = out.obsp["cell_graph_connectivities"].tocsr()
    labels = before.obs["cell_type"].to_numpy()
    coo = A.tocoo()
    if kwargs["batch_mode"] == "within":
        assert (labels[coo.row] == labels[coo.col]).all(), "no edge between batches"
    elif kwargs["n_pcs"] is None and np.unique(before.X, axis=0).shape[0] == before.shape[0]:
        # every cell has neighbours from every batch. Read from the distances, which (distinct rows, no PCA) are
        # all positive; weights can underflow to 0 next to duplicated cells, with or without batches.
        D = out.obsp["cell_graph_distances"].tocsr()
        for i in range(D.shape[0]):
            assert set(labels[D.indices[D.indptr[i] : D.indptr[i + 1]]]) == set(labels)
    assert out.uns["cell_graph"]["params"]["batch_key"] == "cell_type"
    before.assert_X_and_raw(out)


@SETTINGS
@given(data=st.data())
def test_mask_dropouts(data):
    adata = data.draw(anndatas(view=False, min_obs=4, sparsity=1))
    adata.layers["counts"] = adata.X.copy()
    rate = data.draw(st.sampled_from([0.3, 0.5, 0.5, 0.99, 0.1, 0.0, 1.0, "a"]))
    copy = data.draw(st.booleans())
    if data.draw(st.booleans()):
        adata = adata[: max(1, adata.n_obs - 1)]  # a view: refused in place, fine with copy=True
    ok, out, before = attempt(sv.pp.mask_dropouts, adata, rate=rate, layer=None, copy=copy)
    if not ok:
        return
    M = out.layers["masked_mask"]
    assert sparse.isspmatrix_csr(M) and M.dtype == bool and M.nnz > 0
    mask = M.toarray()
    counts = before.layers["counts"][1]
    assert (counts[mask] != 0).all(), "only observed values are hidden"
    for key, source in (("masked", before.X), ("masked_counts", counts)):
        masked = _dense(out.layers[key])
        assert (masked[mask] == 0).all()
        np.testing.assert_array_equal(masked[~mask], source[~mask])
    before.assert_X_and_raw(out)


def _prepared(data, **matrix_kwargs) -> ad.AnnData:
    """A drawn AnnData with the 'normalized' and 'counts' layers impute expects (bad values kept), or without."""
    adata = data.draw(anndatas(view=False, **matrix_kwargs))
    norm = data.draw(st.sampled_from(["sqrt", "total", "sqrt", "total", "as is", None]))
    if norm == "as is":  # X itself as both layers: bad values reach impute's own checks
        adata.layers["counts"] = adata.X.copy()
        adata.layers["normalized"] = adata.X.copy()
    elif norm is not None:
        try:
            sv.pp.normalize(adata, method=norm)
        except ValueError:
            adata.layers["counts"] = adata.X.copy()
            adata.layers["normalized"] = adata.X.copy()
    if data.draw(st.booleans()):
        adata = adata[:, : max(1, adata.n_vars - 1)]  # a view
    return adata


def _check_imputed(out: ad.AnnData, key: str, before: State) -> None:
    imputed = out.layers[key]
    assert isinstance(imputed, np.ndarray) and imputed.dtype == np.float32 and imputed.shape == before.shape
    assert np.isfinite(imputed).all() and imputed.min() >= 0
    assert out.obsm[f"X_{key}"].shape[0] == before.shape[0]
    assert out.obsp[f"{key}_connectivities"].shape == (before.shape[0],) * 2
    assert {"params", "history", "graph", "device", "runtime_s", "version"} <= set(out.uns[key])
    before.assert_X_and_raw(out)
    out.write_h5ad(os.path.join(_TMP, "imputed.h5ad"))  # everything written is storable


def _check_batch_graph(out: ad.AnnData, key: str, kwargs: dict, before: State) -> None:
    """With ``batch_key`` in ``"within"`` mode, the graph trained on has no edge between batches."""
    if kwargs.get("batch_key") is None:
        assert "batch_key" not in out.uns[key]["params"]
        return
    assert out.uns[key]["params"]["batch_key"] == kwargs["batch_key"]
    if kwargs["batch_mode"] == "within":
        labels = before.obs[kwargs["batch_key"]].to_numpy()
        coo = out.obsp[f"{key}_connectivities"].tocoo()
        assert (labels[coo.row] == labels[coo.col]).all()


@SETTINGS
@given(data=st.data())
def test_impute_scvgae(data):
    adata = _prepared(data, min_obs=2)
    kwargs = {
        "method": "scvgae",
        "max_epochs": 1,
        "copy": data.draw(st.booleans()),
        "progress_bar": False,
        "hidden": 4,
        "decoder_hidden": 4,
        "graph": data.draw(st.sampled_from(["knn", "knn", "kernel"])),
        "n_neighbors": data.draw(st.sampled_from([2, 3])),
        "n_pcs": 3,
        "batch_size": data.draw(st.sampled_from([None, 2, 512])),
        "output": data.draw(st.sampled_from(["fill", "recon"])),
        "variational": data.draw(st.booleans()),
        "random_state": data.draw(st.sampled_from([0, None])),
        "batch_key": data.draw(st.sampled_from([None, None, "cell_type", "nope"])),
        "batch_mode": data.draw(st.sampled_from(["within", "balanced"])),
    }
    ok, out, before = attempt(sv.tl.impute, adata, **kwargs)
    if ok:
        _check_imputed(out, "scvgae", before)
        _check_batch_graph(out, "scvgae", kwargs, before)


@SETTINGS
@given(data=st.data())
def test_impute_gnnimpute(data):
    adata = _prepared(data, min_obs=8, max_obs=14)
    kwargs = {
        "method": "gnnimpute",
        "max_epochs": 1,
        "copy": data.draw(st.booleans()),
        "progress_bar": False,
        "hidden": 4,
        "latent": 2,
        "heads": 1,
        "patience": 1,
        "n_neighbors": data.draw(st.sampled_from([2, 3])),
        "n_pcs": 3,
        "mask_rate": data.draw(st.sampled_from([0.0, 0.5])),
        "output": data.draw(st.sampled_from(["fill", "recon"])),
        "random_state": data.draw(st.sampled_from([0, None])),
        "batch_key": data.draw(st.sampled_from([None, None, "cell_type", "nope"])),
        "batch_mode": data.draw(st.sampled_from(["within", "balanced"])),
    }
    ok, out, before = attempt(sv.tl.impute, adata, **kwargs)
    if ok:
        _check_imputed(out, "gnnimpute", before)
        _check_batch_graph(out, "gnnimpute", kwargs, before)


@SETTINGS
@given(data=st.data())
def test_score_imputation(data):
    adata = data.draw(anndatas(view=False, values="counts"))
    n, g = adata.shape
    truth = _dense(adata.X).astype(np.float64)
    adata.layers["truth"] = truth
    imputed = data.draw(hnp.arrays(np.float32, (n, g), elements=st.floats(0, 10, width=32)))
    if data.draw(st.booleans()):
        imputed[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, g - 1))] = np.nan
    adata.layers["imputed"] = sparse.csr_matrix(imputed) if data.draw(st.booleans()) else imputed
    mask = data.draw(hnp.arrays(bool, (n, g)))
    mask_kind = data.draw(st.sampled_from(["sparse", "dense", "int", "float", "missing"]))
    if mask_kind != "missing":
        adata.layers["masked_mask"] = {
            "sparse": lambda: sparse.csr_matrix(mask),
            "dense": lambda: mask,
            "int": lambda: mask.astype(np.int8),
            "float": lambda: mask * 0.5,
        }[mask_kind]()
    ok, result, before = attempt(sv.tl.score_imputation, adata, "imputed", truth_layer="truth")
    if not ok:
        return
    assert mask_kind in ("sparse", "dense", "int")
    y, t = imputed[mask].astype(np.float64), truth[mask]
    assert result["n"] == int(mask.sum()) > 0
    assert result["mse"] == pytest.approx(np.mean((y - t) ** 2)) and result["mae"] == pytest.approx(np.mean(abs(y - t)))
    for k in ("pearson", "cosine"):
        assert np.isnan(result[k]) or -1 <= result[k] <= 1
    before.assert_unchanged(adata)


@SETTINGS
@given(data=st.data())
def test_score_clustering(data):
    adata = data.draw(anndatas(min_obs=2, max_obs=10))
    protocol = data.draw(st.sampled_from(["paper", "paper", "leiden"]))
    key = data.draw(st.sampled_from([None, "scores"]))
    labels_key = data.draw(st.sampled_from(["cell_type", "cell_type", "nope"]))
    ok, result, before = attempt(
        sv.tl.score_clustering, adata, None, labels_key=labels_key, protocol=protocol, key_added=key
    )
    if not ok:
        return
    assert {"ari", "ami", "nmi", "n_clusters"} <= set(result)
    for m in ("ari", "ami", "nmi"):
        assert np.isfinite(result[m]) and -1 <= result[m] <= 1
    assert isinstance(result["n_clusters"], int) and result["n_clusters"] >= 1
    before.assert_X_and_raw(adata)
    if key is not None:
        assert adata.uns[key] == result


# --------------------------------------------------------------------------- interrupting training
@pytest.mark.parametrize(("method", "layer"), [("scvgae", "normalized"), ("gnnimpute", "total")])
@pytest.mark.parametrize("copy", [False, True])
def test_interrupt_mid_training_leaves_adata_untouched(toy_counts, monkeypatch, method, layer, copy):
    """Ctrl+C after some optimizer steps (inside the second epoch): nothing is written, the input is as it was."""
    from scvgae_sc.nn import Trainer

    sv.pp.normalize(toy_counts)
    sv.pp.normalize(toy_counts, method="total", key_added="total")
    toy_counts.raw = toy_counts.copy()
    steps = []
    original = Trainer._optimizer_step

    def step_then_interrupt(self, *args, **kwargs):
        original(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_interrupt)
    before = State(toy_counts)
    opts = {"batch_size": 64} if method == "scvgae" else {}
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sv.tl.impute(
            toy_counts,
            method=method,
            layer=layer,
            max_epochs=5,
            progress_bar=False,
            copy=copy,
            return_model=True,
            **opts,
        )
    assert len(steps) == 3
    before.assert_unchanged(toy_counts)


# ------------------------------------------------------------------------------- regressions found here
def test_scvgae_last_batch_of_one_cell(toy_counts):
    """120 cells in batches of 119 left a batch of one cell, which BatchNorm cannot train on."""
    import torch

    from scvgae_sc.tl._common import split_batches

    batches = split_batches(torch.arange(120), 119)
    assert [len(b) for b in batches] == [120]
    assert [len(b) for b in split_batches(torch.arange(7), 3)] == [3, 4]
    assert [len(b) for b in split_batches(torch.arange(6), 3)] == [3, 3]
    sv.pp.normalize(toy_counts)
    sv.tl.impute(toy_counts, method="scvgae", max_epochs=1, batch_size=119, progress_bar=False, n_neighbors=3)
    assert np.isfinite(toy_counts.layers["scvgae"]).all()


def test_one_cell_refused_clearly(toy_counts):
    one = toy_counts[:1].copy()
    sv.pp.normalize(one)
    for method in ("scvgae", "gnnimpute"):
        with pytest.raises(ValueError, match="at least 2 cells"):
            sv.tl.impute(one, method=method, max_epochs=1)


def test_constant_matrix_graph_and_leiden():
    """Identical cells: PCA (ARPACK) failed with 'Starting vector is zero'."""
    adata = ad.AnnData(np.ones((12, 3), dtype=np.float32))
    adata.obs["cell_type"] = pd.Categorical(["a", "b"] * 6)
    sv.pp.cell_graph(adata, layer=None, n_neighbors=3, n_pcs=2)
    assert adata.obsp["cell_graph_connectivities"].shape == (12, 12)
    with pytest.raises(ValueError, match="same values"):
        sv.tl.score_clustering(adata, None, protocol="leiden")
