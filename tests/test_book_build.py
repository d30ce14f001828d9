"""The built HTML: every chapter rendered, nothing fetched from a CDN, widget weight reported."""

from __future__ import annotations

import json
import re

from conftest import BOOK, report

EXTERNAL_ASSET = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(https?:)?//[^\"]*\"[^>]*>", re.I)


def chapter_pages(html_dir):
    return [html_dir / "book" / f"{nb.stem}.html" for nb in sorted(BOOK.glob("*.ipynb"))]


def test_every_chapter_is_a_page(built_book):
    for page in chapter_pages(built_book):
        assert page.exists(), f"{page.name} was not built"


def test_no_script_or_stylesheet_from_the_network(built_book):
    offenders = {}
    for page in built_book.rglob("*.html"):
        tags = [m.group(0) for m in EXTERNAL_ASSET.finditer(page.read_text())]
        # <link rel="canonical"> and the like are links, not assets; only scripts and stylesheets count.
        assets = [t for t in tags if t.lower().startswith("<script") or "stylesheet" in t.lower() or "preload" in t.lower()]
        if assets:
            offenders[str(page.relative_to(built_book))] = assets
    assert not offenders


def test_vendored_assets_are_served(built_book):
    for path in ["vendor/mathjax/tex-chtml.js", "vendor/require.min.js", "vendor/html-manager/embed-amd.js"]:
        assert (built_book / path).is_file(), path


def test_widget_state_embedded_and_weight_reported(built_book):
    for page in chapter_pages(built_book):
        text = page.read_text()
        match = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', text, re.S)
        views = text.count("application/vnd.jupyter.widget-view+json")
        if match is None:
            assert views == 0, f"{page.name} shows widgets but embeds no widget state"
            report("widget weight per page", f"{page.stem}: no widgets, page {len(text) / 1e6:.2f} MB")
            continue
        state = json.loads(match.group(1))["state"]
        report("widget weight per page", f"{page.stem}: {len(state)} widget models, state {len(match.group(1)) / 1e6:.2f} MB, page {len(text) / 1e6:.2f} MB")
        assert len(match.group(1)) < 8_000_000, f"{page.name}: widget state over 8 MB; use lighter frames"


def test_every_internal_link_resolves(built_book):
    """Every href and src inside the book points at a file the build produced (anchors too)."""
    import re
    from html.parser import HTMLParser
    from urllib.parse import unquote

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.targets, self.ids = [], set()

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if "id" in attrs:
                self.ids.add(attrs["id"])
            for key in ("href", "src"):
                value = attrs.get(key)
                if value and not re.match(r"^(https?:|mailto:|data:|javascript:|//)", value):
                    self.targets.append(value)

    # Pages, not the theme's HTML templates that Sphinx copies into _static/.
    pages = {page: Links() for page in built_book.rglob("*.html") if "_static" not in page.parts}
    for page, parser in pages.items():
        parser.feed(page.read_text())
    broken = []
    for page, parser in pages.items():
        for target in parser.targets:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / unquote(path.split("?")[0])).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(built_book)} -> {target}")
            elif anchor and resolved.suffix == ".html" and anchor not in pages.get(resolved, Links()).ids:
                broken.append(f"{page.relative_to(built_book)} -> {target} (no such anchor)")
    assert not broken, "\n".join(broken[:40])
