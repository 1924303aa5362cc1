"""The package's structure rules, read from the source (in the spirit of scanpy's ``test_package_structure.py``).

The layers and what each may import are described in ``docs/architecture.md``. That ``lorentz`` and ``nn``
import neither anndata nor spatialdata is checked by running them in a subprocess
(``tests/test_nn.py::test_lorentz_and_nn_import_without_data_libraries``); the rules below read the code.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hyperst"
MODULES = sorted(p for p in SRC.rglob("*.py"))
#: The most lines a module may have, and the most body lines (docstring excluded) of the public fit/predict.
MAX_MODULE_LINES = 400
MAX_PIPELINE_LINES = 80
#: A string that is a whole slot name: ``hyperst_radius``, ``X_hyperst_niche``…
SLOT_NAME = re.compile(r"^(X_)?hyperst_[a-z0-9_]+$")
#: Strings of that shape that are not slot names.
NOT_SLOTS = {
    "hyperst_version": "a field of a model's config.json",
    "hyperst_demo": "the default output folder of `hyperst demo`",
}


def _name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module imported from, names)`` for every import of ``path``, relative ones resolved."""
    here = _name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            out.append((source, [alias.name for alias in node.names]))
    return out


def _layer(module: str) -> str:
    """``hyperst.tl._fit`` -> ``tl``; a root module (``hyperst._model``) is its own layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _ids(paths: list[Path]) -> list[str]:
    return [_name(p) for p in paths]


def _in(layer: str) -> list[Path]:
    return [p for p in MODULES if _layer(_name(p)) == layer]


@pytest.mark.parametrize("path", _in("_data"), ids=_ids(_in("_data")))
def test_data_layer_never_imports_nn(path):
    assert not [m for m, _ in _imports(path) if _layer(m) == "nn" and m.startswith("hyperst")]


@pytest.mark.parametrize("path", _in("pl"), ids=_ids(_in("pl")))
def test_plots_never_import_tools(path):
    assert not [m for m, _ in _imports(path) if _layer(m) == "tl" and m.startswith("hyperst")]


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_private_name_is_imported_from_another_layer(path):
    own = _layer(_name(path))
    bad = [
        f"{source}.{name}"
        for source, names in _imports(path)
        if source.startswith("hyperst") and _layer(source) != own
        for name in names
        if name.startswith("_")
        and name != "__version__"
        and not (SRC / Path(*source.split(".")[1:]) / name).exists()
        and not (SRC / Path(*source.split(".")[1:]) / f"{name}.py").exists()
    ]
    assert not bad, f"{_name(path)} imports private names of another layer: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_module_imports_the_package_root(path):
    if path == SRC / "__init__.py":
        return
    roots = [m for m, names in _imports(path) if m == "hyperst" and names and not all(_submodule(n) for n in names)]
    assert not roots, f"{_name(path)} imports from the package root; import the leaf module instead"


def _submodule(name: str) -> bool:
    return (SRC / f"{name}.py").exists() or (SRC / name / "__init__.py").exists()


def _strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant and every literal piece of an f-string, with its line (docstrings included)."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_slot_names_are_spelled_only_in_constants(path):
    if path.name == "_constants.py":
        return
    found = [f"line {line}: {t!r}" for line, t in _strings(path) if SLOT_NAME.match(t) and t not in NOT_SLOTS]
    assert not found, f"{_name(path)} spells slot names (use `hyperst._constants`): {found}"


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_wrong_value_messages_come_from_validation(path):
    if path.name == "_validation.py":
        return
    found = [f"line {line}: {text[:60]!r}" for line, text in _strings(path) if text.startswith("Expected")]
    assert not found, f"{_name(path)} phrases 'Expected …' itself (use `hyperst._validation`): {found}"


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_module_is_too_long(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{_name(path)} has {n} lines; split it (at most {MAX_MODULE_LINES})"


@pytest.mark.parametrize(("file", "function"), [("tl/_fit.py", "fit"), ("tl/_predict.py", "predict")])
def test_fit_and_predict_read_like_the_users_steps(file, function):
    tree = _tree(SRC / file)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body  # without the docstring
    n = body[-1].end_lineno - body[0].lineno + 1
    assert n <= MAX_PIPELINE_LINES, f"`{function}` has {n} body lines; move steps into named functions"


def test_the_rules_see_violations(tmp_path, monkeypatch):
    """Each rule fails on a module that breaks it (so that a passing run means something)."""
    bad = tmp_path / "hyperst" / "pl" / "_bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "from ..tl._evaluate import _pearson\nfrom .. import __version__, settings\n"
        "KEY = 'hyperst_radius'\nMSG = f'Expected `x` to be {1}'\n" + "x = 1\n" * 400
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "hyperst")
    _tree.cache_clear()
    for rule in (
        test_plots_never_import_tools,
        test_no_private_name_is_imported_from_another_layer,
        test_no_module_imports_the_package_root,
        test_slot_names_are_spelled_only_in_constants,
        test_wrong_value_messages_come_from_validation,
        test_no_module_is_too_long,
    ):
        with pytest.raises(AssertionError):
            rule(bad)
    _tree.cache_clear()


#: "Pass `name=`" in a message: the option it suggests.
HINT = re.compile(r"[Pp]ass `(\w+)=")


def _public_parameters() -> set[str]:
    """Every keyword a user can pass: public functions' parameters and the config fields ``fit`` takes."""
    import dataclasses
    import inspect

    import hyperst as hst

    names: set[str] = set()
    callables = [getattr(m, n) for m in (hst.pp, hst.tl, hst.pl, hst.datasets, hst.nn) for n in m.__all__]
    callables += [hst.HyperST.load, hst.HyperST.save]
    for obj in callables:
        if callable(obj) and not dataclasses.is_dataclass(obj):
            names |= set(inspect.signature(obj).parameters)
    for cls in (hst.HyperSTConfig, hst.nn.ModuleConfig):
        names |= {f.name for f in dataclasses.fields(cls)}
    return names


def test_every_pass_this_hint_names_an_option_that_exists():
    known = _public_parameters()
    wrong = [
        f"{_name(path)} line {line}: `{hint}=`"
        for path in MODULES
        for line, text in _strings(path)
        for hint in HINT.findall(text)
        if hint not in known
    ]
    assert not wrong, f"messages suggest options no public function takes: {wrong}"
