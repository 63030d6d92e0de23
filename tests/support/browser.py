"""A real browser for the web page's tests: Debian's headless Chromium driven by Selenium through chromedriver, and
digits drawn on the page as pen strokes with real pointer events.

The strokes come from real MNIST digits: the ink is thinned to a one-pixel skeleton (Zhang-Suen) and the skeleton
walked into strokes, each drawn as pointer down, moves along it, pointer up (mouse or touch), the way a person
traces the digit. The page then sees only pointer events, as from a person's hand.
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from serving.processes import pid_alive
from tests.support.system import CHROMIUM as CHROMIUM_PACKAGES, ensure_packages, unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAD_MODEL_SCALE = 10  # the page's 280-pixel pad holds the 28x28 frame at 10 pad pixels per MNIST pixel
INK_THRESHOLD = 100   # an MNIST pixel at or above this (of 255) is ink


# ---------------------------------------------------------------- strokes from a digit


def thin(ink: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel-wide skeleton of a boolean image."""
    image = np.pad(ink.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = image
            # The eight neighbours, clockwise from north: p2 .. p9.
            n = [np.roll(np.roll(p, dy, 0), dx, 1) for dy, dx in
                 ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))]
            p2, p3, p4, p5, p6, p7, p8, p9 = n
            count = sum(n)
            ring = n + [p2]
            transitions = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(int) for i in range(8))
            if step == 0:
                gone = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                gone = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (p == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & gone
            if remove.any():
                image = image.copy()
                image[remove] = 0
                changed = True
        if not changed:
            return image[1:-1, 1:-1].astype(bool)


NEIGHBOURS = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]  # 4-neighbours first


def strokes_of(digit: np.ndarray) -> list[list[tuple[float, float]]]:
    """The pen strokes of a 28x28 digit (white on black) as lists of (x, y) in MNIST pixels (pixel centres)."""
    skeleton = thin(digit >= INK_THRESHOLD)
    pixels = {(int(r), int(c)) for r, c in zip(*np.nonzero(skeleton))}
    visited: set[tuple[int, int]] = set()

    def neighbours(pixel):
        r, c = pixel
        return [(r + dr, c + dc) for dr, dc in NEIGHBOURS if (r + dr, c + dc) in pixels]

    strokes = []
    while len(visited) < len(pixels):
        left = sorted(pixels - visited)
        # Start where a pen would: a free end (one unvisited neighbour) if there is one, the top-most first.
        ends = [p for p in left if len([q for q in neighbours(p) if q not in visited]) <= 1]
        start = (ends or left)[0]
        path = [start]
        touching = [q for q in neighbours(start) if q in visited]
        if touching:
            path.insert(0, touching[0])  # join the stroke to the ink it grows from
        visited.add(start)
        while True:
            here = path[-1]
            following = [q for q in neighbours(here) if q not in visited]
            if not following:
                joined = [q for q in neighbours(here) if q in visited and q not in path[-3:]]
                if joined:
                    path.append(joined[0])  # close a loop or reach a junction drawn before
                break
            path.append(following[0])
            visited.add(following[0])
        if len(path) >= 2:
            strokes.append([(c + 0.5, r + 0.5) for r, c in path])
    return strokes


# ---------------------------------------------------------------- the browser


class Browser:
    """Headless Chromium (Debian's) through chromedriver, its own profile in a temp dir; stopped by pid."""

    def __init__(self, width: int = 1000, height: int = 1000):
        from selenium import webdriver
        from selenium.common.exceptions import SessionNotCreatedException
        from selenium.webdriver.chrome.service import Service

        ensure_packages(CHROMIUM_PACKAGES)
        self.profile = Path(tempfile.mkdtemp(prefix="digits-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
                         f"--window-size={width},{height}", f"--user-data-dir={self.profile}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations included
        self.service = Service(executable_path=CHROMEDRIVER, log_output=str(self.profile / "chromedriver.log"))
        try:
            self.driver = webdriver.Chrome(service=self.service, options=options)
        except SessionNotCreatedException as error:  # Chromium itself cannot run here: say why (fails under CI)
            self.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
            unavailable(f"headless Chromium did not start: {error}")
        except BaseException:  # anything else is a bug (ours or Selenium's): a failure, never a skip
            self.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.pids = [self.service.process.pid, *[child.pid for child in
                                                  psutil.Process(self.service.process.pid).children(recursive=True)]]

    def quit(self) -> list[int]:
        """Close the browser, then make sure chromedriver and every Chromium process are gone. Returns the pids
        that needed a SIGKILL (none after a clean quit)."""
        pids = self.pids + self.descendants()
        try:
            self.driver.quit()
        except Exception:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
            time.sleep(0.1)
        killed = [pid for pid in pids if pid_alive(pid)]
        self.kill(killed)
        shutil.rmtree(self.profile, ignore_errors=True)
        return killed

    def descendants(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.service.process.pid).children(recursive=True)]
        except (psutil.Error, AttributeError):
            return []

    def kill(self, pids: list[int] | None = None) -> None:
        process = getattr(self.service, "process", None)
        pids = pids if pids is not None else ([process.pid, *self.descendants()] if process else [])
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if process is not None:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass

    # ------------------------------------------------------------ the page

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(lambda: self.js("return document.readyState") == "complete", 20, "the page to load")

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.05)

    def pad_box(self) -> dict:
        return self.js("const b = document.getElementById('pad').getBoundingClientRect();"
                       "return {left: b.left, top: b.top, width: b.width, height: b.height};")

    def draw(self, strokes: list[list[tuple[float, float]]], pointer: str = "mouse", step_ms: int = 8) -> None:
        """Each stroke as pointer down, moves along it, pointer up, at the pad's place on screen (MNIST pixels to
        pad pixels, pad pixels to CSS pixels)."""
        from selenium.webdriver.common.actions import interaction
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.pointer_input import PointerInput

        box = self.pad_box()
        scale = box["width"] / 280.0

        def at(point):
            x, y = point
            return box["left"] + x * PAD_MODEL_SCALE * scale, box["top"] + y * PAD_MODEL_SCALE * scale

        kind = interaction.POINTER_TOUCH if pointer == "touch" else interaction.POINTER_MOUSE
        actions = ActionBuilder(self.driver, mouse=PointerInput(kind, pointer), duration=step_ms)
        for stroke in strokes:
            actions.pointer_action.move_to_location(*at(stroke[0]))
            actions.pointer_action.pointer_down()
            for point in stroke[1:]:
                actions.pointer_action.move_to_location(*at(point))
            actions.pointer_action.pointer_up()
        actions.perform()

    def answered(self, timeout: float = 30) -> None:
        """Until the page shows the answer for what is on the pad now (not an earlier drawing's)."""
        self.wait(lambda: self.js(
            "const r = document.getElementById('result'), p = document.getElementById('pad');"
            "return r.getAttribute('aria-busy') === 'false' && r.dataset.version === (p.dataset.version || '0');"),
            timeout, "the page's answer")

    def text(self, element_id: str) -> str:
        return self.js("return document.getElementById(arguments[0]).textContent;", element_id)

    def visible(self, element_id: str) -> bool:
        return self.js("const e = document.getElementById(arguments[0]); return !e.hidden && e.offsetParent !== null;",
                       element_id)

    def canvas_rgba(self, element_id: str) -> np.ndarray:
        """A canvas's own pixels (its intrinsic size, not its size on screen), height x width x 4."""
        width, height, data = self.js(
            "const c = document.getElementById(arguments[0]);"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "return [c.width, c.height, Array.from(d)];", element_id)
        return np.array(data, dtype=np.uint8).reshape(height, width, 4)

    def pad_png(self) -> bytes:
        """What the pad holds, as a PNG (the pixels the page sends)."""
        url = self.js("return document.getElementById('pad').toDataURL('image/png');")
        return base64.b64decode(url.split(",", 1)[1])

    def drop_file(self, name: str, content: bytes, mime: str = "image/png") -> None:
        """A file dropped on the pad: a drop event carrying it in a DataTransfer, as the browser sends one."""
        self.js("""
            const [name, b64, mime] = arguments;
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
              zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }""", name, base64.b64encode(content).decode(), mime)

    def console_errors(self) -> list[str]:
        """The console's errors since the last call (a CSP violation, an exception, a failed load)."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))


def browser_session():
    """A headless Chromium for one test module (a pytest fixture body: both test folders use it), quit after;
    quitting must not need SIGKILL."""
    browser = Browser()
    yield browser
    killed = browser.quit()
    assert not killed, f"Chromium or chromedriver needed SIGKILL after quit: {killed}"
