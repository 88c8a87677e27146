"""Sphinx configuration of the scvgae-sc documentation.

Build from the repository root (README, section "Documentation")::

    sphinx-build -W --keep-going -b html docs docs/_build/html

What happens at build start, before Sphinx reads a page (all of it below, in this file):

* the package is imported from *this* source tree (its parent folder goes first on ``sys.path`` and on the
  ``PYTHONPATH`` that the notebook kernels inherit), so the docs describe the code they are built with;
* ``tutorials/*.md`` (the tutorial sources, jupytext MyST notebooks) are copied into ``docs/tutorials/``, which
  myst-nb executes (see "Tutorials" below);
* the Benchmarks page's tables are generated from ``benchmarks/results/summary.json`` (see "Benchmarks");
* intersphinx inventories are fetched, once a day, into ``docs/_build/.intersphinx/`` -- or left out when the
  network cannot be reached (see "Cross-references" below).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
import urllib.request
import warnings
from datetime import datetime
from pathlib import Path

from sphinx.util import logging

# sphinx-autodoc-typehints 3.6 calls an API Sphinx 9 deprecated; the Python warning is noise in the build log
warnings.filterwarnings("ignore", message=r".*set_application.* is deprecated", module="sphinx_autodoc_typehints")

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "_build"

# -- The package: always this source tree -------------------------------------------------------------------
# An installed copy elsewhere (e.g. an editable install of another checkout) must not be documented instead;
# notebook kernels are separate processes and see the tree through PYTHONPATH.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
# Kernels draw figures inline only if MPLBACKEND is unset (ipykernel sets its inline backend then). CI exports
# MPLBACKEND=Agg for the tests, which would leave the tutorials without figures.
os.environ.pop("MPLBACKEND", None)
# With OMP_NUM_THREADS=1 (a machine shared with others), numba (UMAP, pynndescent) still starts one OpenMP thread
# per core, and its OpenMP layer raises the process-wide OpenMP thread count that torch uses as well: a
# tutorial's training after a UMAP ran ~5x slower on a busy 2-core machine. Make numba follow OMP_NUM_THREADS.
if os.environ.get("OMP_NUM_THREADS"):
    os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import scvgae_sc  # noqa: E402

# -- Project information ------------------------------------------------------------------------------------
project = "scvgae-sc"
author = "scvgae-sc developers"
copyright = f"{datetime.now():%Y}, {author}"
release = scvgae_sc.__version__
version = release

# -- General configuration ----------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # Markdown pages and executed notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # numpydoc docstrings; must come before sphinx_autodoc_typehints
    "sphinx_autodoc_typehints",  # types from the signatures (docstrings carry none)
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
# `None`, `copy=False`: single backticks in docstrings are code, as in Scanpy.
default_role = "literal"
pygments_style = "default"

# Unresolved Python cross-references (e.g. to a project whose inventory could not be fetched) render as plain
# code and are not warnings: nitpicky stays off, so an offline build passes with -W. Internal references (:doc:,
# {ref}, toctree entries, includes) still warn and fail the build.
nitpicky = False
suppress_warnings: list[str] = []

# -- Autodoc / autosummary / napoleon -----------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_param = True
napoleon_use_rtype = True
# Scanpy-style "Returns" sections are prose ("Returns `None` if `copy=False`, else ...") followed by a definition
# list of the fields set; napoleon's default parser would read the first line as a type. A plain section keeps
# the prose; the return type comes from the signature (sphinx_autodoc_typehints).
napoleon_custom_sections = ["Returns"]
typehints_defaults = "braces"
typehints_use_signature = False
typehints_use_signature_return = False
always_use_bars_union = True

# The example figure of each plotting function is shown on its API page (docs/_templates/autosummary/function.rst).
PL_FIGURES = sorted(p.stem.removeprefix("pl_") for p in (HERE / "_static").glob("pl_*.png"))
autosummary_context = {"pl_figures": PL_FIGURES}

# -- MyST / myst-nb -----------------------------------------------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image"]
myst_heading_anchors = 3
myst_url_schemes = ("http", "https", "mailto")
# Tutorials: executed during the build. "cache": a notebook runs again only when its code changes (jupyter-cache
# keyed on the code cells), so a rebuild after a text edit is quick. A failing cell fails the build.
nb_execution_mode = os.environ.get("SCVGAE_SC_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(BUILD / ".jupyter_cache")
nb_execution_timeout = 900  # seconds per cell; each tutorial takes < 3 min of CPU on one core
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_excludepatterns = ["_generated/*"]
nb_merge_streams = True
# Logging and progress bars (stderr) are noise in a rendered tutorial; printed results (stdout) stay.
nb_output_stderr = "remove"

# -- HTML ---------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "scvgae-sc"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": "https://github.com/scvgae-sc/scvgae-sc",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sphinx = False


# -- Tutorials: tutorials/*.md -> docs/tutorials/ ------------------------------------------------------------
# The sources live in the top-level tutorials/ folder (where users find and open them: jupytext MyST notebooks
# that Jupyter opens as notebooks). Sphinx reads only below docs/, so they are copied here (git-ignored). A copy,
# not a symlink or an {include}: includes are not executed, and symlinks break on Windows and in some archives.
# Files are rewritten only when their content changed, so an unchanged tutorial is not re-read by Sphinx.
def _sync_tutorials() -> None:
    src, dst = ROOT / "tutorials", HERE / "tutorials"
    dst.mkdir(exist_ok=True)
    sources = {p.name: p for p in src.glob("*.md")}
    for stale in dst.glob("*.md"):
        if stale.name not in sources:
            stale.unlink()
    for name, path in sources.items():
        target = dst / name
        if not target.exists() or target.read_bytes() != path.read_bytes():
            shutil.copyfile(path, target)


_sync_tutorials()


# -- Benchmarks: tables from benchmarks/results/summary.json ------------------------------------------------
# The Benchmarks page (docs/benchmarks.md) is written by hand; its methods x datasets tables are generated from
# the canonical summary by benchmarks/tables.py (the same code that prints the README's headline table) into
# _generated/benchmark_tables.md, git-ignored and rewritten only when its content changes.
def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _write_benchmark_tables() -> None:
    import importlib.util

    generated = HERE / "_generated"
    generated.mkdir(exist_ok=True)
    spec = importlib.util.spec_from_file_location("_scvgae_sc_bench_tables", ROOT / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    if tables.SUMMARY.is_file():
        text = tables.page_tables(tables.load())
    else:
        text = "No summary yet: `python benchmarks/summary.py` writes `benchmarks/results/summary.json`.\n"
    _write_if_changed(generated / "benchmark_tables.md", text)
    if tables.DENOISE_SUMMARY.is_file():
        text = tables.denoising_table(tables.load_denoising()) + "\n"
    else:
        text = "No denoising summary yet: `python benchmarks/summary.py --denoising ...` writes it.\n"
    _write_if_changed(generated / "denoising_table.md", text)
    # pages of an earlier layout (one per results file) must not linger in a source tree that was built before
    stale = HERE / "benchmark_results"
    if stale.is_dir():
        shutil.rmtree(stale)


_write_benchmark_tables()

# -- Cross-references (intersphinx) -------------------------------------------------------------------------
# Links to the documentation of the projects we build on must work for readers online, but the build must never
# depend on the network (there is none in CI). So Sphinx's intersphinx never fetches anything itself: every
# project points at a local inventory file --
#   1. docs/_inv/<name>.inv if someone vendored it (checked in; none is, as of writing), else
#   2. docs/_build/.intersphinx/<name>.inv, fetched here with a short timeout and reused for a day,
# and a project with neither is left out (its references then render as plain code; nitpicky is off, so no
# warning). SCVGAE_SC_DOCS_OFFLINE=1 skips all fetching; =0 fetches without first probing the network; unset, a
# 2-second connection probe decides. Fetch failures are logged, never warnings: they cannot fail a -W build.
INTERSPHINX = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "scipy": "https://docs.scipy.org/doc/scipy",
    "pandas": "https://pandas.pydata.org/docs",
    "matplotlib": "https://matplotlib.org/stable",
    "anndata": "https://anndata.readthedocs.io/en/stable",
    "scanpy": "https://scanpy.readthedocs.io/en/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
    "torch_geometric": "https://pytorch-geometric.readthedocs.io/en/latest",
}
_INV_MAX_AGE_S = 24 * 3600
_NET_TIMEOUT_S = 2.0


def _online() -> bool:
    flag = os.environ.get("SCVGAE_SC_DOCS_OFFLINE", "").strip().lower()
    if flag in ("1", "true", "yes"):
        return False
    if flag in ("0", "false", "no"):
        return True
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(("docs.python.org", 443), timeout=_NET_TIMEOUT_S):
                ok.append(True)
        except OSError:
            pass

    # in a thread: name resolution ignores socket timeouts and can hang on a box without a network
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(_NET_TIMEOUT_S + 0.5)
    return bool(ok)


def _fetch_inventories(names: list[str], cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> None:
        target = cache / f"{name}.inv"
        try:
            with urllib.request.urlopen(f"{INTERSPHINX[name]}/objects.inv", timeout=5) as r:  # noqa: S310
                data = r.read()
            if not data.startswith(b"# Sphinx inventory version"):
                raise ValueError("not a Sphinx inventory")
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        except Exception as err:  # noqa: BLE001 -- any failure: keep the old copy or leave the project out
            logger.info(f"intersphinx: could not fetch {name}'s inventory ({err})")

    threads = [threading.Thread(target=fetch, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def _intersphinx_mapping() -> dict[str, tuple[str, str]]:
    vendored, cache = HERE / "_inv", BUILD / ".intersphinx"
    stale = [
        n
        for n in INTERSPHINX
        if not (vendored / f"{n}.inv").is_file()
        and not ((cache / f"{n}.inv").is_file() and time.time() - (cache / f"{n}.inv").stat().st_mtime < _INV_MAX_AGE_S)
    ]
    if stale:
        if _online():
            _fetch_inventories(stale, cache)
        else:
            logger.info("intersphinx: offline, no inventory fetched (cross-references to other projects stay plain)")
    mapping = {}
    for name, url in INTERSPHINX.items():
        for inv in (vendored / f"{name}.inv", cache / f"{name}.inv"):
            if inv.is_file():
                mapping[name] = (url, str(inv))
                break
    missing = sorted(set(INTERSPHINX) - set(mapping))
    if missing:
        logger.info(f"intersphinx: no inventory for {', '.join(missing)}")
    return mapping


intersphinx_mapping = _intersphinx_mapping()
intersphinx_timeout = 5  # never used for fetching (all inventories are local files); a guard all the same


# -- Links to files of the repository that are not pages ----------------------------------------------------
# README.md and CHANGELOG.md are written for GitHub, where a link like [benchmarks/README.md](benchmarks/README.md)
# opens the file. In the docs such a target is not a page, and MyST would warn (an error under -W). Links whose
# target is an existing file of the repository (relative to the page or to the repository root) become links to
# that file in the repository online; links to pages (e.g. tutorials/quickstart.md) resolve as usual.
REPOSITORY_URL = html_theme_options["repository_url"]


def setup(app):  # noqa: D103 -- Sphinx extension hook
    from docutils import nodes
    from sphinx import addnodes
    from sphinx.transforms.post_transforms import SphinxPostTransform

    class RepositoryFileLinks(SphinxPostTransform):
        default_priority = 8  # before MyST's reference resolver (9), which would warn

        def run(self, **kwargs) -> None:
            for node in list(self.document.findall(addnodes.pending_xref)):
                target = node.get("reftarget", "")
                if node.get("reftype") != "myst" or not target or ":" in target:
                    continue
                # A link to a Markdown file reaches here as a "doc" reference (without the suffix): it stays one
                # when the file is a page of the documentation, else it becomes a link to the repository's file.
                domain = node.get("refdomain")
                if domain not in (None, "", "doc"):
                    continue
                suffixes = ("", ".md") if domain == "doc" else ("",)
                path, _, anchor = target.partition("#")
                bases = [Path(node.source).parent] if node.source else []
                for base, suffix in ((b, s) for b in [*bases, ROOT] for s in suffixes):
                    file = (base / (path + suffix)).resolve()
                    if not (file.is_file() and file.is_relative_to(ROOT)):
                        continue
                    page = HERE / file.relative_to(ROOT)  # e.g. tutorials/*.md, copied into docs/ at build start
                    if domain == "doc" and (file.is_relative_to(HERE) or page.is_file()):
                        break  # a documentation page: MyST resolves it
                    uri = f"{REPOSITORY_URL}/blob/main/{file.relative_to(ROOT).as_posix()}"
                    ref = nodes.reference("", "", *node.children, refuri=uri + (f"#{anchor}" if anchor else ""))
                    node.replace_self(ref)
                    break

    app.add_post_transform(RepositoryFileLinks)
