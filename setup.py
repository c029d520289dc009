"""Build hook: the request path's modules compiled to C extensions with mypyc.

Everything else about the package is in pyproject.toml. mypyc (part of mypy) turns the
mypy-strict modules below into CPython extension modules with the same behaviour, about twice
as fast on the sidecar's per-request work (docs/benchmarks.md); the .py files stay the source
of truth and are what runs when the build is skipped: ``AUDITMESH_PURE=1 pip install -e .``
(for a machine without a C compiler).
"""

from __future__ import annotations

import os

from setuptools import setup

# One concept per line: the modules every proxied request goes through, and none that it
# does not (start-up, configuration and the CLI gain nothing from being compiled).
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
]

if os.environ.get("AUDITMESH_PURE") == "1":
    setup()
else:
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(NATIVE, opt_level="3"))
