"""Browser tests: marked ``ui``, skipped with the reason when Chromium or Playwright is missing."""

from __future__ import annotations

import pytest

from tests.ui.harness import chromium_missing_reason


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ui: drives a real api-server with headless Chromium (make test-ui)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = chromium_missing_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("ui"):
            item.add_marker(pytest.mark.skip(reason=reason))
