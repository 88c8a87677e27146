"""Scanpy's signature conventions (scanpy ``tests/test_package_structure.py::test_sig_conventions``), for our API."""

from __future__ import annotations

import subprocess
import sys
from inspect import Parameter, signature

import pytest
from anndata import AnnData

import scvgae_sc as sv

API_MODULES = {"sv.pp": sv.pp, "sv.tl": sv.tl, "sv.pl": sv.pl, "sv.datasets": sv.datasets}

API_FUNCTIONS = [
    pytest.param(func, f"{mod_name}.{name}", id=f"{mod_name}.{name}")
    for mod_name, mod in API_MODULES.items()
    for name in sorted(mod.__all__)
    if callable(func := getattr(mod, name)) and func.__module__.startswith("scvgae_sc.")
]


def _is_positional(p: Parameter) -> bool:
    return p.kind in {Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD}


def test_api_is_not_empty():
    names = {p.id for p in API_FUNCTIONS}
    for expected in ("sv.pp.filter", "sv.pp.normalize", "sv.pp.cell_graph", "sv.pp.mask_dropouts", "sv.tl.impute"):
        assert expected in names


@pytest.mark.parametrize(("f", "qualname"), API_FUNCTIONS)
def test_sig_conventions(f, qualname):
    sig = signature(f)
    n_pos = sum(1 for p in sig.parameters.values() if _is_positional(p))
    assert n_pos <= 3, f"{qualname}: public functions should have <= 3 positional parameters"

    first = next(iter(sig.parameters.values()), None)
    if first is None:
        return
    if first.name == "adata":
        assert first.annotation in {"AnnData", AnnData}, f"{qualname}: annotate `adata: AnnData`"
    elif first.name in {"filename", "path"}:
        assert first.annotation == "PathLike[str] | str", qualname

    if (copy_param := sig.parameters.get("copy")) is not None:
        assert first.name == "adata"
        assert copy_param.default is False, f"{qualname}: copy defaults to False"
        assert not _is_positional(copy_param), f"{qualname}: copy is keyword-only"
        expected = "AnnData | None"
        if "return_model" in sig.parameters:  # tl.impute: the model instead of None, or (copy, model)
            expected = "AnnData | ImputationModel | tuple[AnnData, ImputationModel] | None"
        assert sig.return_annotation == expected, f"{qualname}: functions with copy return {expected}"


@pytest.mark.parametrize(("f", "qualname"), API_FUNCTIONS)
def test_has_numpydoc_docstring(f, qualname):
    doc = f.__doc__ or ""
    assert doc.strip(), f"{qualname} has no docstring"
    params = [
        name
        for name, p in signature(f).parameters.items()
        if p.kind not in (Parameter.VAR_POSITIONAL, Parameter.VAR_KEYWORD)
    ]
    if params:
        assert "Parameters\n" in doc, f"{qualname}: numpydoc Parameters section missing"
        for name in params:
            assert f"\n    {name}\n" in doc or f"\n    {name}," in doc or f", {name}\n" in doc, (
                f"{qualname}: parameter {name!r} is not documented"
            )


def test_random_state_convention():
    """Every public function that draws takes ``random_state`` with default 0 (scanpy's name)."""
    for p in API_FUNCTIONS:
        f, qualname = p.values
        sig = signature(f)
        for bad in ("seed", "random_seed", "rng"):
            assert bad not in sig.parameters, f"{qualname}: call it random_state"
        if "random_state" in sig.parameters:
            assert sig.parameters["random_state"].default == 0, qualname


def test_version():
    assert isinstance(sv.__version__, str) and sv.__version__[0].isdigit()


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "scvgae_sc.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert sv.__version__ in out.stdout
