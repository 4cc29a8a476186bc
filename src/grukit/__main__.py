"""``python -m grukit ...`` is the ``grukit`` command line (the console script's ``grukit.cli.main``).

An entry point like the console script, not a module of the library: it is the one file besides
``cli`` itself that may import ``cli`` (tests/test_layering.py exempts it)."""

import sys

from grukit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
