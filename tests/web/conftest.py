"""The speaking browser shared by the stage's and the sound's page tests: headless Chromium
with its fake microphone, and a page per person."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, FAKE_MEDIA_ARGS, RAW_MICROPHONE


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM}: run `make setup`")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + FAKE_MEDIA_ARGS)
        yield b
        b.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Callable[[str], Page]]:
    """A new page in a browser context of its own (its own sessionStorage, like another
    person's browser); every page must finish without a JavaScript error."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def new_page(url: str, viewport: dict[str, int] | None = None) -> Page:
        context = browser.new_context(viewport=viewport or {"width": 1024, "height": 768})
        context.add_init_script(RAW_MICROPHONE)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(f"{url}: {e}"))
        page.on("console", lambda m: print(f"[{url}] {m.type}: {m.text}"))  # shown when a test fails
        page.goto(url)
        return page

    yield new_page
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the pages: {errors}"
