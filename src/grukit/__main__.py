"""``python -m grukit ...`` is the ``grukit`` command line (``grukit.cli.main``, also the console script).

An entry point, like the console script, rather than a module of the package: it runs
``grukit.cli.main`` as ``__main__`` instead of importing it, so no grukit module imports ``cli``
(tests/test_layering.py)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("grukit.cli.main", run_name="__main__", alter_sys=True)
