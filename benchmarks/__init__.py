"""The scripts that measure offline-dt, each writing its page under ``benchmarks/results/``.

Run each from the repository root as a module, after ``pip install -e .``::

    python -m benchmarks.pendulum --preset quick

They import the installed ``offline_dt`` and ``datagen`` and each other as ``benchmarks.<name>``
(no ``sys.path`` edits); the library never imports them (pyproject.toml's import-linter
contracts, run by tests/test_layers.py).
"""
