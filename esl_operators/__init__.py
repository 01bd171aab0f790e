"""esl-export: Apache Airflow operators that export Hanshow ESL-Working label data to sorted CSVs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["EslAggregateOperator", "EslFetchOperator", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: the simulator and the pure modules must import without loading Airflow.
    if name in ("EslFetchOperator", "EslAggregateOperator"):
        from esl_operators import operators

        return getattr(operators, name)
    raise AttributeError(f"module 'esl_operators' has no attribute {name!r}")
