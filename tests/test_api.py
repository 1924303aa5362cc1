"""scanpy-style convention checks over every public function (scanpy's ``tests/test_package_structure.py``)."""

from __future__ import annotations

import inspect
import re

import pytest

import hyperst as hst

MODULES = ["pp", "tl", "pl", "datasets"]
#: Public functions whose first argument is not the data, and what it is instead.
FIRST_PARAMETER = {"pl.history": "model"}
FUNCS = [
    pytest.param(getattr(getattr(hst, mod), name), id=f"{mod}.{name}")
    for mod in MODULES
    for name in getattr(hst, mod).__all__
]


def _documented_params(func) -> list[str]:
    doc = inspect.getdoc(func) or ""
    match = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, flags=re.S)
    assert match, f"{func.__qualname__} has no numpydoc Parameters section"
    names = []
    for line in match.group(1).splitlines():
        if line and not line.startswith(" "):
            names += [n.strip().lstrip("*") for n in line.split(":")[0].split(",")]
    return names


@pytest.mark.parametrize("func", FUNCS)
def test_docstring_parameters_match_signature(func):
    sig = list(inspect.signature(func).parameters)
    assert _documented_params(func) == sig


@pytest.mark.parametrize("func", FUNCS)
def test_positional_and_keyword_only_conventions(func):
    params = inspect.signature(func).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 3
    for p in params:
        if p.name in ("inplace", "key_added", "table_key", "image_key", "shapes_key"):
            assert p.kind is p.KEYWORD_ONLY, p.name


@pytest.mark.parametrize("func", [f for f in FUNCS if not f.id.startswith("datasets.")])
def test_first_parameter_is_the_data(request, func):
    first = next(iter(inspect.signature(func).parameters))
    expected = FIRST_PARAMETER.get(request.node.callspec.id)
    assert (first == expected) if expected else (first in ("sdata", "adata"))


@pytest.mark.parametrize("func", [f for f in FUNCS if f.id.startswith("pl.")])
def test_plot_functions_take_ax_and_show_but_not_save(func):
    params = inspect.signature(func).parameters
    for name in ("ax", "show"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None
    assert "save" not in params


@pytest.mark.parametrize("func", FUNCS)
def test_return_annotation_present(func):
    assert inspect.signature(func).return_annotation is not inspect.Signature.empty


def test_all_lists_no_private_names():
    for mod in [hst, *(getattr(hst, m) for m in MODULES)]:
        assert all(not n.startswith("_") or n == "__version__" for n in mod.__all__)
        for name in mod.__all__:
            assert hasattr(mod, name)
