"""The built book in headless Chromium: no console error, no failed or external request, math typeset, widgets live.

Uses Debian's Chromium through Playwright's Python package (no browser download). Without
Chromium the tests fail in CI and are skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from urllib.parse import urlparse

import pytest

from conftest import BOOK

pytestmark = pytest.mark.browser
CHAPTERS = [nb.stem for nb in sorted(BOOK.glob("*.ipynb"))]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium is not installed: install Debian's 'chromium' package (scripts/test does so when run as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


@pytest.fixture(scope="module")
def server(built_book):
    handler = functools.partial(QuietHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_of(browser, server):
    """Open a chapter; return the page and the problems seen while it loaded."""
    contexts = []

    def open_page(name: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
        page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

        def off_site(route):
            problems.append(f"request left the book: {route.request.url}")
            route.abort()

        page.route(lambda url: urlparse(url).hostname not in ("127.0.0.1", None), off_site)
        page.goto(f"{server}/book/{name}.html", wait_until="load")
        return page, problems

    yield open_page
    for context in contexts:
        context.close()


@pytest.mark.parametrize("name", CHAPTERS)
def test_page_loads_cleanly_and_typesets_math(page_of, name):
    page, problems = page_of(name)
    display_math = page.locator("div.math").count()
    if display_math:
        page.wait_for_function("document.querySelectorAll('div.math mjx-container').length > 0", timeout=20_000)
        untypeset = page.evaluate("[...document.querySelectorAll('div.math')].filter(d => !d.querySelector('mjx-container')).length")
        assert untypeset == 0, f"{untypeset} of {display_math} display equations were not typeset"
    page.wait_for_timeout(500)
    assert problems == []


def visible_frame(widget) -> str:
    """Identity of the frame the widget shows now: the visible image's data, or the visible HTML."""
    return widget.evaluate(
        """el => {
            const shown = [...el.querySelectorAll('img, .widget-html-content')].filter(n => n.offsetParent !== null);
            return shown.map(n => n.src || n.innerHTML).join('|');
        }"""
    )


def move(page, control) -> None:
    """Move one control a step: a slider's handle one key press, a dropdown to another option."""
    select = control.locator("select")
    if select.count():
        options = select.locator("option")
        current = select.evaluate("s => s.selectedIndex")
        select.select_option(index=(current + 1) % options.count())
    else:
        handle = control.locator(".noUi-handle").first
        handle.focus()
        before = handle.get_attribute("aria-valuenow")
        handle.press("ArrowRight")
        if handle.get_attribute("aria-valuenow") == before:  # at the end of its range
            handle.press("ArrowLeft")
    page.wait_for_timeout(200)


@pytest.mark.parametrize("name", CHAPTERS)
def test_widgets_render_respond_and_keep_their_size(page_of, name):
    page, problems = page_of(name)
    expected = page.locator("script[type='application/vnd.jupyter.widget-view+json']").count()
    if expected == 0:
        pytest.skip(f"{name} has no widgets")
    page.wait_for_function(
        f"document.querySelectorAll('.llmbook-precomputed').length >= {expected}", timeout=30_000
    )
    widgets = page.locator(".llmbook-precomputed")
    assert widgets.count() == expected, "every widget output should be a rendered llmbook widget"
    for i in range(widgets.count()):
        widget = widgets.nth(i)
        widget.scroll_into_view_if_needed()
        controls = widget.locator(":scope > .widget-hslider, :scope > .widget-dropdown")
        assert controls.count() >= 1, f"widget {i} has no control"
        heights = {round(widget.bounding_box()["height"])}
        for c in range(controls.count()):
            before = visible_frame(widget)
            assert before, f"widget {i} shows no frame"
            move(page, controls.nth(c))
            after = visible_frame(widget)
            assert after and after != before, f"widget {i}: moving control {c} did not change the output"
            heights.add(round(widget.bounding_box()["height"]))
        assert max(heights) - min(heights) <= 2, f"widget {i} changes height while its controls move: {sorted(heights)}"
    assert problems == []


#: The chapter list opens from the header's toggle at every width (below 992 px it is the
#: only way between chapters other than prev/next) and a click on a chapter reaches it.
VIEWPORTS = {"phone": (390, 844), "tablet": (900, 1000), "desktop": (1400, 900)}


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_navigation_opens_and_reaches_another_chapter(browser, server, viewport):
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.goto(f"{server}/book/{CHAPTERS[1]}.html", wait_until="load")
        target = page.locator(f"nav.bd-links a[href*='{CHAPTERS[2]}']").first
        if not target.is_visible():  # collapsed at this width: the toggle must open it
            toggles = page.locator(".primary-toggle")
            visible = [toggles.nth(i) for i in range(toggles.count()) if toggles.nth(i).is_visible()]
            assert visible, f"{viewport}: no visible button opens the chapter list"
            visible[0].click()
            target.wait_for(state="visible", timeout=5_000)
        target.click()
        page.wait_for_url(f"**/{CHAPTERS[2]}.html*", timeout=10_000)
        visible_search = [
            box for box in page.locator("input[type=search]").all() if box.is_visible()
        ]
        assert len(visible_search) <= 1, f"{viewport}: {len(visible_search)} search boxes on the page"
    finally:
        context.close()
