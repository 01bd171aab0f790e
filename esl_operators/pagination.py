"""Walk a store's ESL pages as an async generator, one page ahead of the consumer.

The legacy script slept a second after every page and stopped at the first failed page as if the
store had ended. Here the next page is already in flight while the caller fetches the current page's
details, a failed page raises (pagination never ends silently), and two server bugs are caught: an
absurd ``total_page`` and a page that repeats the previous one (a loop).

A store can change while it is paged (labels added or removed in the shop). Every page announces
``total_page`` afresh and the walk follows the latest word: it goes on when the store grew onto more
pages (up to ``max_pages``) and stops at the new end when it shrank. :class:`PageWalk` records what
the first page announced and how many pages were walked, for the manifest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from esl_operators.client import EslClient, Page
from esl_operators.exceptions import EslApiError
from esl_operators.settings import default

log = logging.getLogger(__name__)


@dataclass
class PageWalk:
    """A store's page count as the walk saw it (the manifest's ``pages_announced_first``/``pages_walked``).

    ``walked`` counts the pages read that the server counted as part of the store: page 1 of an empty
    store (``total_page`` 0) and a page requested past an end that moved back are not.
    """

    announced_first: int = 0
    walked: int = 0


async def iter_pages(
    client: EslClient,
    store: str,
    *,
    max_pages: int = default("max_pages"),
    walk: PageWalk | None = None,
) -> AsyncGenerator[Page, None]:
    """Yield page 1, 2, ... up to the ``total_page`` the latest page announced."""
    walk = walk if walk is not None else PageWalk()
    page = await client.get_page(store, 1)
    total = walk.announced_first = page.total_pages
    if total > max_pages:
        raise EslApiError(
            client.server,
            f"store {store!r} page 1",
            f"total_page {total} exceeds the cap of {max_pages} pages",
        )
    ahead: asyncio.Task[Page] | None = None
    try:
        while True:
            if page.total_pages != total:
                _changed(client.server, store, page, total, walk.announced_first, max_pages)
                total = page.total_pages
            if page.number <= total:
                walk.walked = page.number
            if page.number < total:
                ahead = asyncio.create_task(client.get_page(store, page.number + 1))
            yield page
            if ahead is None:
                return
            previous, page, ahead = page, await ahead, None
            # A repeat is a loop only while the count stands still: a whole page of labels inserted
            # at the front also repeats the previous page, and the aggregate step drops the duplicates.
            if page.entries and page.entries == previous.entries and page.total_pages == previous.total_pages:
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


def _changed(server: str, store: str, page: Page, before: int, first: int, max_pages: int) -> None:
    """The store moved onto more or fewer pages while it was paged: follow it, or refuse past the cap."""
    if page.total_pages > max_pages:
        raise EslApiError(
            server,
            f"store {store!r} page {page.number}",
            f"total_page grew from {first} (page 1) to {page.total_pages} while the store was paged, "
            f"past the cap of {max_pages} pages (max_pages)",
        )
    log.info(
        "%s: store %r went from %d to %d pages while paged (page %d)",
        server,
        store,
        before,
        page.total_pages,
        page.number,
    )
