"""The browser fixture's own contract: only a Chromium that cannot start here is a skip (a failure under CI=true);
any other error while starting it (a Selenium regression, a bug of ours) is a failure, never a skip."""
from __future__ import annotations

import glob
import tempfile

import pytest
from _pytest.outcomes import Failed, Skipped
from selenium import webdriver
from selenium.common.exceptions import SessionNotCreatedException

from tests.support import system
from tests.support.browser import Browser

PACKAGES = system.CHROMIUM  # Browser() installs them first; installed in the background from collection on


def refuse_with(error: BaseException):
    def chrome(*args, **kwargs):
        raise error
    return chrome


@pytest.fixture(autouse=True)
def no_profile_left_behind():
    """A browser that did not start leaves no profile directory behind."""
    pattern = f"{tempfile.gettempdir()}/digits-chromium-*"
    before = set(glob.glob(pattern))
    yield
    assert set(glob.glob(pattern)) <= before


def test_a_selenium_error_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setattr(webdriver, "Chrome", refuse_with(TypeError("a Selenium regression")))
    monkeypatch.setattr(system, "CI", True)  # a harness that skipped on any error would fail this test, not skip it
    with pytest.raises(TypeError, match="a Selenium regression"):
        Browser()


@pytest.mark.parametrize("ci", [False, True], ids=["developer", "CI"])
def test_a_browser_that_cannot_start_is_skipped_with_the_reason_or_fails_in_ci(monkeypatch, ci):
    monkeypatch.setattr(webdriver, "Chrome", refuse_with(SessionNotCreatedException("Chrome failed to start")))
    monkeypatch.setattr(system, "CI", ci)
    with pytest.raises(Failed if ci else Skipped, match="headless Chromium did not start: .*Chrome failed to start"):
        Browser()
