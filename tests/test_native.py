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
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = re.findall(r'"(src/auditmesh/[\w/]+\.py)"', (ROOT / "setup.py").read_text("utf-8"))
CC = os.environ.get("CC", "cc").split()
HEADERS = Path(sysconfig.get_paths()["include"], "Python.h")
PURE = (  # as setup.py decides
    os.environ.get("AUDITMESH_PURE") == "1"
    or not CC
    or shutil.which(CC[0]) is None
    or not HEADERS.is_file()
)


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


def _build_in_place(tree: Path, native: list[str], **env: str) -> None:
    """setup.py, made to compile `native`, run as `make native` runs it, in a copy of src/."""
    text = (ROOT / "setup.py").read_text("utf-8")
    listed = "".join(f'    "{source}",\n' for source in native)
    text = re.sub(r"NATIVE = \[\n.*?\]", f"NATIVE = [\n{listed}]", text, flags=re.DOTALL)
    (tree / "setup.py").write_text(text, "utf-8")
    subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
        cwd=tree,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


def _imports_from(tree: Path, module: str) -> str:
    """Where `module` is imported from in a fresh interpreter that sees `tree`/src first."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
        env={**os.environ, "PYTHONPATH": str(tree / "src")},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _copy_with_compiled_pool(tmp_path: Path) -> Path:
    """A checkout whose src/ holds pool.py compiled, as an earlier `make native` left it."""
    tree = tmp_path / "checkout"
    shutil.copytree(ROOT / "src" / "auditmesh", tree / "src" / "auditmesh", ignore=_no_so)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    _build_in_place(tree, ["src/auditmesh/proxy/pool.py", "src/auditmesh/proxy/paths.py"])
    assert _imports_from(tree, "auditmesh.proxy.pool").endswith(SUFFIX)
    return tree


def _no_so(directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name.endswith(".so") or name == "__pycache__"]


SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


@pytest.mark.integration
@pytest.mark.skipif(PURE, reason="AUDITMESH_PURE=1 or no C compiler: nothing is compiled")
def test_a_module_taken_out_of_native_imports_as_python_again(tmp_path: Path) -> None:
    tree = _copy_with_compiled_pool(tmp_path)
    _build_in_place(tree, ["src/auditmesh/proxy/paths.py"])
    assert _imports_from(tree, "auditmesh.proxy.pool").endswith("pool.py")
    assert _imports_from(tree, "auditmesh.proxy.paths").endswith(SUFFIX)


@pytest.mark.integration
@pytest.mark.skipif(PURE, reason="AUDITMESH_PURE=1 or no C compiler: nothing is compiled")
def test_a_pure_build_leaves_no_compiled_module_behind(tmp_path: Path) -> None:
    tree = _copy_with_compiled_pool(tmp_path)
    _build_in_place(tree, ["src/auditmesh/proxy/pool.py"], AUDITMESH_PURE="1")
    assert _imports_from(tree, "auditmesh.proxy.pool").endswith("pool.py")
