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
