from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scvgae_sc as sv

GENES = ["CD3D", "MS4A1", "LYZ", "NKG7"]
LABELS = ["T cell", "B cell", "T cell", "Monocyte", "NK"]


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    values = rng.poisson(2.0, size=(len(LABELS), len(GENES)))
    return pd.DataFrame(values, index=pd.Index(LABELS), columns=GENES)


def _check(adata, table: pd.DataFrame, labels_key: str = "cell_type") -> None:
    assert adata.shape == table.shape
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), table.to_numpy(dtype=np.float32))
    assert list(adata.var_names) == [str(g) for g in table.columns]
    assert list(adata.obs_names) == [f"cell{i}" for i in range(table.shape[0])]
    assert adata.obs[labels_key].dtype == "category"
    assert list(adata.obs[labels_key]) == [str(x) for x in table.index]


@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz"])
def test_round_trip(table, tmp_path, name):
    path = tmp_path / name
    table.to_csv(path)  # pandas compresses .gz by extension
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as f:
            assert f.readline().startswith(",CD3D")
    adata = sv.datasets.read_labeled_csv(path)
    _check(adata, table)
    assert adata.obs["cell_type"].cat.categories.size == 4


def test_str_path_labels_key_and_tsv(table, tmp_path):
    path = tmp_path / "data.tsv"
    table.to_csv(path, sep="\t")
    adata = sv.datasets.read_labeled_csv(str(path), labels_key="label")
    _check(adata, table, labels_key="label")
    # explicit sep gives the same
    explicit = sv.datasets.read_labeled_csv(path, labels_key="label", sep="\t")
    assert (explicit.X != adata.X).nnz == 0


def test_transpose(table, tmp_path):
    path = tmp_path / "genes_by_cells.csv"
    table.T.to_csv(path)  # header = labels (repeated), first column = genes
    adata = sv.datasets.read_labeled_csv(path, transpose=True)
    _check(adata, table)


def test_header_without_index_field(table, tmp_path):
    path = tmp_path / "data.csv"
    lines = [",".join(GENES)] + [
        ",".join([lab, *map(str, row)]) for lab, row in zip(LABELS, table.to_numpy(), strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    _check(sv.datasets.read_labeled_csv(path), table)


def test_float_values_and_numeric_labels(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(",a,b\n1,0.5,2\n2,1,0\n1,3,1e1\n")
    adata = sv.datasets.read_labeled_csv(path)  # not counts: logged, not refused
    np.testing.assert_allclose(adata.X.toarray(), [[0.5, 2], [1, 0], [3, 10]])
    assert list(adata.obs["cell_type"]) == ["1", "2", "1"]


def test_duplicate_genes_made_unique(table, tmp_path):
    path = tmp_path / "data.csv"
    dup = table.copy()
    dup.columns = ["CD3D", "CD3D", "LYZ", "CD3D"]
    dup.to_csv(path)
    with pytest.warns(UserWarning, match="2 gene names .* repeat"):
        adata = sv.datasets.read_labeled_csv(path)
    assert list(adata.var_names) == ["CD3D", "CD3D-1", "LYZ", "CD3D-2"]
    np.testing.assert_array_equal(adata.X.toarray(), table.to_numpy())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sv.datasets.read_labeled_csv(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="directory"):
        sv.datasets.read_labeled_csv(tmp_path)


def test_non_numeric(table, tmp_path):
    path = tmp_path / "data.csv"
    bad = table.astype(object)
    bad.iloc[3, 2] = "abc"
    bad.to_csv(path)
    with pytest.raises(ValueError, match=r"non-numeric value 'abc' in row 'Monocyte' \(data row 3\), column 'LYZ'"):
        sv.datasets.read_labeled_csv(path)


def test_missing_values(table, tmp_path):
    path = tmp_path / "data.csv"
    bad = table.astype(float)
    bad.iloc[1, 0] = np.nan
    bad.to_csv(path)
    with pytest.raises(ValueError, match="missing"):
        sv.datasets.read_labeled_csv(path)


def test_infinite_values(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(",a,b\nx,1,inf\n")
    with pytest.raises(ValueError, match="infinite"):
        sv.datasets.read_labeled_csv(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "empty"), ("\n\n", "empty"), (",a,b\n", "no data"), ("label\nx\ny\n", "no data")],
)
def test_empty(tmp_path, content, match):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        sv.datasets.read_labeled_csv(path)


def test_empty_gz(tmp_path):
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("")
    with pytest.raises(ValueError, match="empty"):
        sv.datasets.read_labeled_csv(path)


def test_header_mismatch(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(",a,b,c,d\nx,1,2\n")
    with pytest.raises(ValueError, match="header has 5 fields"):
        sv.datasets.read_labeled_csv(path)


def test_not_text(tmp_path):
    path = tmp_path / "data.csv.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="Could not read"):
        sv.datasets.read_labeled_csv(path)


def test_bad_arguments(table, tmp_path):
    path = tmp_path / "data.csv"
    table.to_csv(path)
    with pytest.raises(TypeError, match="labels_key"):
        sv.datasets.read_labeled_csv(path, labels_key="")
    with pytest.raises(TypeError, match="sep"):
        sv.datasets.read_labeled_csv(path, sep=1)
