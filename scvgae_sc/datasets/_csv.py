from __future__ import annotations

import bz2
import gzip
import lzma
import warnings
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.utils import make_index_unique
from scanpy import logging as logg
from scipy import sparse

from .._constants import CELL_TYPE
from .._utils import check_finite

__all__ = ["read_labeled_csv"]

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _first_line(path: Path) -> str:
    """Return the first line of a plain or compressed text file ('' when it is empty)."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.readline()
    except (OSError, EOFError) as e:
        raise ValueError(f"Could not read {str(path)!r} as text ({e}). Is it a csv (or csv.gz) file?") from e


def _guess_sep(line: str) -> str:
    """Tab if the header has more tabs than commas, else comma."""
    return "\t" if line.count("\t") > line.count(",") else ","


def _check_numeric(df: pd.DataFrame, path: Path, header: list[str]) -> None:
    """Refuse non-numeric and missing values, naming the first offending row and column."""
    for j in range(df.shape[1]):
        col = df.iloc[:, j]
        if pd.api.types.is_numeric_dtype(col):
            continue
        bad = (pd.to_numeric(col, errors="coerce").isna() & col.notna()).to_numpy()
        i = int(np.argmax(bad))
        raise ValueError(
            f"{str(path)!r} has a non-numeric value {col.iloc[i]!r} in row {df.index[i]!r} (data row {i}), column "
            f"{header[j]!r}. Expected a header row of names, a first column of labels, and numbers everywhere else. "
            "Check `sep=` and `transpose=`."
        )
    missing = df.isna().to_numpy()
    if missing.any():
        i, j = (int(k[0]) for k in np.nonzero(missing))
        raise ValueError(
            f"{str(path)!r} has {int(missing.sum())} missing (empty or NA) values, the first in row {df.index[i]!r} "
            f"(data row {i}), column {header[j]!r}. Fill them (e.g. with 0) before reading."
        )


def read_labeled_csv(
    path: PathLike[str] | str,
    *,
    labels_key: str = CELL_TYPE,
    sep: str | None = None,
    transpose: bool = False,
) -> AnnData:
    """Read a labeled expression table in the seed papers' csv format.

    The table is cells × genes: a header row of gene names and one row per cell whose first
    field is the cell's label (its type), e.g. ::

        ,CD3D,MS4A1,LYZ
        T cell,3,0,1
        B cell,0,5,0

    Plain and compressed (``.gz``, ``.bz2``, ``.xz``) files are read.

    Parameters
    ----------
    path
        The csv (or csv.gz, tsv, ...) file.
    labels_key
        Column of ``obs`` that receives the labels.
    sep
        Field separator. ``None`` guesses from the header line: tab if it holds more tabs than
        commas, else comma.
    transpose
        The table is genes × cells: the header row holds the cell labels and the first column the
        gene names.

    Returns
    -------
    An :class:`~anndata.AnnData` with

    ``X``
        The values as :class:`scipy.sparse.csr_matrix` of float32 (counts are expected; a
        warning is logged when they are not non-negative integers).
    ``obs[labels_key]``
        The labels as a categorical of strings.
    ``obs_names``
        ``"cell0"``, ``"cell1"``, ... (labels are not unique, so they cannot be the names).
    ``var_names``
        The gene names, made unique (``"GENE"``, ``"GENE-1"``, ...) with a warning if repeated.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.read_labeled_csv("Klein.csv.gz")  # doctest: +SKIP
    >>> adata.obs["cell_type"].value_counts()  # doctest: +SKIP
    """
    if not isinstance(labels_key, str) or not labels_key:
        raise TypeError(f"labels_key must be a non-empty str, got {labels_key!r}.")
    if sep is not None and (not isinstance(sep, str) or not sep):
        raise TypeError(f"sep must be a non-empty str or None, got {sep!r}.")
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{str(path)!r} {what}. Pass the path of a csv or csv.gz table.")

    start = logg.info(f"reading {str(path)!r}")
    header_line = _first_line(path)
    if not header_line.strip():
        raise ValueError(
            f"{str(path)!r} is empty (no header row). Expected a header row of names and one row per cell."
        )
    if sep is None:
        sep = _guess_sep(header_line)
    read_kw = {"sep": sep, "header": None, "keep_default_na": False}
    # the header on its own, as strings: pandas would rename repeated names ("A", "A.1") silently
    header = pd.read_csv(path, nrows=1, dtype=str, **read_kw).iloc[0].tolist()
    try:
        df = pd.read_csv(path, skiprows=1, index_col=0, na_values=["", "NA", "NaN", "nan"], **read_kw)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame()
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(
            f"{str(path)!r} holds no data (table shape {df.shape[0]} × {df.shape[1]} after the header and the label "
            "column). Expected a header row of names and one row per cell whose first field is its label."
        )
    n_cols = df.shape[1]
    if len(header) == n_cols + 1:
        header = header[1:]  # the index column's own header (often empty)
    elif len(header) != n_cols:
        raise ValueError(
            f"{str(path)!r}: the header has {len(header)} fields but the data rows have {n_cols + 1} (label + "
            f"{n_cols} values). Check `sep=` (used {sep!r})."
        )
    _check_numeric(df, path, header)

    values = df.to_numpy(dtype=np.float32)
    row_names = [str(x) for x in df.index]
    col_names = [str(x) for x in header]
    if transpose:
        values = values.T
        labels, gene_names = col_names, row_names
    else:
        labels, gene_names = row_names, col_names
    X = sparse.csr_matrix(values)
    del values, df
    check_finite(X, f"The table in {str(path)!r}")

    if X.nnz and (X.data.min() < 0 or not np.array_equal(X.data, np.round(X.data))):
        logg.warning(
            f"{str(path)!r} does not hold non-negative integer counts; `scvgae_sc.pp.normalize` needs raw counts."
        )
    n_cells = X.shape[0]
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    obs[labels_key] = pd.Categorical(labels)
    var_names = pd.Index(gene_names)
    if not var_names.is_unique:
        n_dup = int(var_names.duplicated().sum())
        warnings.warn(
            f"{n_dup} gene names in {str(path)!r} repeat an earlier one; made unique by appending '-1', '-2', ...",
            UserWarning,
            stacklevel=2,
        )
        var_names = make_index_unique(var_names)
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names))
    logg.info(
        "    finished",
        time=start,
        deep=f"{n_cells} cells × {adata.n_vars} genes, {obs[labels_key].cat.categories.size} labels in '{labels_key}'",
    )
    return adata
