"""Walk a store's ESL pages as an async generator, one page ahead of the consumer.

The legacy script slept a second after every page and stopped at the first failed page as if the
store had ended. Here the next page is already in flight while the caller fetches the current page's
details, and a failed page raises: pagination never ends silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from esl_operators.client import EslClient, Page


async def iter_pages(client: EslClient, store: str) -> AsyncIterator[Page]:
    """Yield page 1, then pages 2..``total_page`` as announced by page 1."""
    page = await client.get_page(store, 1)
    total = page.total_pages
    number = 1
    ahead: asyncio.Task[Page] | None = None
    try:
        while True:
            if number < total:
                ahead = asyncio.create_task(client.get_page(store, number + 1))
            yield page
            if ahead is None:
                return
            page, ahead = await ahead, None
            number += 1
    finally:
        if ahead is not None:
            # The consumer stopped early (capped store, or it failed and is already raising):
            # the page in flight is not wanted, so its outcome is deliberately discarded.
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)
