"""Published text describes the product, not how it was developed.

README, CHANGELOG, the documentation's own pages and the tutorials may not cite work periods ("session 8"),
design documents or "the contract"; the package source (code, comments, messages, docstrings) also may not
point users at repository result files (``benchmarks/results/``), which are not shipped.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Globs, relative to the repository root, of the published text. ``docs/*.md`` is the hand-written pages only:
#: the build's generated folders (``docs/_generated``, ``docs/tutorials``, ``docs/generated``) lie below it.
SCANNED = ["README.md", "CHANGELOG.md", "docs/*.md", "tutorials/*.md", "scvgae_sc/**/*.py"]

#: Forbidden in the shipped package only.
PACKAGE_ONLY = [("a repository result file", re.compile(r"benchmarks/results"))]

#: (name, pattern) of what published text must not say.
FORBIDDEN = [
    ("a work period", re.compile(r"\bsession\s*\d+", re.IGNORECASE)),
    ("a design document", re.compile(r"\bDESIGN\b")),
    ("the contract", re.compile(r"\bthe contract\b", re.IGNORECASE)),
]


def _files() -> list[Path]:
    return sorted({p for pattern in SCANNED for p in ROOT.glob(pattern) if p.is_file()})


def test_scanned_files_exist():
    names = {p.relative_to(ROOT).as_posix() for p in _files()}
    assert {"README.md", "CHANGELOG.md", "docs/index.md", "docs/benchmarks.md"} <= names
    assert any(n.startswith("tutorials/") for n in names)
    assert "scvgae_sc/tl/_impute.py" in names


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_development_history(path: Path):
    hits = []
    rules = FORBIDDEN + (PACKAGE_ONLY if path.suffix == ".py" else [])
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for name, pattern in rules:
            if m := pattern.search(line):
                hits.append(f"{path.relative_to(ROOT).as_posix()}:{lineno}: {name} ({m.group(0)!r}): {line.strip()}")
    assert not hits, "published text cites development history:\n" + "\n".join(hits)


def _tables():
    """``benchmarks/tables.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("_bench_tables", ROOT / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    return tables


@pytest.mark.parametrize("which", ["headline", "denoising"])
def test_readme_tables_match_results(which):
    """README's figures are the output of ``benchmarks/tables.py`` (``--denoising``) on the canonical summaries."""
    tables = _tables()
    if which == "headline":
        expected = tables.headline(tables.load())
    else:
        expected = tables.denoising_table(tables.load_denoising())
    assert expected in (ROOT / "README.md").read_text(encoding="utf-8"), (
        f"README's {which} table differs from `python benchmarks/tables.py`; paste its output into README.md"
    )
