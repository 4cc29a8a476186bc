"""grukit.cli: the ``grukit`` command line over the task objects.

One module per subcommand (``text``, ``forecast``, ``charlm``, ``anomaly``); each reads its inputs,
calls a task object from :mod:`grukit.tasks` and renders what it returns. ``main`` builds the parser
and turns a :class:`grukit.errors.GrukitError` into one ``error: ...`` line and exit code 2;
``launch`` re-runs a fit command under ``torch.distributed.run`` for ``--nproc N``. Nothing in
grukit imports this package. Heavy modules (torch, the tasks) are imported inside the commands, so
``grukit --help`` answers at once.
"""
