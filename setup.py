"""Optional compiled build: with SW_BUILD_MYPYC=1 the pure core (worker/core) is compiled
with mypyc, about 20% more events/s per worker process (docs/benchmarks.md, "Compiled core");
without it the package is pure Python. Needs mypy, setuptools>=77 and a C compiler in the build
environment: ``pip install mypy orjson msgspec 'setuptools>=77' wheel`` then
``SW_BUILD_MYPYC=1 pip install --no-build-isolation .``. Everything else is in
pyproject.toml."""

import os

from setuptools import setup

if os.environ.get("SW_BUILD_MYPYC") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(["worker/core"], opt_level="3"))
else:
    setup()
