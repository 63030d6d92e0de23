"""The web page through a gateway that asks for a credential (the host gateway and the container image, as shipped):
served by the gateway itself, the page asks for the credential when the gateway answers 401, then answers.

The page's drawing, heatmap and error paths are tested in tests/web against `make web`'s gateway (no credential).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.browser import browser_session, strokes_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


def draw(browser, digit: np.ndarray) -> None:
    browser.driver.find_element("id", "clear").click()
    browser.answered()
    browser.draw(strokes_of(digit), "mouse")
    browser.answered()


def enter_credential(browser, credential: str, remember: bool) -> None:
    field = browser.driver.find_element("id", "credential")
    field.clear()
    field.send_keys(credential)
    box = browser.driver.find_element("id", "credential-remember")
    if box.is_selected() != remember:
        box.click()
    browser.driver.find_element("css selector", "#credential-form button[type=submit]").click()
    browser.answered()


def test_the_page_asks_for_the_gateways_credential_then_answers(gateway, browser, test_split):
    images, labels = test_split
    digit = int(np.nonzero(labels == 4)[0][0])
    browser.open(f"{gateway.rest}/")
    assert not browser.visible("credential-form")

    draw(browser, images[digit])  # no credential yet: the gateway's 401, its message on the page, the field shown
    assert browser.visible("credential-form") and browser.visible("error")
    assert "missing or wrong credential" in browser.text("error-message")
    assert browser.text("label") == "–"

    enter_credential(browser, "wrong-credential-0123456789", remember=False)
    assert browser.visible("credential-form") and "did not accept" in browser.text("credential-why")
    assert browser.js("return sessionStorage.length") == 0

    enter_credential(browser, gateway.credential, remember=True)  # the same drawing, sent again with it
    assert not browser.visible("credential-form") and not browser.visible("error")
    # The server's answer for what is on the pad (how well drawn digits are read is tests/web's concern).
    assert browser.text("label") == gateway.predict(browser.pad_png()).json()["label"]
    assert browser.js("return sessionStorage.getItem('digits.credential')") == gateway.credential

    browser.open(f"{gateway.rest}/")  # a reload in the same tab keeps it (sessionStorage), another tab would not
    draw(browser, images[digit])
    assert not browser.visible("credential-form")
    assert browser.text("label") == gateway.predict(browser.pad_png()).json()["label"]
    errors = [message for message in browser.console_errors() if "status of 401" not in message]
    assert errors == [], errors  # no CSP violation, no script error
