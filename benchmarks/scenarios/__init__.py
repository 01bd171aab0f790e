"""One module per benchmark scenario, each with ``run(bench: Bench) -> Scenario`` (``benchmarks.bench``).

A new scenario is a new module here plus one line in ``SCENARIOS`` of ``benchmarks/run.py``.
"""
