"""The rotation engine, pure PyTorch (docs/ROTATIONS.md, docs/CONVENTIONS.md §1–§6): sampling
(``sampling``, ``stacks``, ``svd``), parameter layouts (``layout``), the scopes and their
registry (``scopes/``), ``RotatedOptimizer`` (``optimizer``), the optimizer zoo (``zoo/``) and
the probe library (``probes/``). May import only torch and the standard library
(tests/test_layering.py)."""
