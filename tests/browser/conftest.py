"""Playwright driving Debian's Chromium against pytest-django's live server.

- The browser is the system Chromium (`/usr/bin/chromium`); `playwright install` is not used.
- Playwright's sync API runs an event loop in this thread, so Django's async-safety guard would
  refuse the test's own ORM calls: DJANGO_ALLOW_ASYNC_UNSAFE=true for this process only.
- Every page a test opens fails the test on a JavaScript console error, an uncaught exception or a
  Content-Security-Policy violation.
- Screenshots go to $SCREENSHOT_DIR (default test-artifacts/screenshots).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from playwright.sync_api import expect

# The machines running CI and the demo are shared: give server round trips room before failing.
expect.set_options(timeout=10_000)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = Path(os.environ.get("SCREENSHOT_DIR") or ROOT / "test-artifacts" / "screenshots")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    path = chromium_path()
    if path is None:
        from tests.conftest import require_service

        require_service("Chromium", False, "apt-get install chromium")
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": DESKTOP, "accept_downloads": True, "locale": "en-US"}


@pytest.fixture(autouse=True)
def _fresh_login_budget() -> None:
    # The login view allows 10 POSTs a minute per address; every browser test logs in from 127.0.0.1.
    from django.core.cache import cache

    cache.clear()


class ConsoleWatch:
    """Collects console errors and uncaught exceptions of every page in a browser context."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attach(self, page: Any) -> Any:
        # A Content-Security-Policy violation fails the test too (issue 17), even one the browser
        # reports only as an event: re-raise it as a console error. Init scripts are not subject to CSP.
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', function (e) {"
            " console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline')); });"
        )
        page.on(
            "console",
            lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text} ({page.url})"),
        )
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc} ({page.url})"))
        return page


@pytest.fixture
def console() -> Iterator[ConsoleWatch]:
    watch = ConsoleWatch()
    yield watch
    assert not watch.errors, "JavaScript errors in the browser:\n" + "\n".join(watch.errors)


@pytest.fixture
def ui(page: Any, console: ConsoleWatch, live_server: Any) -> Any:
    """The default page, watched for console errors, with ``ui.url(path)`` on the live server."""
    console.attach(page)
    page.set_default_timeout(10_000)
    page.base = live_server.url
    return page


@pytest.fixture
def new_user_page(
    new_context: Callable[..., Any], console: ConsoleWatch, live_server: Any
) -> Callable[[], Any]:
    """A second, independent browser session (another user), also watched for console errors."""

    def make(**kwargs: Any) -> Any:
        context = new_context(**kwargs)
        page = console.attach(context.new_page())
        page.set_default_timeout(10_000)
        page.base = live_server.url
        return page

    return make


def login(page: Any, username: str, password: str) -> None:
    page.goto(page.base + "/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(page.base + "/")


A11Y_PROBLEMS_JS = """() => {
  const problems = [];
  const h1 = document.querySelectorAll('h1');
  if (h1.length !== 1) problems.push(`${h1.length} <h1> elements`);
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden' || el.closest('.modebar') || el.offsetParent === null) continue;
    const named = (el.labels && el.labels.length) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
    if (!named) problems.push(`unlabelled ${el.tagName.toLowerCase()} name=${el.name}`);
  }
  for (const el of document.querySelectorAll('button, a[href]')) {
    if (el.closest('.modebar') || el.offsetParent === null) continue;
    if (!(el.textContent.trim() || el.getAttribute('aria-label') || el.getAttribute('title')))
      problems.push(`nameless ${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 80)}`);
  }
  for (const img of document.querySelectorAll('img:not([alt])')) problems.push(`img without alt ${img.src}`);
  return problems;
}"""


def assert_accessible(page: Any) -> None:
    """Basic checks on our pages: one h1, every form control labelled, links/buttons named, alt text."""
    problems = page.evaluate(A11Y_PROBLEMS_JS)
    assert not problems, f"accessibility problems on {page.url}: {problems}"


def snap(page: Any, name: str, *, full_page: bool = True, check: bool = True) -> Path:
    """Screenshot into $SCREENSHOT_DIR, after the basic accessibility checks (our pages only)."""
    if check:
        assert_accessible(page)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
