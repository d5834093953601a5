"""The home page asks for an API key before it creates a Space (docs/keys.md): headless Chromium
against a real node. Without a key, with a wrong or a revoked one, and over the key's rate, the
person reads what to do; a key that worked is kept in localStorage for the next visit."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from playwright.sync_api import Page

from amphi.cli import main
from tests.integration.amphi_proc import AmphiServer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmphiServer]:
    server = AmphiServer(tmp_path_factory.mktemp("index-keys") / "data", None, "--key-rate", "0.05",
                         "--key-burst", "2").start()
    yield server
    server.stop()


def amphi_keys(*args: str) -> str:
    """``amphi keys ...`` in this process, on a thread of its own: playwright's loop holds this one."""
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(CliRunner().invoke, main, ["keys", *args]).result()
    assert done.exit_code == 0, done.output
    return done.stdout.strip()


def submit(page: Page, title: str, key: str | None = None) -> None:
    page.fill("#create-title", title)
    if key is not None:
        page.fill("#create-key", key)
    page.click("form#create button[type=submit]")


def error_text(page: Page, contains: str) -> str:
    page.wait_for_function("(want) => { const e = document.getElementById('create-error');"
                           " return !e.hidden && e.textContent.includes(want); }", arg=contains, timeout=5000)
    return page.text_content("#create-error") or ""


def shoot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_the_home_page_asks_for_a_key_and_keeps_it(node: AmphiServer, page: Page, tmp_path: Path) -> None:
    page.goto(f"{node.url}/")
    assert page.get_attribute("#create-key", "type") == "password"
    assert "amphi keys create" in (page.text_content("form#create") or "")

    # the browser itself refuses an empty key field (required): nothing is sent
    submit(page, "No key")
    assert page.evaluate("document.getElementById('create-key').validity.valueMissing") is True
    assert page.locator("#create-error").is_hidden()

    submit(page, "Wrong key", "amphi_0123456789ab_" + "A" * 43)
    text = error_text(page, "does not know this API key")
    assert "amphi keys create --name NAME" in text
    assert page.evaluate("localStorage.getItem('amphi.apiKey')") is None  # a refused key is not kept
    shoot(page, Path(node.log).parent / "index-refused.png")

    key = amphi_keys("create", "--name", "browser", "--data-dir", str(node.data_dir))
    submit(page, "Made with a key", key)
    page.locator("#created").wait_for(state="visible", timeout=5000)
    space_id = (page.get_attribute("#created-link", "href") or "").rsplit("/", 1)[-1]
    assert node.status(space_id)["title"] == "Made with a key"
    assert page.evaluate("localStorage.getItem('amphi.apiKey')") == key
    shoot(page, Path(node.log).parent / "index-created.png")

    page.reload()  # the next visit: the key is there already
    assert page.input_value("#create-key") == key
    submit(page, "Second")
    page.wait_for_function("document.getElementById('created-link').textContent.length > 0", timeout=5000)
    submit(page, "Third, over the key's burst of 2")
    text = error_text(page, "Too many Spaces created with this key")
    assert "try again in" in text

    key_id = key.split("_")[1]
    amphi_keys("revoke", key_id, "--data-dir", str(node.data_dir))
    page.reload()
    submit(page, "After the revocation")
    text = error_text(page, "was revoked")
    assert page.evaluate("localStorage.getItem('amphi.apiKey')") is None
    shoot(page, Path(node.log).parent / "index-revoked.png")
