"""Development support for paramdelta's tests, benchmarks and scripts (not shipped in the wheel).

One home for what tests/, bench/ and scripts/ share, so none of them edits ``sys.path`` to reach
another: model builders (``tiny_models``, ``llama``, ``minilm``), processes and services (``ports``,
``serve``, ``services``, ``scaleout``, ``distribution``, ``held``), artifacts under other names
(``renamed``), report writing (``report``, ``machine``) and shared assertions (``assertions``).

It is importable from the repository root: pytest puts the root on ``sys.path``
(``[tool.pytest.ini_options] pythonpath``), benchmarks run as ``python -m bench.NAME`` and
scripts as ``python -m scripts.NAME`` from the root.
"""
