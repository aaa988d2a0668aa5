"""The ``adamrot`` command (``cli``: the dispatcher) and its subcommands: ``train`` (fit,
validate, test), ``sweep``, ``report``, ``probe``, ``preflight``, ``prepare``, ``demo``. The top
floor: may import every other package of the project."""
