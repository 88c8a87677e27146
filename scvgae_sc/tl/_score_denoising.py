from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._constants import UNS_KEY
from .._utils import check_adata, check_counts, check_finite
from ..pp._split import SPLIT, matrix_digest

#: Target row sum of the OpenProblems "mse" score.
_OP_TARGET_SUM = 1e4
#: Offset inside the logarithm of the OpenProblems "poisson" score.
_OP_EPS = 1e-6
#: Entries per block of rows when scoring (bounds the memory of dense blocks).
_BLOCK_ENTRIES = 1 << 22
#: Normalizations of :func:`scvgae_sc.pp.normalize` that can be mapped back.
_NORMALIZATIONS = ("sqrt", "log1p", "total")


@dataclass
class _Scale:
    """How a layer relates to the train half's counts, so it can be mapped back to linear expression."""

    kind: str  # "counts", "sqrt", "log1p" or "total"
    target_sum: float | None
    what: str  # a description for messages and the log


def _records(adata: AnnData, section: str) -> dict:
    root = adata.uns.get(UNS_KEY, {})
    entry = root.get(section, {}) if isinstance(root, dict) else {}
    return entry if isinstance(entry, dict) else {}


def _split_record(adata: AnnData, split_key: str) -> dict:
    if not isinstance(split_key, str):
        raise TypeError(
            f"split_key must be the key (str) of a split made by `scvgae_sc.pp.split_counts`, got {split_key!r}."
        )
    splits = _records(adata, "split_counts")
    if split_key not in splits:
        have = ", ".join(repr(k) for k in splits) or "none"
        raise ValueError(
            f"No molecule split {split_key!r} (splits present: {have}). "
            f"Run `scvgae_sc.pp.split_counts(adata, key_added={split_key!r})` first."
        )
    rec = dict(splits[split_key])
    for layer in (rec.get("train_layer"), rec.get("test_layer")):
        if layer not in adata.layers:
            raise ValueError(
                f"The split {split_key!r} is incomplete: adata.layers has no {layer!r}. "
                f"Run `scvgae_sc.pp.split_counts(adata, key_added={split_key!r})` again."
            )
    return rec


def _normalized_from_counts(counts, method: str, target_sum: float):
    """What :func:`scvgae_sc.pp.normalize` writes for ``counts`` with ``method`` and ``target_sum`` (float64)."""
    X = sparse.csr_matrix(counts, dtype=np.float64) if sparse.issparse(counts) else np.asarray(counts, np.float64)
    Y = X
    if method == "sqrt":
        Y = X.log1p() if sparse.issparse(X) else np.log1p(X)
    totals = np.asarray(Y.sum(axis=1), dtype=np.float64).ravel()
    factors = np.zeros_like(totals)
    np.divide(target_sum, totals, out=factors, where=totals > 0)
    Y = sparse.diags(factors) @ Y if sparse.issparse(Y) else Y * factors[:, None]
    if method == "sqrt":
        return Y.sqrt() if sparse.issparse(Y) else np.sqrt(Y)
    if method == "log1p":
        return Y.log1p() if sparse.issparse(Y) else np.log1p(Y)
    return Y


def _max_abs(X) -> float:
    if sparse.issparse(X):
        return float(np.abs(X.data).max()) if X.nnz else 0.0
    return float(np.abs(X).max()) if X.size else 0.0


def _matches(layer, expected) -> bool:
    """Whether ``layer`` equals ``expected`` up to float32 rounding."""
    if sparse.issparse(layer) != sparse.issparse(expected):
        layer = layer.toarray() if sparse.issparse(layer) else layer
        expected = expected.toarray() if sparse.issparse(expected) else expected
    diff = layer - expected
    return _max_abs(diff) <= 1e-5 + 1e-4 * _max_abs(expected)


def _train_derived(adata: AnnData, name: str | None, split: dict, split_key: str, what: str) -> _Scale:
    """The scale of layer ``name`` if it is the train half or was normalized from it; refuse anything else."""
    train_key, test_key = split["train_layer"], split["test_layer"]
    if name is None:
        raise ValueError(
            f"{what} is adata.X, which holds more than the train half of the split {split_key!r}. "
            f"Use layers computed from adata.layers[{train_key!r}]."
        )
    if name == train_key:
        return _Scale("counts", None, f"the train half {train_key!r}")
    if name == test_key:
        raise ValueError(
            f"{what} is the test half {test_key!r} of the split {split_key!r}, which is what is scored against."
        )
    rec = _records(adata, "normalize").get(name)
    if rec is None:
        raise ValueError(
            f"{what} {name!r} was not computed from the train half of the split {split_key!r}: it is neither "
            f"{train_key!r} nor a layer written by `scvgae_sc.pp.normalize(adata, counts_layer={train_key!r})`. "
            "A method may see only the train half."
        )
    if rec.get("counts_layer") != train_key:
        raise ValueError(
            f"{what} {name!r} was normalized from {rec.get('counts_layer')!r}, not from the train half {train_key!r} "
            f"of the split {split_key!r}, so it has seen the test molecules. Normalize the train half: "
            f"`scvgae_sc.pp.normalize(adata, method={rec.get('method', 'sqrt')!r}, counts_layer={train_key!r}, "
            "key_added=...)`."
        )
    method = rec.get("method")
    if method not in _NORMALIZATIONS:
        raise ValueError(
            f"{what} {name!r} records an unknown normalization {method!r}; expected one of {_NORMALIZATIONS}."
        )
    target_sum = float(rec["target_sum"])
    if name in adata.layers:
        expected = _normalized_from_counts(adata.layers[train_key], method, target_sum)
        if adata.layers[name].shape != expected.shape or not _matches(adata.layers[name], expected):
            raise ValueError(
                f"{what} {name!r} no longer matches its record ({method!r} of {train_key!r}): it was changed after it "
                f"was normalized, or the split {split_key!r} was drawn again since. Normalize the train half again."
            )
    return _Scale(method, target_sum, f"{name!r} ({method} of {train_key!r})")


def _check_graph(adata: AnnData, imputation: str, entry: dict, split: dict, split_key: str) -> None:
    """Refuse an imputation whose graph existed before the split or was built from more than the train half."""
    params = entry.get("params", {})
    graph = entry.get("graph", {}) if isinstance(entry.get("graph"), dict) else {}
    graph_key = params.get("graph_key") or graph.get("key") or None
    before = set(dict(split.get("graphs_before", {})).values())
    obsp_keys = [f"{imputation}_connectivities"]
    if graph_key:
        g_entry = adata.uns.get(graph_key, {})
        g_entry = g_entry if isinstance(g_entry, dict) else {}
        obsp_keys.append(g_entry.get("connectivities_key") or f"{graph_key}_connectivities")
    for key in obsp_keys:
        if key in adata.obsp and matrix_digest(adata.obsp[key], np.float32) in before:
            if key == obsp_keys[0] and not graph_key:
                raise ValueError(
                    f"Imputation {imputation!r} was run before the split {split_key!r} (its graph "
                    f"adata.obsp[{key!r}] existed when the split was drawn), so it has seen the test molecules. "
                    f"Run it again on layers computed from {split['train_layer']!r}."
                )
            raise ValueError(
                f"The graph of imputation {imputation!r} (adata.obsp[{key!r}]) was built before the split "
                f"{split_key!r}, from data that include the test molecules. Build the graph after the split, from a "
                f"layer normalized from {split['train_layer']!r} (`scvgae_sc.pp.cell_graph(adata, layer=...)`)."
            )
    if not graph_key:
        return  # the method built its own graph from its input layer, which is checked separately
    g_params = graph.get("params")
    if g_params is None:
        g_entry = adata.uns.get(graph_key, {})
        g_params = g_entry.get("params") if isinstance(g_entry, dict) else None
    if not isinstance(g_params, dict):
        raise ValueError(
            f"Imputation {imputation!r} used the graph {graph_key!r}, whose record does not say which layer it was "
            f"built from. Build it with `scvgae_sc.pp.cell_graph(adata, layer=...)` from a layer normalized from "
            f"{split['train_layer']!r}."
        )
    if "layer" not in g_params:
        raise ValueError(
            f"Imputation {imputation!r} used the graph {graph_key!r}, built from adata.X or from a representation its "
            f"record does not name, which may include the test molecules. Build it with "
            f"`scvgae_sc.pp.cell_graph(adata, layer=...)` from a layer normalized from {split['train_layer']!r}."
        )
    _train_derived(adata, g_params["layer"], split, split_key, f"The layer that graph {graph_key!r} was built from")


def _scale_of(adata: AnnData, layer: str, split: dict, split_key: str) -> _Scale:
    """How ``layer`` maps back to linear expression, refusing layers not computed from the train half."""
    entry = adata.uns.get(layer)
    params = entry.get("params") if isinstance(entry, dict) else None
    if isinstance(params, dict) and "counts_layer" in params and "method" in params:  # written by tl.impute
        if params["counts_layer"] != split["train_layer"]:
            raise ValueError(
                f"Imputation {layer!r} was run with counts_layer={params['counts_layer']!r}, not the train half "
                f"{split['train_layer']!r} of the split {split_key!r}, so it has seen the test molecules. Run it with "
                f"counts_layer={split['train_layer']!r} and a layer normalized from it."
            )
        scale = _train_derived(adata, params.get("layer"), split, split_key, f"The input layer of imputation {layer!r}")
        _check_graph(adata, layer, entry, split, split_key)
        return _Scale(scale.kind, scale.target_sum, f"imputation {layer!r} of {scale.what}")
    return _train_derived(adata, layer, split, split_key, "Layer")


def _rows(X, a: int, b: int, cells: np.ndarray) -> np.ndarray:
    block = X[cells[a:b]]
    return block.toarray().astype(np.float64) if sparse.issparse(block) else np.asarray(block, dtype=np.float64)


def _to_linear(V: np.ndarray, scale: _Scale, lib1: np.ndarray, log_lib1: np.ndarray, t: float) -> np.ndarray:
    """Map rows of a layer to linear expression at library ``t`` (rows' train libraries ``lib1``)."""
    if scale.kind == "counts":
        P = V * (t / lib1)[:, None]
    elif scale.kind == "total":
        P = V * (t / scale.target_sum)
    elif scale.kind == "log1p":
        P = np.expm1(V) * (t / scale.target_sum)
    else:  # sqrt: V = sqrt(log1p(C) · s / rowsum(log1p(C))) row by row
        P = np.expm1(np.square(V) * (log_lib1 / scale.target_sum)[:, None]) * (t / lib1)[:, None]
    return np.maximum(P, 0.0)


class _Moments:
    """Pooled mean, variances and covariance of two streams of numbers, merged block by block (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mx = self.my = self.sxx = self.syy = self.sxy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        m = x.size
        if m == 0:
            return
        mx, my = float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        sxx, syy, sxy = float((dx * dx).sum()), float((dy * dy).sum()), float((dx * dy).sum())
        n = self.n + m
        ex, ey = mx - self.mx, my - self.my
        self.sxx += sxx + ex * ex * self.n * m / n
        self.syy += syy + ey * ey * self.n * m / n
        self.sxy += sxy + ex * ey * self.n * m / n
        self.mx += ex * m / n
        self.my += ey * m / n
        self.n = n

    def pearson(self) -> float:
        denom = np.sqrt(self.sxx * self.syy)
        return float(self.sxy / denom) if denom > 0 else float("nan")


def _checked_inputs(adata: AnnData, layer: str, split_key: str):
    """The split's record, its two halves and the layer to score, after checking that they still match."""
    split = _split_record(adata, split_key)
    X1, X2 = adata.layers[split["train_layer"]], adata.layers[split["test_layer"]]
    shape = tuple(int(n) for n in split.get("shape", X1.shape))
    if shape != adata.shape:
        raise ValueError(
            f"The split {split_key!r} was drawn on {shape[0]} × {shape[1]} cells × genes, but adata now has shape "
            f"{adata.n_obs} × {adata.n_vars} (subset after the split). Split the data as they will be scored: "
            f"`scvgae_sc.pp.split_counts(adata, key_added={split_key!r})`."
        )
    if matrix_digest(X1) != split.get("train_digest"):
        raise ValueError(
            f"adata.layers[{split['train_layer']!r}] changed since the split {split_key!r} was drawn (edited, or the "
            f"data were subset after the split). Split the data as they will be scored: "
            f"`scvgae_sc.pp.split_counts(adata, key_added={split_key!r})`."
        )
    check_counts(X2, f"adata.layers[{split['test_layer']!r}]")
    if layer not in adata.layers:
        have = ", ".join(repr(k) for k in adata.layers) or "none"
        raise ValueError(f"adata.layers has no layer {layer!r} (layers present: {have}).")
    V = adata.layers[layer]
    if V.shape != adata.shape or X2.shape != adata.shape:
        raise ValueError(f"adata.layers[{layer!r}] has shape {V.shape}, but adata has shape {adata.shape}.")
    check_finite(V, f"adata.layers[{layer!r}]")
    return split, X1, X2, V


def score_denoising(
    adata: AnnData,
    layer: str,
    *,
    split_key: str = SPLIT,
    key_added: str | None = None,
) -> dict[str, float]:
    r"""Score a denoised layer against the held-out molecules of a count split.

    Molecular cross-validation (Batson, Royer & Webber 2019): after :func:`scvgae_sc.pp.split_counts`, a method
    sees only the train half :math:`X^{(1)}` (as its counts layer, and layers normalized from it); its output is
    scored against the test half :math:`X^{(2)}`, which carries independent sampling noise. Copying the input
    scores as "no imputation"; smoothing scores better only where it removes more noise than signal.

    Only cells with molecules in both halves are scored (``obs[f'{split_key}_scored']``). Let :math:`t` be the
    median train library over those cells. The layer is mapped back to linear expression at library :math:`t`,
    :math:`P`, according to how it was made:

    - the train half itself (no imputation): :math:`P_{ij} = X^{(1)}_{ij} \cdot t / \ell_i`, with :math:`\ell_i`
      the cell's train library;
    - ``pp.normalize(method="total")`` of the train half (rows at target sum :math:`s`): :math:`P = V \cdot t / s`;
    - ``method="log1p"``: :math:`P = \mathrm{expm1}(V) \cdot t / s`;
    - ``method="sqrt"`` (rows of :math:`\log(1 + C)` scaled to sum :math:`s`, then the square root): each cell's
      scaling is undone with its own row sum :math:`r_i` of :math:`\log(1 + X^{(1)})`, which the train half gives
      exactly: :math:`P_{ij} = \mathrm{expm1}(V_{ij}^2 \, r_i / s) \cdot t / \ell_i`;
    - a layer written by :func:`scvgae_sc.tl.impute`: on its input layer's scale, so that layer's mapping is used.

    Negative values of :math:`P` are set to zero. With the target
    :math:`T_{ij} = \log(1 + X^{(2)}_{ij} \cdot t / \textstyle\sum_j X^{(2)}_{ij})`, the scores are, over
    **all** entries of the scored cells:

    ``mcv``
        :math:`\mathrm{mean}\,(\log(1 + P) - T)^2`, the molecular cross-validation loss (lower is better).
    ``pearson``
        Pearson correlation of :math:`\log(1 + P)` and :math:`T`.
    ``op_mse``
        The OpenProblems denoising task's "mse": mean squared difference of :math:`\log(1 + \cdot)` of the test
        half and of :math:`P`, each row scaled to sum :math:`10^4` (lower is better).
    ``op_poisson``
        The OpenProblems denoising task's "poisson": :math:`\mathrm{mean}(\hat P - X^{(2)} \log(\hat P + 10^{-6}))`
        with :math:`\hat P_{ij} = P_{ij} \, \ell_i / t \cdot \sum X^{(2)} / \sum X^{(1)}` (the prediction on the
        train half's count scale, scaled to the test half's depth; lower is better). Split with
        ``fraction=0.9`` to reproduce that task.
    ``n_cells``
        Number of cells scored.

    Refused, with the reason and nothing written: a split that does not exist or whose train half changed since
    it was drawn; a layer not computed from the train half — ``X``, the full counts, a layer normalized from
    another counts layer, a normalized layer that no longer matches its record, an imputation whose
    ``counts_layer`` or input layer is not the train half, or whose graph was built before the split or from a
    layer not computed from the train half.

    Parameters
    ----------
    adata
        Annotated data matrix with a split made by :func:`scvgae_sc.pp.split_counts`.
    layer
        Layer to score: the split's train half, a layer written by :func:`scvgae_sc.pp.normalize` from it, or a
        layer written by :func:`scvgae_sc.tl.impute` run on those.
    split_key
        ``key_added`` of the split.
    key_added
        If given, the scores are also stored in ``adata.uns[key_added]``.

    Returns
    -------
    A :class:`dict` with ``mcv``, ``pearson``, ``op_mse``, ``op_poisson`` and ``n_cells``. Sets
    ``adata.uns[key_added]`` to the same dict if ``key_added`` is given.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.filter(adata)
    >>> sv.pp.split_counts(adata)
    >>> sv.pp.normalize(adata, method="total", counts_layer="mcv_train", key_added="train_total")
    >>> sv.tl.impute(adata, method="gnnimpute", layer="train_total", counts_layer="mcv_train")
    >>> sv.tl.score_denoising(adata, "mcv_train")["mcv"]  # no imputation
    >>> sv.tl.score_denoising(adata, "gnnimpute")["mcv"]
    """
    check_adata(adata)
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}.")
    if key_added is not None and (not isinstance(key_added, str) or not key_added):
        raise TypeError(f"key_added must be a non-empty str or None, got {key_added!r}.")
    split, X1, X2, V = _checked_inputs(adata, layer, split_key)
    scale = _scale_of(adata, layer, split, split_key)

    lib1 = np.asarray(X1.sum(axis=1), dtype=np.float64).ravel()
    lib2 = np.asarray(X2.sum(axis=1), dtype=np.float64).ravel()
    cells = np.flatnonzero((lib1 > 0) & (lib2 > 0))
    if cells.size == 0:
        raise ValueError(f"No cell has molecules in both halves of the split {split_key!r}; there is nothing to score.")
    start = logg.info(f"scoring {layer!r} against the test half of {split_key!r}")
    L1 = X1.log1p() if sparse.issparse(X1) else np.log1p(np.asarray(X1, dtype=np.float64))
    log_lib1 = np.asarray(L1.sum(axis=1), dtype=np.float64).ravel()
    t = float(np.median(lib1[cells]))
    depth = float(lib2[cells].sum() / lib1[cells].sum())

    n_genes = adata.n_vars
    step = max(1, _BLOCK_ENTRIES // max(n_genes, 1))
    mcv_sum = op_mse_sum = op_poisson_sum = 0.0
    moments = _Moments()
    for a in range(0, cells.size, step):
        b = min(a + step, cells.size)
        rows = cells[a:b]
        P = _to_linear(_rows(V, a, b, cells), scale, lib1[rows], log_lib1[rows], t)
        Y = _rows(X2, a, b, cells)
        T = np.log1p(Y * (t / lib2[rows])[:, None])
        logP = np.log1p(P)
        mcv_sum += float(np.square(logP - T).sum())
        moments.add(logP.ravel(), T.ravel())
        # OpenProblems "mse": both sides normalized to 1e4 per cell, then log1p
        row_p = P.sum(axis=1)
        f = np.zeros_like(row_p)
        np.divide(_OP_TARGET_SUM, row_p, out=f, where=row_p > 0)
        op_mse_sum += float(
            np.square(np.log1p(P * f[:, None]) - np.log1p(Y * (_OP_TARGET_SUM / lib2[rows])[:, None])).sum()
        )
        # OpenProblems "poisson": the prediction on the train counts' scale, scaled to the test half's depth
        Pc = P * (lib1[rows] / t * depth)[:, None]
        op_poisson_sum += float((Pc - Y * np.log(Pc + _OP_EPS)).sum())

    n = float(cells.size) * n_genes
    scores = {
        "mcv": mcv_sum / n,
        "pearson": moments.pearson(),
        "op_mse": op_mse_sum / n,
        "op_poisson": op_poisson_sum / n,
        "n_cells": int(cells.size),
    }
    if key_added is not None:
        adata.uns[key_added] = dict(scores)
    logg.info(
        f"    finished: mcv {scores['mcv']:.4f} on {cells.size} cells at library {t:g} ({scale.what})",
        time=start,
        deep=f"added {key_added!r} (adata.uns)" if key_added is not None else None,
    )
    return scores
