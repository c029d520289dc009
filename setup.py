"""Build hook: the hot paths' modules compiled to C extensions with mypyc.

Everything else about the package is in pyproject.toml. mypyc (part of mypy) turns the
mypy-strict modules below into CPython extension modules with the same behaviour: the HTTP/1.1
core runs twice as fast, the sidecar pair takes about 15 % less CPU a request, an Envoy
access-log record maps to its event about 25 % faster and an event to its ECS document about
20 % (docs/benchmarks.md). The .py files stay the source of truth, and are what runs when the build
is skipped: ``AUDITMESH_PURE=1 pip install -e .``, or, with a warning, when no C compiler is
found.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

# The modules every proxied request goes through, then those every ingested access-log record
# and every exported ECS document goes through; none that they do not (start-up,
# configuration and the CLI gain nothing from being compiled).
NATIVE = [
    "src/auditmesh/proxy/http1.py",
    "src/auditmesh/proxy/http1_events.py",
    "src/auditmesh/proxy/headers.py",
    "src/auditmesh/proxy/paths.py",
    "src/auditmesh/proxy/tracing.py",
    "src/auditmesh/proxy/xfcc.py",
    "src/auditmesh/proxy/routing.py",
    "src/auditmesh/proxy/record.py",
    "src/auditmesh/proxy/http_proxy.py",
    "src/auditmesh/proxy/pool.py",
    "src/auditmesh/ingest/envoy.py",
    "src/auditmesh/export/ecs.py",
]


def _compiler() -> str | None:
    """The C compiler setuptools will call (``$CC``, else ``cc``), if it is installed and
    Python's headers are there to compile against (Debian: python3-dev)."""
    command = os.environ.get("CC", "cc").split()
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(command[0]) if command and headers.is_file() else None


def _drop_compiled(remade: list[str]) -> None:
    """Delete the compiled files in src/ that this build will not make again (`remade`: the
    extensions' module names). A module left there shadows its .py, so one taken out of
    NATIVE (whose shared library, named by a hash of the list, is gone, so it no longer even
    imports) or a pure build (which would run the old compiled code) must not find it."""
    kept = {name.replace(".", "/") for name in remade}
    for found in Path("src").rglob("*.so"):
        if str(found.relative_to("src")).split(".", 1)[0] not in kept:
            found.unlink()


if os.environ.get("AUDITMESH_PURE") == "1":
    _drop_compiled([])
    setup()
elif _compiler() is None:
    print(
        "auditmesh: no C compiler (cc, or $CC) or no Python.h found: installing pure Python, "
        "which works the same but is slower on the sidecar's request path; install gcc and "
        "the Python headers (python3-dev) and reinstall to compile it (AUDITMESH_PURE=1 "
        "silences this)",
        file=sys.stderr,
    )
    _drop_compiled([])
    setup()
else:
    from mypyc.build import mypycify

    extensions = mypycify(NATIVE, opt_level="3")  # C sources only: nothing in src/ yet
    _drop_compiled([extension.name for extension in extensions])
    setup(ext_modules=extensions)
