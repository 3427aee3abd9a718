"""Optional compiled build: with SW_BUILD_MYPYC=1 the pure core (worker/core) is compiled
with mypyc, about 20% more events/s per worker process (docs/benchmarks.md, "Compiled core");
without it the package is pure Python. Needs mypy, setuptools>=77 and a C compiler in the build
environment: ``pip install mypy orjson msgspec pyyaml types-pyyaml 'setuptools>=77' wheel`` then
``SW_BUILD_MYPYC=1 pip install --no-build-isolation .``. Everything else is in
pyproject.toml."""

import os
from pathlib import Path

from setuptools import setup

# Interpreted even here: mypyc would drop its msgspec classes' keyword arguments.
INTERPRETED = {"worker/core/documents.py"}

if os.environ.get("SW_BUILD_MYPYC") == "1":
    from mypyc.build import mypycify

    core = sorted(str(p) for p in Path("worker/core").glob("*.py"))
    setup(ext_modules=mypycify([p for p in core if p not in INTERPRETED], opt_level="3"))
else:
    setup()
