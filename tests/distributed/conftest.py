"""Distributed tests: marked ``distributed``; skipped with the reason when PostgreSQL, Redis or the Celery
packages are missing, unless ``ESL_REQUIRE_DISTRIBUTED=1`` (``make test-distributed`` sets it), where a
missing piece fails the run instead of hiding behind a skip."""

from __future__ import annotations

import os

import pytest

from tests.distributed.services import missing_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("ESL_REQUIRE_DISTRIBUTED") == "1":
        return  # the test's fixture fails with the reason
    for item in items:
        if item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.skip(reason=reason))
