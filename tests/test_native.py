"""The mypyc-compiled modules (setup.py's NATIVE): built, up to date, and free of what mypyc
compiles differently from CPython.

A compiled module shadows its .py, so an edit not followed by ``make native`` would leave these
tests running the old code: the staleness check below fails first, naming the module.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = re.findall(r'"(src/auditmesh/[\w/]+\.py)"', (ROOT / "setup.py").read_text("utf-8"))
CC = os.environ.get("CC", "cc").split()
PURE = os.environ.get("AUDITMESH_PURE") == "1" or not CC or shutil.which(CC[0]) is None


def module_name(source: str) -> str:
    return source.removeprefix("src/").removesuffix(".py").replace("/", ".")


def test_setup_lists_modules_that_exist() -> None:
    assert NATIVE, "setup.py's NATIVE list was not found"
    for source in NATIVE:
        assert (ROOT / source).is_file(), f"setup.py compiles {source}, which does not exist"


@pytest.mark.skipif(PURE, reason="AUDITMESH_PURE=1 or no C compiler: pure Python is under test")
@pytest.mark.parametrize("source", NATIVE)
def test_native_module_is_compiled_and_current(source: str) -> None:
    module = importlib.import_module(module_name(source))
    compiled = Path(module.__file__ or "")
    assert compiled.suffix == ".so", f"{module.__name__} is not compiled: run `make native`"
    assert compiled.stat().st_mtime >= (ROOT / source).stat().st_mtime, (
        f"{source} changed after {compiled.name} was built: run `make native`"
    )


def test_no_compiled_module_outlives_its_entry() -> None:
    listed = {str(Path(source).with_suffix("")) for source in NATIVE}
    for found in (ROOT / "src" / "auditmesh").rglob("*.so"):
        stem = str(found.relative_to(ROOT)).split(".", 1)[0]
        assert stem in listed, f"{found} is not in setup.py's NATIVE and shadows its .py: delete it"
    libraries = sorted(path.name for path in (ROOT / "src").glob("*__mypyc.*"))
    assert len(libraries) <= 1, f"shared libraries of several NATIVE lists: {libraries}"


@pytest.mark.parametrize("source", NATIVE)
def test_except_clauses_do_not_reuse_a_name_for_other_types(source: str) -> None:
    """mypyc gives a function's ``except ... as NAME`` one type, the first clause's: a second
    clause binding the same name to another exception type fails at run time with
    "TypeError: X object expected; got Y" (seen in http_proxy's error paths)."""
    tree = ast.parse((ROOT / source).read_text("utf-8"))
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types: dict[str, set[str]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.ExceptHandler) and node.name is not None:
                caught = ast.unparse(node.type) if node.type is not None else "BaseException"
                types.setdefault(node.name, set()).add(caught)
        reused = {name: sorted(caught) for name, caught in types.items() if len(caught) > 1}
        assert not reused, f"{source}:{function.lineno} {function.name}: {reused}"
