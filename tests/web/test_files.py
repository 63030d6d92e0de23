"""The web page's files as they are shipped: plain HTML, CSS and JavaScript that need no build step, load nothing
from another origin and hold nothing the gateway's Content-Security-Policy would block (no inline script, no
inline style attribute, no event-handler attributes)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

from tests.support import ROOT

WEB = ROOT / "web"


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_script = True


def parsed_page() -> Tags:
    tags = Tags()
    tags.feed((WEB / "index.html").read_text())
    return tags


def test_the_page_is_three_plain_files():
    assert sorted(path.name for path in WEB.iterdir()) == ["app.js", "index.html", "style.css"]


def test_nothing_is_loaded_from_another_origin():
    for path in WEB.iterdir():
        text = path.read_text()
        assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), path.name
        assert "@import" not in text, path.name
    sources = [attrs.get("src") or attrs.get("href") for tag, attrs in parsed_page().tags if tag in ("script", "link")]
    assert set(sources) == {"app.js", "style.css", "data:,"}, sources


def test_nothing_inline_that_the_csp_blocks():
    page = parsed_page()
    assert not page.inline_script
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
    assert "<style" not in (WEB / "index.html").read_text()
    script = (WEB / "app.js").read_text()
    assert not re.search(r"\beval\(|new Function\(|innerHTML|setAttribute\(\s*['\"]style", script)


def test_every_control_has_a_name():
    """Buttons have text, inputs a label (for=...), canvases a role and an aria-label."""
    page = parsed_page()
    labelled = {attrs["for"] for tag, attrs in page.tags if tag == "label" and "for" in attrs}
    for tag, attrs in page.tags:
        if tag == "input" and attrs.get("type") != "checkbox":
            assert attrs["id"] in labelled, attrs
        if tag == "canvas":
            assert attrs.get("role") == "img" and attrs.get("aria-label"), attrs
    assert re.findall(r"<button[^>]*>\s*<", (WEB / "index.html").read_text()) == []
