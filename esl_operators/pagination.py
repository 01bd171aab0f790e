"""Walk a store's ESL pages as an async generator, one page ahead of the consumer.

The legacy script slept a second after every page and stopped at the first failed page as if the
store had ended. Here the next page is already in flight while the caller fetches the current page's
details, a failed page raises (pagination never ends silently), and two server bugs are caught: an
absurd ``total_page`` and a page that repeats the previous one (a loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from esl_operators.client import EslClient, Page
from esl_operators.exceptions import EslApiError
from esl_operators.settings import default


async def iter_pages(
    client: EslClient, store: str, *, max_pages: int = default("max_pages")
) -> AsyncGenerator[Page, None]:
    """Yield page 1, then pages 2..``total_page`` as announced by page 1."""
    page = await client.get_page(store, 1)
    total = page.total_pages
    if total > max_pages:
        raise EslApiError(
            client.server,
            f"store {store!r} page 1",
            f"total_page {total} exceeds the cap of {max_pages} pages",
        )
    ahead: asyncio.Task[Page] | None = None
    try:
        while True:
            if page.number < total:
                ahead = asyncio.create_task(client.get_page(store, page.number + 1))
            yield page
            if ahead is None:
                return
            previous, page, ahead = page, await ahead, None
            if page.entries and page.entries == previous.entries:
                raise EslApiError(
                    client.server,
                    f"store {store!r} page {page.number}",
                    f"repeats page {previous.number} (a pagination loop on the server)",
                )
    finally:
        if ahead is not None:
            # The consumer stopped early (capped store, or it failed and is already raising):
            # the page in flight is not wanted, so its outcome is deliberately discarded.
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)
