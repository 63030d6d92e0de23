"""The web page in a real browser (Debian's headless Chromium) against the real gateway, TorchServe and model.

Digits are drawn as pen strokes with real pointer events, by mouse and by touch, along the strokes of real MNIST
test digits; the page's answers are read from the page as a person sees them. The gateway here is `make web`'s:
on loopback, asking for no credential (the credential field is tested against gateways that ask for one, in
tests/integration/test_web_page.py).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import requests

from tests.support import ROOT
from tests.support.images import png_bytes
from tests.support.browser import strokes_of

pytestmark = pytest.mark.integration

DIGITS_PER_CLASS = 2  # 20 digits: the first of each class by mouse, the second by touch
MIN_RIGHT = 0.8
SCREENSHOT = ROOT / "docs" / "web-page.png"  # the README shows it; rewritten with UPDATE_SCREENSHOT=1


@pytest.fixture(scope="module")
def page(browser, open_gateway):
    browser.open(f"{open_gateway.rest}/")
    assert browser.driver.title.startswith("Digits")
    return browser


def explain(gateway, body: bytes) -> requests.Response:
    """What the page's endpoint answers for these bytes, asked directly."""
    return requests.post(f"{gateway.rest}/explanations/digits", data=body, timeout=30,
                         headers={"Content-Type": "application/octet-stream"})


def clear(page) -> None:
    page.driver.find_element("id", "clear").click()
    page.answered()


def draw_and_read(page, digit: np.ndarray, pointer: str) -> str:
    clear(page)
    page.draw(strokes_of(digit), pointer)
    page.answered()
    return page.text("label")


def bright_pixels(rgba: np.ndarray) -> int:
    return int((rgba[..., :3].max(axis=-1) > 128).sum())


def red_and_blue(rgba: np.ndarray) -> tuple[int, int]:
    r, g, b = (rgba[..., i].astype(int) for i in range(3))
    return int(((r > g + 60) & (r > b + 60)).sum()), int(((b > r + 60) & (b > g + 60)).sum())


def test_drawn_digits_are_mostly_read_right(page, test_split):
    """Two real test digits per class, drawn stroke by stroke (mouse, then touch): most answers right, and each
    answer shows its top-k bars, the 28x28 frame and a heatmap."""
    images, labels = test_split
    page.console_errors()
    chosen = [(index, pointer) for digit in range(10)
              for index, pointer in zip(np.nonzero(labels == digit)[0][:DIGITS_PER_CLASS], ("mouse", "touch"))]
    outcomes = []
    for index, pointer in chosen:
        answer = draw_and_read(page, images[index], pointer)
        outcomes.append((int(labels[index]), answer, pointer))
        bars = page.js("return [...document.querySelectorAll('#topk li')].map((li) => li.textContent);")
        assert bars and bars[0].startswith(answer), bars
        assert not page.visible("error"), page.text("error")
        assert page.js("return document.getElementById('seen').dataset.drawn") == "true"
        assert bright_pixels(page.canvas_rgba("seen")) >= 20
        assert page.js("return document.getElementById('heatmap').dataset.drawn") == "true", page.text("method")
        red, _ = red_and_blue(page.canvas_rgba("heatmap"))
        assert red >= 5, f"heatmap of digit {index} has {red} red pixels"
    right = [label == int(answer) for label, answer, _ in outcomes]
    print(f"\ndrawn digits read right: {sum(right)} of {len(right)}: {outcomes}")
    for pointer in ("mouse", "touch"):
        mine = [ok for ok, (_, _, used) in zip(right, outcomes) if used == pointer]
        print(f"  {pointer}: {sum(mine)} of {len(mine)}")
    assert np.mean(right) >= MIN_RIGHT, outcomes
    assert page.console_errors() == []


def test_the_frame_and_heatmap_shown_are_the_servers(page, open_gateway, test_split):
    """The page draws exactly the 28x28 frame the server says the model saw, and colours each pixel by the sign of
    its attribution: the strongest for the answer red, the strongest against it blue."""
    images, _ = test_split
    draw_and_read(page, images[3], "mouse")
    answer = explain(open_gateway, page.pad_png())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert page.text("label") == body["label"]
    frame = np.array(body["image"])
    assert frame.shape == (28, 28)
    shown = page.canvas_rgba("seen")
    assert np.abs(shown[..., 0].astype(int) - np.rint(255 * np.clip(frame, 0, 1))).max() <= 1
    attributions = np.array(body["attributions"])
    heatmap = page.canvas_rgba("heatmap").astype(int)
    strongest_for = np.unravel_index(np.argmax(attributions), attributions.shape)
    r, g, b, _ = heatmap[strongest_for]
    assert r > g + 100 and r > b + 100, heatmap[strongest_for]
    if attributions.min() < 0:
        strongest_against = np.unravel_index(np.argmin(attributions), attributions.shape)
        r, g, b, _ = heatmap[strongest_against]
        assert b > r and b > g, heatmap[strongest_against]
    assert page.text("method") == body["method"].replace("_", " ")


def test_undo_takes_back_a_stroke_and_clear_empties_the_page(page, test_split):
    images, _ = test_split
    first = draw_and_read(page, images[0], "mouse")
    before = page.pad_png()
    page.draw([[(4.0, 24.0), (24.0, 4.0)]], "mouse")  # a slash across the digit
    page.answered()
    assert page.pad_png() != before
    page.driver.find_element("id", "undo").click()
    page.answered()
    assert page.pad_png() == before and page.text("label") == first
    page.driver.find_element("id", "clear").click()
    page.answered()
    assert bright_pixels(page.canvas_rgba("pad")) == 0
    assert page.text("label") == "–" and page.js("return document.querySelectorAll('#topk li').length") == 0
    assert page.js("return document.getElementById('seen').dataset.drawn") is None


def test_a_dropped_image_is_classified_from_its_own_bytes(page, open_gateway, test_split):
    images, labels = test_split
    body = png_bytes(images[11])
    clear(page)
    page.drop_file("digit.png", body)
    page.answered()
    expected = explain(open_gateway, body).json()
    assert page.text("label") == expected["label"] == str(labels[11])
    assert bright_pixels(page.canvas_rgba("pad")) > 100  # the dropped image is shown on the pad


def test_a_bad_file_shows_the_servers_own_message(page, open_gateway, tmp_path):
    """A text file picked with the file field: the page shows the message the server gives for those bytes."""
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"these are notes, not a digit\n")
    expected = explain(open_gateway, bad.read_bytes())
    assert expected.status_code == 400
    clear(page)
    before = page.js("return document.getElementById('pad').dataset.version")
    page.driver.find_element("id", "file").send_keys(str(bad))
    # The file field's change event may come after send_keys returns: wait until the page has taken the file.
    page.wait(lambda: page.js("return document.getElementById('pad').dataset.version") != before, 10, "the file")
    page.answered()
    assert page.visible("error")
    assert page.text("error-message") == expected.json()["message"]
    assert page.text("label") == "–"
    assert not page.visible("credential-form")  # this gateway asks for no credential


def test_screenshot_of_an_answer(page, test_split):
    """The page with an answer, saved for the README (docs/web-page.png with UPDATE_SCREENSHOT=1)."""
    images, labels = test_split
    index = int(np.nonzero(labels == 3)[0][0])
    assert draw_and_read(page, images[index], "mouse") == "3"
    path = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else ROOT / "artifacts" / "web-page.png"
    size = page.driver.get_window_size()
    # The whole page and no empty space below it: the window is the page's height plus the browser's own bars.
    bars = page.js("return window.outerHeight - window.innerHeight")
    page.driver.set_window_size(1000, page.js("return Math.ceil(document.body.getBoundingClientRect().height)") + bars + 32)
    try:
        page.screenshot(path)
    finally:
        page.driver.set_window_size(size["width"], size["height"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
